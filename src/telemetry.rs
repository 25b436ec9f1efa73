//! Logging (text or JSON lines through `tracing`) and Sentry error reporting.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Keeps Sentry flushing until dropped at the end of `main`.
pub struct Telemetry {
    _sentry: Option<sentry::ClientInitGuard>,
}

/// Installs the log subscriber and, with a DSN, Sentry (panics and error-level events).
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&config.rust_log)
        .map_err(|e| anyhow::anyhow!("RUST_LOG is not a valid filter: {e}"))?;
    let sentry_guard = match &config.sentry_dsn {
        Some(dsn) => {
            let dsn: sentry::types::Dsn = dsn
                .parse()
                .map_err(|e| anyhow::anyhow!("SENTRY_DSN is not a valid DSN: {e}"))?;
            let mut options = sentry::ClientOptions::new();
            options.dsn = Some(dsn);
            options.release = sentry::release_name!();
            options.send_default_pii = false;
            Some(sentry::init(options))
        }
        None => None,
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(sentry_guard.as_ref().map(|_| {
            // Error-level events become Sentry events; info and above ride along as
            // breadcrumbs of the next one.
            sentry::integrations::tracing::ErrorLayer::new().with_filter(LevelFilter::ERROR)
        }))
        .with(sentry_guard.as_ref().map(|_| {
            sentry::integrations::tracing::BreadcrumbLayer::new().with_filter(LevelFilter::INFO)
        }));
    match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(Telemetry {
        _sentry: sentry_guard,
    })
}
