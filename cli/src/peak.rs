//! Peak memory of this process (Linux: VmHWM in /proc/self/status), for the benchmarks and the
//! end-of-run summaries.

/// Peak resident memory of this process since the start or the last [`reset`], in bytes.
pub fn bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Peak resident memory in MiB.
pub fn mib() -> Option<f64> {
    bytes().map(|b| b as f64 / (1 << 20) as f64)
}

/// Peak resident memory for a summary line ("1.23 GiB", or "unknown").
pub fn text() -> String {
    bytes()
        .map_or_else(|| "unknown".into(), |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
}

/// Sets the peak back to the current resident memory (`clear_refs` value 5, Linux 4.0+);
/// false where the kernel does not allow it.
pub fn reset() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
