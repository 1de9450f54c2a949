//! The `chatroom` server binary: parse the configuration, set up logging, serve until
//! SIGTERM or SIGINT.

use clap::Parser;
use tokio::net::TcpListener;

use chatroom::Config;

fn main() -> std::process::ExitCode {
    return_large_blocks();
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
    runtime.block_on(serve())
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

async fn serve() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The error's own words (a flag that cannot work says which and why),
            // not its debug form.
            eprintln!("chatroom: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = Config::parse();
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
