//! A caller's standing against its rate limit or quota.

/// The outcome for the tightest counter, for the X-RateLimit-* headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}
