//! Generates the gRPC code from `proto/` with no system `protoc`: `protox` parses the
//! proto files in pure Rust, and `tonic-prost-build` generates from the descriptor set.
//! The encoded descriptor set is also written to `OUT_DIR` for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/chatroom/v1/chatroom.proto";
    println!("cargo:rerun-if-changed={proto}");

    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("chatroom_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
