//! The process shell of every rswarm daemon: logging, signals, graceful drain.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use rswarm_agent::local::DaemonExit;
use tokio_util::sync::CancellationToken;

/// How long a daemon may take to stop after SIGTERM/SIGINT before it exits anyway.
pub const GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs to stderr through tracing; `RUST_LOG` filters (default `info`). raft-rs logs through
/// slog → log, which is forwarded here too.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    let _ = tracing_log::LogTracer::init();
}

/// Builds the runtime and runs `daemon` until it ends or a signal asks it to stop, then waits up
/// to [`GRACE`] for it to drain.
pub fn run_daemon<F, Fut>(daemon: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<DaemonExit>> + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let cancel = CancellationToken::new();
        let mut task = tokio::spawn(daemon(cancel.clone()));
        tokio::select! {
            r = &mut task => return r,
            () = shutdown_signal() => {}
        }
        tracing::info!("signal received; draining (up to {}s)", GRACE.as_secs());
        cancel.cancel();
        match tokio::time::timeout(GRACE, &mut task).await {
            Ok(r) => r,
            Err(_) => {
                tracing::error!("did not stop within the grace period; exiting anyway");
                task.abort();
                Ok(Err(anyhow::anyhow!("shutdown timed out")))
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(Ok(exit)) => {
            tracing::info!(?exit, "stopped");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            tracing::error!("{e:#}");
            report(&e);
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "daemon task failed");
            ExitCode::FAILURE
        }
    }
}

/// Prints a fatal error for the person at the terminal (logs may be JSON or filtered away).
pub fn report(e: &anyhow::Error) {
    use std::io::Write;
    let text = format!("{e:#}");
    // Daemon refusals already read "Error response from daemon: …", as docker prints them.
    let prefix = if text.starts_with("Error response from daemon") {
        ""
    } else {
        "Error: "
    };
    let _ = writeln!(std::io::stderr(), "{prefix}{text}");
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
