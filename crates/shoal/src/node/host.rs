//! Facts about this host, read from /proc.

pub struct Facts {
    pub os: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
}

pub fn facts() -> Facts {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (total, _) = memory();
    Facts {
        os: format!("linux ({})", release.trim()),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_total_bytes: total,
    }
}

/// Total and used memory in bytes (used = total - available).
pub fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    let total = field("MemTotal:");
    (total, total.saturating_sub(field("MemAvailable:")))
}
