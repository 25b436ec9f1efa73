//! MCP protocol revisions the bridge knows.

/// Revisions of the session-based protocol, oldest first.
pub const KNOWN: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// What a request without `MCP-Protocol-Version` is assumed to speak (the spec's rule).
pub const DEFAULT: &str = "2025-03-26";

/// Whether `v` is a revision the bridge can carry.
pub fn is_supported(v: &str) -> bool {
    KNOWN.contains(&v)
}

/// Whether revision `a` is the same as or newer than `b` (revisions are dates).
pub fn newer_or_equal(a: &str, b: &str) -> bool {
    a >= b
}

/// Whether SSE streams of this revision start with a priming event (2025-11-25 and later).
pub fn primes_streams(v: &str) -> bool {
    v >= "2025-11-25"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_compare_as_dates() {
        assert!(newer_or_equal("2025-11-25", "2025-06-18"));
        assert!(!newer_or_equal("2024-11-05", "2025-03-26"));
        assert!(is_supported("2025-06-18") && !is_supported("2099-01-01"));
        assert!(primes_streams("2025-11-25") && !primes_streams("2025-06-18"));
    }
}
