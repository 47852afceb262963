//! Peak memory of a process tree, sampled while it runs: what the benchmarks that compare
//! larder's memory with a peer's (worker processes included) report.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Waits for `child`, sampling the RSS and PSS of it and its descendants at least every
/// `every`; returns its exit status and the peaks in bytes.
pub fn wait_sampled(child: &mut Child, every: Duration) -> anyhow::Result<(ExitStatus, u64, u64)> {
    let (mut peak_rss, mut peak_pss) = (0, 0);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, peak_rss, peak_pss));
        }
        let sampling = Instant::now();
        let (rss, pss) = tree_memory(child.id());
        peak_rss = peak_rss.max(rss);
        peak_pss = peak_pss.max(pss);
        // Reading smaps_rollup walks the process's page tables (about 25 ms per GiB
        // resident): waiting nine times as long keeps the sampler to 10% of a core, so it
        // takes as little from a run of three processes as from a run of one.
        std::thread::sleep(every.max(sampling.elapsed() * 9));
    }
}

/// RSS and PSS in bytes, summed over `root` and every process descended from it. RSS counts a
/// page shared by several of them (a forked worker's copy-on-write memory) once per process;
/// PSS divides it among them.
fn tree_memory(root: u32) -> (u64, u64) {
    tree(root)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .fold((0, 0), |(rss, pss), text| {
            (rss + kb(&text, "Rss:"), pss + kb(&text, "Pss:"))
        })
}

/// `root` and the ids of every process descended from it.
fn tree(root: u32) -> Vec<u32> {
    let parents = parents();
    let mut tree = vec![root];
    // Walked again until nothing is added: a child may be listed before its parent.
    let mut grew = true;
    while grew {
        grew = false;
        for &(pid, ppid) in &parents {
            if tree.contains(&ppid) && !tree.contains(&pid) {
                tree.push(pid);
                grew = true;
            }
        }
    }
    tree
}

/// Every process's id and its parent's, from `/proc/<pid>/stat`.
fn parents() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name, in parentheses, may hold spaces: the fields after its closing
            // parenthesis are the state, then the parent's id.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// The value in bytes of a `Name:   123 kB` line of smaps_rollup text; 0 where it is missing.
fn kb(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |v| v * 1024)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn reads_kilobyte_fields_of_smaps_rollup() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:              123 kB\nPss:               45 kB\nPss_Anon:          40 kB\n";
        assert_eq!(kb(text, "Rss:"), 123 * 1024);
        assert_eq!(kb(text, "Pss:"), 45 * 1024);
        assert_eq!(kb(text, "Swap:"), 0);
    }

    #[test]
    fn a_process_tree_holds_the_children_of_children() {
        // A shell whose child is a sleep: both belong to this test process's tree.
        let mut shell = Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .expect("sh runs");
        let deadline = Instant::now() + Duration::from_secs(5);
        let grandchild = loop {
            let found = parents()
                .into_iter()
                .find(|&(_, ppid)| ppid == shell.id())
                .map(|(pid, _)| pid);
            if let Some(pid) = found {
                break pid;
            }
            assert!(Instant::now() < deadline, "the shell started no child");
            std::thread::sleep(Duration::from_millis(10));
        };
        let members = tree(std::process::id());
        Command::new("kill")
            .arg(grandchild.to_string())
            .status()
            .ok();
        shell.wait().ok();
        assert!(members.contains(&shell.id()), "{members:?}");
        assert!(members.contains(&grandchild), "{members:?}");
        assert!(!members.contains(&1));
    }
}
