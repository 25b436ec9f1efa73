//! `X-API-Key` authentication with a per-client lockout (see `crate::lockout`).
//!
//! The key is compared in constant time. A client address with 5 failures within one minute
//! is blocked (403) for 1 minute; each further block doubles, up to 1 hour.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::lockout::Lockout;
use crate::state::AppState;

/// Whether `given` equals `expected`, in time independent of where they differ.
pub fn key_matches(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

/// Middleware guarding the management API.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let now = Instant::now();
    let lockout = &state.lockout;
    if let Err(remaining) = lockout.check(ip, now) {
        let secs = remaining.as_secs().max(1);
        return Err(ApiError::Forbidden {
            message: format!(
                "Too many failed authentication attempts; try again in {secs} seconds"
            ),
            retry_after: Some(secs),
        });
    }
    let given = request.headers().get("x-api-key").map(|v| v.as_bytes());
    match given {
        None => {
            note_failure(lockout, ip, now);
            Err(ApiError::Unauthorized("API key is required".to_owned()))
        }
        Some(key) if !key_matches(key, state.api_key.as_bytes()) => {
            note_failure(lockout, ip, now);
            Err(ApiError::Unauthorized("Invalid API key".to_owned()))
        }
        Some(_) => {
            lockout.succeed(ip);
            Ok(next.run(request).await)
        }
    }
}

/// A new random API key: 48 characters of `[A-Za-z0-9]` (about 285 bits).
pub fn generate_key() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(48)
        .map(char::from)
        .collect()
}

fn note_failure(lockout: &Lockout, ip: IpAddr, now: Instant) {
    if let Some(block) = lockout.fail(ip, now) {
        tracing::warn!(client = %ip, block_secs = block.as_secs(), "client blocked after repeated authentication failures");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(key_matches(b"secret-key-123456", b"secret-key-123456"));
        assert!(!key_matches(b"secret-key-123457", b"secret-key-123456"));
        assert!(!key_matches(b"secret", b"secret-key-123456"));
    }
}
