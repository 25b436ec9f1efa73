//! Waiting for a condition by looking again and again: the only sleeps the tests and benchmarks
//! use to synchronise with the server, Docker or a child process.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long to wait between two looks unless told otherwise.
pub const INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` every [`INTERVAL`] until it returns `Some`; `None` once `timeout` has passed
/// (the caller says what went wrong).
pub async fn within<T, F, Fut>(timeout: Duration, f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within_every(timeout, INTERVAL, f).await
}

/// Polls `f` every `interval` until it returns `Some`; `None` once `timeout` has passed.
pub async fn within_every<T, F, Fut>(timeout: Duration, interval: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(what, timeout, INTERVAL, f).await
}

/// Polls `f` every `interval` until it returns `Some`, failing the test after `timeout`. For
/// looks that are themselves traffic the server counts (an idle session, for instance).
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match within_every(timeout, interval, f).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Reads `f` every `interval` until `settled` holds for its value or `timeout` has passed, and
/// returns the last value either way (the caller asserts on it with its own message).
pub async fn settle<T, F, Fut>(
    timeout: Duration,
    interval: Duration,
    mut f: F,
    settled: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let v = f().await;
        if settled(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Polls `done` every `interval` on the calling thread (outside any runtime) until it holds;
/// false once `timeout` has passed.
pub fn blocking(timeout: Duration, interval: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}
