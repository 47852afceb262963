//! This process's memory, from the kernel's own accounting.

use serde::{Deserialize, Serialize};

/// Resident, proportional and anonymous memory of this process, in bytes.
///
/// PSS (proportional set size) divides each shared page by the number of processes that map
/// it, so the PSS of the ranks on a machine adds up to what they really use together: the
/// store's memory map, shared through the page cache, counts once. `None` where the system
/// does not say (anything but Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// Resident set size.
    pub rss_bytes: Option<u64>,
    /// Proportional set size.
    pub pss_bytes: Option<u64>,
    /// Anonymous (not file-backed) resident memory.
    pub anonymous_bytes: Option<u64>,
}

impl MemoryUsage {
    /// This process's usage, from `/proc/self/smaps_rollup` (Linux), as
    /// [`ProcessMemory`](crate::diagnose::ProcessMemory) reads it. Reading it takes from tens
    /// of microseconds to milliseconds in a large process, so callers sample it, not poll it.
    pub fn of_this_process() -> MemoryUsage {
        crate::os::ProcessMemory::read()
            .map(|m| MemoryUsage {
                rss_bytes: Some(m.rss),
                pss_bytes: Some(m.pss),
                anonymous_bytes: Some(m.anonymous),
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_resident_memory() {
        let m = MemoryUsage::of_this_process();
        assert!(m.rss_bytes.is_some_and(|b| b > 0));
        assert!(m.pss_bytes.is_some_and(|b| b > 0));
    }
}
