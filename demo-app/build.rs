//! Compiles `proto/weft/demo/v1/echo.proto` with protox (pure Rust), so building the demo
//! app never needs a system `protoc`.

const PROTOS: &[&str] = &["weft/demo/v1/echo.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
