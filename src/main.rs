//! The `chatroom` server binary: parse the configuration, set up logging, serve until
//! SIGTERM or SIGINT.

use clap::Parser;
use tokio::net::TcpListener;

use chatroom::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
