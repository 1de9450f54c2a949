//! Generates the gRPC code from `proto/` with no system `protoc`: `protox` parses the
//! proto files in pure Rust, and `tonic-prost-build` generates from the descriptor set.
//! The encoded descriptor set is also written to `OUT_DIR` for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/chatroom/v1/chatroom.proto";
    println!("cargo:rerun-if-changed={proto}");
    // `sqlx::migrate!` embeds these at build time: a new migration must rebuild.
    println!("cargo:rerun-if-changed=migrations");

    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("chatroom_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    // Pass 1: the messages and the client, as every client language sees them.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds.clone())?;

    // Pass 2: the server alone, reusing pass 1's messages, for every call but the two
    // client streams. Those (Subscribe, Listen) write frames encoded once and shared
    // by every subscriber, which tonic's generated handler cannot: `api::streams`
    // answers them, and is their only definition. (WatchRooms, a backend's stream of
    // its own, is an ordinary generated server stream.)
    let mut unary = fds;
    for file in &mut unary.file {
        for service in &mut file.service {
            service
                .method
                .retain(|m| !matches!(m.name(), "Subscribe" | "Listen"));
        }
    }
    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".chatroom.v1", "crate::proto::pb")
        .codec_path("crate::api::codec::LeanCodec")
        .out_dir(&server_dir)
        .compile_fds(unary)?;
    Ok(())
}
