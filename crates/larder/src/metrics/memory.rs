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
    /// This process's usage, from `/proc/self/smaps_rollup` (Linux). Reading it takes from tens
    /// of microseconds to milliseconds in a large process, so callers sample it, not poll it.
    pub fn of_this_process() -> MemoryUsage {
        std::fs::read_to_string("/proc/self/smaps_rollup")
            .map(|text| MemoryUsage::parse(&text))
            .unwrap_or_default()
    }

    /// Reads the `Rss:`, `Pss:` and `Anonymous:` lines (in kB) of an smaps_rollup text.
    fn parse(text: &str) -> MemoryUsage {
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        };
        MemoryUsage {
            rss_bytes: field("Rss:"),
            pss_bytes: field("Pss:"),
            anonymous_bytes: field("Anonymous:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_rollup() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:              204800 kB\nPss:              102400 kB\nPss_Anon:          1000 kB\nAnonymous:         51200 kB\n";
        let m = MemoryUsage::parse(text);
        assert_eq!(m.rss_bytes, Some(200 << 20));
        assert_eq!(m.pss_bytes, Some(100 << 20));
        assert_eq!(m.anonymous_bytes, Some(50 << 20));
        assert_eq!(MemoryUsage::parse("nothing"), MemoryUsage::default());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_resident_memory() {
        let m = MemoryUsage::of_this_process();
        assert!(m.rss_bytes.is_some_and(|b| b > 0));
        assert!(m.pss_bytes.is_some_and(|b| b > 0));
    }
}
