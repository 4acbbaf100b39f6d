//! Compiles the `.proto` files with a vendored `protoc`, so a fresh machine needs no system protoc.
//! A `PROTOC` variable, when set, wins (for platforms the vendored binaries do not cover).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => p.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let protos =
        ["proto/cassette/v1/transfer.proto", "proto/cassette/v1/agent.proto", "proto/cassette/v1/coordinator.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
