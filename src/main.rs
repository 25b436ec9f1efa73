//! Entry point: parse the configuration, start telemetry, run the server.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use mcp_runner::app::Server;
use mcp_runner::config::{Command, Config};

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(message) = config.validate() {
        eprintln!("mcp-runner: invalid configuration: {message}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-runner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-runner: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    if matches!(config.command, Some(Command::Openapi)) {
        print!("{}", mcp_runner::api::openapi_document());
        return Ok(());
    }
    let _telemetry = mcp_runner::telemetry::init(&config)?;
    let api_key = match &config.api_key {
        Some(key) => key.clone(),
        None => {
            let key = mcp_runner::api::auth::generate_key();
            // Printed once, to stdout and not to the log, so it can be copied.
            println!("No API_KEY set; generated API key for this run: {key}");
            key
        }
    };
    let addr = SocketAddr::new(config.bind_ip, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let server = Server::build(config, api_key).await?;
    server.serve(listener, shutdown_signal()).await
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
