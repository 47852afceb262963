//! This process's memory and the machine's, from `/proc`.

use std::path::Path;

/// The memory of this process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessMemory {
    /// Resident set size: private memory plus every resident page of mapped files.
    pub rss: u64,
    /// Proportional set size: shared pages divided among the processes that map them.
    pub pss: u64,
    /// Anonymous (private, not file-backed) resident memory.
    pub anonymous: u64,
}

impl ProcessMemory {
    /// Reads this process's memory from `/proc/self/smaps_rollup`; `None` where the file does
    /// not exist (not Linux, or a kernel older than 4.14).
    pub fn read() -> Option<ProcessMemory> {
        ProcessMemory::parse(&std::fs::read_to_string("/proc/self/smaps_rollup").ok()?)
    }

    /// Reads the `Rss:`, `Pss:` and `Anonymous:` lines (in kB) of smaps_rollup text.
    fn parse(text: &str) -> Option<ProcessMemory> {
        let field = |name| kb_field(text, name);
        Some(ProcessMemory {
            rss: field("Rss:")?,
            pss: field("Pss:")?,
            anonymous: field("Anonymous:")?,
        })
    }

    /// Resident pages of mapped files: RSS less anonymous memory. This counts the program's
    /// own code and libraries as well as data files: a first call into code not run before
    /// pages it in (megabytes in a debug build).
    pub fn file_backed(&self) -> u64 {
        self.rss.saturating_sub(self.anonymous)
    }
}

/// The machine's memory, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SystemMemory {
    /// Physical memory (`MemTotal`).
    pub total: u64,
    /// Memory available to new work without swapping (`MemAvailable`): free memory plus the
    /// page cache the kernel can drop.
    pub available: u64,
}

impl SystemMemory {
    /// Reads `/proc/meminfo`; `None` where it is not readable.
    pub fn read() -> Option<SystemMemory> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name| kb_field(&text, name);
        Some(SystemMemory {
            total: field("MemTotal:")?,
            available: field("MemAvailable:")?,
        })
    }
}

/// Resident bytes of this process's mappings of files inside the folder `dir`, from
/// `/proc/self/smaps`; `None` where that file is not readable. `dir` should be canonical
/// (the kernel names mapped files by their canonical paths).
///
/// The rollup's file-backed figure cannot tell a data file from the program's own code; this
/// can, one mapping at a time. It reads the whole of smaps, which takes milliseconds in a
/// process with many mappings: for measurements, not for sampling every step.
pub(crate) fn mapped_rss(dir: &Path) -> Option<u64> {
    Some(parse_mapped_rss(
        &std::fs::read_to_string("/proc/self/smaps").ok()?,
        dir,
    ))
}

/// Sums the `Rss:` lines of the mappings in smaps `text` whose file lies inside `dir`.
fn parse_mapped_rss(text: &str, dir: &Path) -> u64 {
    let mut inside = false;
    let mut total = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Rss:") {
            if inside {
                total += kb_field(rest, "").unwrap_or(0);
            }
        } else if is_mapping_header(line) {
            // `start-end perms offset dev inode   path`: the path is what follows the fifth
            // field, and may contain spaces (and end in " (deleted)").
            let path = line
                .splitn(6, ' ')
                .nth(5)
                .map(str::trim_start)
                .unwrap_or("");
            inside = path.starts_with('/') && Path::new(path).starts_with(dir);
        }
    }
    total
}

/// Returns true if and only if `line` starts a mapping in smaps (`55d0a000-55d0b000 r--p …`),
/// rather than being one of its `Name:  value` lines.
fn is_mapping_header(line: &str) -> bool {
    line.split_once(' ')
        .and_then(|(range, _)| range.split_once('-'))
        .is_some_and(|(a, b)| {
            !a.is_empty()
                && a.bytes().all(|c| c.is_ascii_hexdigit())
                && b.bytes().all(|c| c.is_ascii_hexdigit())
        })
}

/// The value of a `Name:   123 kB` line of a /proc file, in bytes.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_rollup() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:              204800 kB\nPss:              102400 kB\nPss_Anon:          1000 kB\nAnonymous:         51200 kB\n";
        let m = ProcessMemory::parse(text).expect("all three lines");
        assert_eq!(
            (m.rss, m.pss, m.anonymous),
            (200 << 20, 100 << 20, 50 << 20)
        );
        assert_eq!(m.file_backed(), 150 << 20);
        assert_eq!(ProcessMemory::parse("Rss: 4 kB\n"), None);
    }

    #[test]
    fn mapped_rss_counts_the_files_inside_the_folder_only() {
        let text = "\
5600-5700 r-xp 00001000 08:01 42    /usr/bin/larder
Rss:                8000 kB
Anonymous:             0 kB
7f00-7f10 r--s 00000000 08:01 7     /data/store/shards/a b.safetensors
Rss:                1024 kB
7f10-7f20 r--s 00000000 08:01 8     /data/store/shards/c.safetensors (deleted)
Rss:                  12 kB
7f20-7f30 r--s 00000000 08:01 9     /data/store/shards2/d.safetensors
Rss:                 500 kB
7f30-7f40 rw-p 00000000 00:00 0 
Rss:                 300 kB
";
        let dir = Path::new("/data/store/shards");
        assert_eq!(parse_mapped_rss(text, dir), (1024 + 12) * 1024);
        assert_eq!(parse_mapped_rss(text, Path::new("/elsewhere")), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapped_file_is_counted_once_touched() {
        let dir = tempfile::tempdir().expect("tmp");
        let dir = dir.path().canonicalize().expect("canonical");
        let path = dir.join("f");
        std::fs::write(&path, vec![1u8; 1 << 20]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        // SAFETY: the file is private to this test and not changed while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
        let sum: u64 = map.iter().step_by(4096).map(|b| u64::from(*b)).sum();
        assert_eq!(sum, 256);
        let rss = mapped_rss(&dir).expect("smaps");
        assert!(rss >= 1 << 20, "{rss}");
        drop(map);
        assert_eq!(mapped_rss(&dir), Some(0));
    }
}
