//! `weft-pause`: holds a network namespace for a pod of containers (an app and its
//! sidecar in the compose demo) and does nothing else. Both containers join the
//! namespace of this one, so either can restart without taking the other's network
//! away, the way a Kubernetes pod's pause container works. Exits on SIGTERM or SIGINT
//! (as PID 1 a process gets no default signal handling, so it must handle them).
#![forbid(unsafe_code)]

fn main() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok(())
    })
}
