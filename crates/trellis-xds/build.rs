//! Compiles the vendored protos with `protox` (a protobuf compiler in pure Rust) and generates
//! prost messages and tonic stubs from the descriptors, so building needs no `protoc`.
const PROTOS: &[&str] = &[
    "proto/envoy/service/discovery/v3/ads.proto",
    "proto/trellis/v1/resource.proto",
    "proto/trellis/v1/telemetry.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .btree_map(".")
        .include_file("_includes.rs")
        .compile_fds(fds)?;
    Ok(())
}
