//! Compiles `proto/kv.proto` (server and client) with `protoc`, which must be on `PATH`
//! (`apt-get install protobuf-compiler`; `scripts/test` installs it). `bytes` fields
//! become `bytes::Bytes`, so values pass between gRPC and the backend without a copy.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kv.proto");
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["proto/kv.proto"], &["proto"])?;
    Ok(())
}
