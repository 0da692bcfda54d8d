//! Generates the gRPC service (`proto/grpc_service.proto`) with the `protoc`
//! that comes as a crate (protoc-bin-vendored), so a fresh machine needs no
//! system protobuf compiler. Only the server side: wasm-host is not a client.

fn main() -> std::io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(std::io::Error::other)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Tensor contents as `Bytes`: raw inputs are handed on without a copy.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_with_config(config, &["proto/grpc_service.proto"], &["proto"])
}
