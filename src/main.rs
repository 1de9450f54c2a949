//! The `chatroom` server binary: parse the configuration, set up logging, serve until
//! SIGTERM or SIGINT — or, as `chatroom token`, mint or check a token.

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use chatroom::Config;
use chatroom::token::{Outcome, TokenArgs};

/// The chatroom server: chat rooms over gRPC, stored in SQLite or PostgreSQL.
/// Without a command it serves, as the options below say.
#[derive(Parser)]
#[command(name = "chatroom", version, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a JWT for development and tests from the server's --jwt-* flags, or
    /// check one (--check TOKEN) against them.
    Token(TokenArgs),
}

fn main() -> std::process::ExitCode {
    return_large_blocks();
    return_freed_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chatroom: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match Cli::parse() {
        Cli {
            command: Some(Command::Token(args)),
            ..
        } => runtime.block_on(token(args)),
        Cli { serve: config, .. } => runtime.block_on(serve(config)),
    }
}

/// `chatroom token`: exits 0 when minted or accepted, 1 when refused, 2 when it
/// could not be done.
async fn token(args: TokenArgs) -> std::process::ExitCode {
    match chatroom::token::run(args, &mut std::io::stdout()).await {
        Ok(Outcome::Done) => std::process::ExitCode::SUCCESS,
        Ok(Outcome::Refused) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("chatroom token: {error}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Makes glibc's allocator give large blocks back to the system when they are freed.
///
/// Blocks above its mmap threshold (128 KiB) are mapped and unmapped on their own, but
/// glibc raises that threshold to the size of any such block freed, so from then on
/// blocks that large come from the heap and stay with the process once freed. Here a
/// large block is always transient — a room of a megabyte of attributes read, turned
/// into its answer and encoded once per attach, a catch-up page — and many streams
/// doing that at once left each idle stream costing 82 KiB of such leftovers in a
/// room with the largest attributes (7 KiB in a small room). A fixed threshold keeps
/// the leftovers out; what it costs is a map and an unmap per block above 128 KiB,
/// which no hot path allocates (BENCHMARKS.md, session 8).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_blocks() {
    // SAFETY: mallopt only sets a parameter of the allocator; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_blocks() {}

/// Gives the pages freed inside glibc's heaps back to the system every few seconds.
///
/// glibc returns memory only from the top of a heap: a page freed below a block still
/// in use stays with the process. A burst (every stream sending a few hundred frames,
/// ten thousand rooms each storing and delivering messages) leaves its freed blocks
/// spread between the long-lived ones — streams, sessions, hubs — so every idle
/// stream kept 3–4 KiB more after a burst than before it, and every idle room 6 KiB.
/// `malloc_trim` walks the free lists of every arena and releases each whole free
/// page; at most milliseconds every ten seconds, on a thread of its own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_pages() {
    let trimming = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(10));
                // SAFETY: malloc_trim takes the allocator's own locks; it is safe to
                // call from any thread at any time.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    if let Err(error) = trimming {
        eprintln!("chatroom: freed memory will not be returned periodically: {error}");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_pages() {}

async fn serve(config: Config) -> std::process::ExitCode {
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The error's own words (a flag that cannot work says which and why),
            // not its debug form.
            eprintln!("chatroom: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let telemetry = chatroom::telemetry::init(
        &config.log,
        config.log_format,
        config.otlp_endpoint.as_deref(),
    )?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let served = chatroom::serve(config, listener, shutdown_signal()).await;
    telemetry.shutdown().await;
    served
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight calls");
}
