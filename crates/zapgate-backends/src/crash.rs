//! Named crash points for durability tests.
//!
//! With the `test-hooks` feature, `crash_point("after_commit")` aborts the
//! process when `ZAPGATE_CRASH_AT` names that point (optionally `name:N` to
//! crash on the N-th pass). Without the feature it compiles to nothing, so a
//! shipped binary cannot be told to crash.

#[cfg(feature = "test-hooks")]
pub fn crash_point(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("ZAPGATE_CRASH_AT").ok()?;
        let (n, count) = v.split_once(':').map_or((v.as_str(), 1), |(n, c)| (n, c.parse().unwrap_or(1)));
        Some((n.to_owned(), count))
    });
    if let Some((target, count)) = target
        && target == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *count
    {
        eprintln!("ZAPGATE_CRASH_AT={name}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}
