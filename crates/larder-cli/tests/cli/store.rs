//! `larder prepare`, `inspect`, `verify`, `gc`: crash safety and failures as users meet them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder::Store;

use crate::{larder, s, sample_config};

/// Writes `n` small images with captions and a config that plans them at resolution 64.
fn dataset(root: &Path, n: usize) -> PathBuf {
    let imgs = root.join("imgs");
    std::fs::create_dir_all(&imgs).expect("mkdir");
    for i in 0..n {
        let (w, h) = [(96, 64), (64, 96), (80, 80), (120, 60)][i % 4];
        let ext = ["jpg", "png", "webp"][i % 3];
        larder_synth::write_image(&imgs.join(format!("img{i:03}.{ext}")), w, h, i as u64)
            .expect("image");
        std::fs::write(imgs.join(format!("img{i:03}.txt")), format!("caption {i}"))
            .expect("caption");
    }
    let config = root.join("c.yaml");
    std::fs::write(
        &config,
        "datasets:\n  - folder_path: imgs\n    resolution: 64\n    flip_x: true\n",
    )
    .expect("config");
    config
}

/// Each item's fields and their entry keys: the observable content of a store.
fn contents(store: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let store = Store::open(store).expect("open store");
    store
        .items()
        .expect("items")
        .into_iter()
        .map(|i| (format!("{}#{}", i.path, i.id), i.fields))
        .collect()
}

/// Entries committed to the catalog, counted the way any SQLite tool would.
fn committed_entries(store: &Path) -> usize {
    let path = store.join("catalog.sqlite");
    if !path.exists() {
        return 0;
    }
    // Read-write, as the next prepare opens it: a process killed inside a transaction leaves a
    // hot journal that only a writer may roll back. A process killed while creating the
    // catalog may leave it without tables: nothing is committed then.
    let db = rusqlite::Connection::open(&path).expect("open catalog");
    match db.query_row("SELECT COUNT(*) FROM entries", [], |r| r.get::<_, i64>(0)) {
        Ok(n) => n as usize,
        Err(e) if e.to_string().contains("no such table") => 0,
        Err(e) => panic!("counting entries: {e}"),
    }
}

/// A dataset of `n` images in `root`, prepared into `root/store` with the CLI.
fn prepared(root: &Path, n: usize) -> (PathBuf, PathBuf) {
    let config = dataset(root, n);
    let store = root.join("store");
    report(&larder(&[
        "prepare",
        s(&config),
        "--out",
        s(&store),
        "--json",
    ]));
    (config, store)
}

fn report(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "prepare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("prepare --json prints one document")
}

