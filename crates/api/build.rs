//! Generates the gRPC code from `proto/` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "rswarm/ca/v1/ca.proto",
        "rswarm/control/v1/control.proto",
        "rswarm/dispatcher/v1/dispatcher.proto",
        "rswarm/local/v1/local.proto",
        "rswarm/local/v1/engine.proto",
        "rswarm/local/v1/networks.proto",
        "rswarm/raft/v1/raft.proto",
        "rswarm/types/v1/network.proto",
        "rswarm/types/v1/service.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
