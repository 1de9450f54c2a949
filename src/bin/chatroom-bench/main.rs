//! `chatroom-bench`: drives a running chatroom server over gRPC and prints figures.
//!
//! Scenarios: `fanout` (one room, many streams, one publisher), `ingest` (stored
//! messages/s over many rooms), `joins` (enter + attach + leave), `idle` (server memory
//! per attached stream), `rooms` (many small rooms: memory per live room and per
//! stream, and the cost of a delivery at a realistic rate). A table by default;
//! `--json` adds one JSON object as the last line. A fanout or rooms run that loses,
//! duplicates or reorders a message exits non-zero.

mod common;
mod fanout;
mod idle;
mod ingest;
mod joins;
mod rooms;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chatroom-bench",
    version,
    about = "Benchmarks a running chatroom server over gRPC"
)]
struct Cli {
    /// The server's address.
    #[arg(long, global = true, default_value = "127.0.0.1:50051")]
    target: String,
    /// Also print the figures as one JSON object on the last line.
    #[arg(long, global = true)]
    json: bool,
    /// Authenticate with HS256 tokens signed with this secret (for a server with
    /// `--auth jwt --jwt-secret` the same), one per user, instead of `x-user-id`.
    #[arg(long, global = true, env = "CHATROOM_BENCH_JWT_SECRET")]
    jwt_secret: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One room, N attached streams over C connections, one CHAT publisher.
    Fanout(fanout::Fanout),
    /// One publisher per room over R rooms: acknowledged stored messages per second.
    Ingest(ingest::Ingest),
    /// EnterRoom + attach + LeaveRoom into one room, per user.
    Joins(joins::Joins),
    /// The server's resident memory per idle attached stream, and after a burst.
    Idle(idle::Idle),
    /// R rooms × S streams, a publisher per room at M messages/s: server memory per
    /// live room and per stream, deliveries/s, latency, server CPU per delivery.
    Rooms(rooms::Rooms),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(secret) = &cli.jwt_secret {
        common::use_jwt_secret(secret);
    }
    let mut report = common::Report::default();
    let outcome = match cli.scenario {
        Scenario::Fanout(args) => fanout::run(&cli.target, args, &mut report).await,
        Scenario::Ingest(args) => ingest::run(&cli.target, args, &mut report).await,
        Scenario::Joins(args) => joins::run(&cli.target, args, &mut report).await,
        Scenario::Idle(args) => idle::run(&cli.target, args, &mut report).await,
        Scenario::Rooms(args) => rooms::run(&cli.target, args, &mut report).await,
    };
    match outcome {
        Ok(clean) => {
            report.print(cli.json);
            if clean {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("chatroom-bench: the run lost, duplicated, reordered or failed messages");
                std::process::ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("chatroom-bench: {error}");
            std::process::ExitCode::from(2)
        }
    }
}