#[test]
fn prepare_inspect_verify_on_the_sample_dataset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let out = larder(&["prepare", s(&sample_config()), "--out", s(&store)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("36 items") && text.contains("computed"),
        "{text}"
    );
    let out = larder(&["inspect", s(&store)]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "36 items",
        "pixels",
        "mask",
        "control",
        "truncated: 1",
        "broken_cut.jpg",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let out = larder(&["verify", s(&store)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn kill_9_at_any_point_then_prepare_again_completes_without_redoing_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), 48);
    let reference = dir.path().join("reference");
    let full = report(&larder(&[
        "prepare",
        s(&config),
        "--out",
        s(&reference),
        "--shard-size",
        "8KiB",
        "--json",
    ]));
    let total = full["entries"].as_u64().expect("entries") as usize;
    assert!(
        full["shards_written"].as_u64().expect("shards") > 20,
        "{full}"
    );

    let store = dir.path().join("store");
    let prepare = [
        "prepare",
        s(&config),
        "--out",
        s(&store),
        "--shard-size",
        "8KiB",
        "--json",
    ];
    // Kill after the first shard, after about a third, after about two thirds, and then at a
    // few moments in time regardless of progress.
    let shard_targets = [1usize, total / 3, total * 2 / 3];
    let mut committed_before = 0;
    for (round, target) in shard_targets
        .iter()
        .map(|t| Some(*t))
        .chain([None, None])
        .enumerate()
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
            .args(prepare)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        loop {
            let shards = std::fs::read_dir(store.join("shards"))
                .map(|d| d.count())
                .unwrap_or(0);
            let reached = match target {
                Some(t) => shards >= t.max(1),
                None => started.elapsed() > Duration::from_millis(40 * round as u64),
            };
            if reached
                || child.try_wait().expect("poll").is_some()
                || started.elapsed() > Duration::from_secs(60)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().ok();
        child.wait().expect("reap");
        let committed = committed_entries(&store);
        assert!(
            committed >= committed_before,
            "round {round}: committed entries went from {committed_before} to {committed}"
        );
        committed_before = committed;
    }

    let resumed = report(&larder(&prepare));
    let reused = resumed["entries_reused"].as_u64().expect("reused") as usize;
    let computed = resumed["entries_computed"].as_u64().expect("computed") as usize;
    assert_eq!(reused + computed, total);
    // Nothing committed before the last kill is done again.
    assert_eq!(reused, committed_before, "{resumed}");
    let verify = larder(&["verify", s(&store)]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert_eq!(
        contents(&store),
        contents(&reference)
            .into_iter()
            .map(|(k, v)| (k.replace(s(&reference), s(&store)), v))
            .collect()
    );
}

/// Runs `larder` as an unprivileged user when the tests run as root (root ignores file
/// permissions, which is the point of the test).
fn larder_unprivileged(args: &[&str]) -> std::process::Output {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_larder"),
        ]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_larder"))
    };
    cmd.args(args).output().expect("run larder")
}

fn chmod_tree(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walk(path) {
        let m = if entry.is_dir() {
            mode | 0o111
        } else {
            mode & 0o666
        };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(m)).expect("chmod");
    }
}

fn walk(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read_dir").flatten() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn a_read_only_store_gives_a_clear_error_and_stays_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, store) = prepared(dir.path(), 6);
    let before = contents(&store);
    chmod_tree(dir.path(), 0o555);
    std::fs::write(
        &config,
        "datasets:\n  - folder_path: imgs\n    resolution: 96\n",
    )
    .ok();
    let out = larder_unprivileged(&["prepare", s(&config), "--out", s(&store)]);
    chmod_tree(dir.path(), 0o755);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(s(&store)) && (err.contains("ermission denied") || err.contains("ead-only")),
        "{err}"
    );
    assert_eq!(contents(&store), before);
    assert!(larder(&["verify", s(&store)]).status.success());
}

#[test]
fn a_write_that_fails_midway_leaves_the_previous_store_intact() {
    // A file-size limit makes the first large write fail as a full disk does; the shell ignores
    // SIGXFSZ so that the write returns an error instead of killing the process.
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, store) = prepared(dir.path(), 8);
    let before = contents(&store);
    std::fs::write(
        &config,
        "datasets:\n  - folder_path: imgs\n    resolution: 128\n",
    )
    .expect("config");
    let script = format!(
        "trap '' XFSZ; exec prlimit --fsize=20000 {} prepare {} --out {}",
        env!("CARGO_BIN_EXE_larder"),
        s(&config),
        s(&store)
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("too large") || err.contains("No space"),
        "{err}"
    );
    assert_eq!(
        contents(&store),
        before,
        "the item list is replaced only by a complete prepare"
    );
    assert!(larder(&["verify", s(&store)]).status.success());
}

#[test]
fn verify_exits_non_zero_and_names_a_corrupted_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, store) = prepared(dir.path(), 4);
    let shard = std::fs::read_dir(store.join("shards"))
        .expect("shards")
        .flatten()
        .next()
        .expect("shard")
        .path();
    let mut bytes = std::fs::read(&shard).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&shard, bytes).expect("write");
    let out = larder(&["verify", s(&store)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(shard.file_name().and_then(|n| n.to_str()).expect("name"))
            && text.contains("checksum"),
        "{text}"
    );
    assert!(text.contains("--repair"), "{text}");
}
