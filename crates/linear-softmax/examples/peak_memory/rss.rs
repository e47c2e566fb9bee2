//! Peak resident-memory growth of one step, read from the kernel: the instrument
//! `scripts/pytorch_bench.py --rss` uses for PyTorch, so that both sides are measured alike
//! (the counting allocator of `allocator.rs` sees only this process's Rust allocations).
//!
//! Writing `5` to `/proc/self/clear_refs` (Linux 4.0+) resets the high-water mark `VmHWM` to
//! the current resident size; after the step, `VmHWM` minus the resident size before it is
//! the step's peak growth: every page it touched for the first time, whoever allocated it
//! (Burn, the GEMM's packing buffers, the allocator's own arenas). Pages the allocator kept
//! from earlier frees and hands out again are not counted, on either side: run each
//! measurement in a fresh process after a small warm-up step.

/// The current resident size in bytes, after resetting the high-water mark to it; `None` off
/// Linux or where `/proc` cannot be written.
pub fn reset_high_water() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    status_bytes("VmRSS:")
}

/// The resident high-water mark `VmHWM` in bytes.
pub fn high_water() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
