//! Compiles `weft/v1/*.proto` with protox (a pure-Rust protobuf compiler), so building
//! Weft never needs a system `protoc`. The encoded descriptor set is kept for gRPC
//! reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "weft/v1/types.proto",
    "weft/v1/admin.proto",
    "weft/v1/discovery.proto",
    "weft/v1/identity.proto",
    "weft/v1/traffic.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("weft_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
