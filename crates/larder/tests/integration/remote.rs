//! Stores in object storage: one conformance suite for every storage backend, the remote
//! reader (cache, prefetch, checksums) over memory, and the same against a real S3 server
//! (s3s-fs on loopback, started per test so that the fault tests can stop it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::load::Loader;
use larder::storage::{LocalStorage, MemoryStorage, RemoteOptions, Storage};
use larder::{Config, Error, PrepareOptions, Store};

use crate::load::{epoch, options};
use crate::{file, image};

// ---------------------------------------------------------------------------------------------
// The conformance suite: what every backend must do alike.

fn conformance(storage: &dyn Storage, scratch: &Path) {
    // Missing objects.
    assert_eq!(storage.size("a/missing").expect("size"), None);
    let err = storage.get("a/missing").expect_err("missing");
    assert!(larder::storage::is_not_found(&err), "{err}");
    assert!(
        storage.delete("a/missing").is_ok(),
        "deleting nothing is fine"
    );

    // Whole objects and ranges.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    storage.put("a/one.bin", &data).expect("put");
    assert_eq!(storage.size("a/one.bin").expect("size"), Some(100_000));
    assert_eq!(storage.get("a/one.bin").expect("get"), data);
    assert_eq!(
        storage.get_range("a/one.bin", 1000..1010).expect("range"),
        &data[1000..1010]
    );
    assert_eq!(
        storage
            .get_range("a/one.bin", 99_990..100_000)
            .expect("tail"),
        &data[99_990..]
    );
    let err = storage
        .get_range("a/one.bin", 99_990..100_010)
        .expect_err("past the end");
    assert!(
        matches!(err, Error::Remote { .. } | Error::Io { .. }),
        "{err}"
    );

    // Overwrite replaces.
    storage.put("a/one.bin", b"short").expect("overwrite");
    assert_eq!(storage.get("a/one.bin").expect("get"), b"short");

    // Files, small and large (in parts where the backend uploads in parts).
    let big: Vec<u8> = (0..(17u32 << 20)).map(|i| (i % 253) as u8).collect();
    let big_path = scratch.join("big.bin");
    std::fs::write(&big_path, &big).expect("write");
    storage.put_file("b/big.bin", &big_path).expect("put_file");
    assert_eq!(
        storage.size("b/big.bin").expect("size"),
        Some(big.len() as u64)
    );
    let at = (16u64 << 20) - 5;
    assert_eq!(
        storage
            .get_range("b/big.bin", at..at + 10)
            .expect("across parts"),
        &big[at as usize..at as usize + 10]
    );

    // Listing by prefix, sorted, with sizes.
    storage.put("b/c/d.bin", b"xy").expect("put");
    let listed = storage.list("b/").expect("list");
    assert_eq!(
        listed,
        vec![
            ("b/big.bin".to_owned(), big.len() as u64),
            ("b/c/d.bin".to_owned(), 2)
        ]
    );
    assert_eq!(storage.list("b/c").expect("list").len(), 1);

    // Copy and delete.
    storage.copy("b/c/d.bin", "e/copy.bin").expect("copy");
    assert_eq!(storage.get("e/copy.bin").expect("get"), b"xy");
    storage.delete("b/c/d.bin").expect("delete");
    assert_eq!(storage.size("b/c/d.bin").expect("size"), None);
    assert!(storage.list("b/c").expect("list").is_empty());
}

#[test]
fn the_local_backend_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(&LocalStorage::new(dir.path().join("objects")), dir.path());
}

#[test]
fn the_memory_backend_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(&MemoryStorage::new(), dir.path());
}

#[test]
fn the_s3_backend_conforms() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = server.storage("conformance", &server.options(dir.path()));
    conformance(storage.as_ref(), dir.path());
}

// ---------------------------------------------------------------------------------------------
// Remote reading over memory: cache, prefetch, checksums.

/// Shards of a few chunks each.
const SHARD_BYTES: u64 = 2 << 20;

/// A store whose pixel entries (3×256×256) span chunk boundaries, in shards of several chunks.
fn prepared(root: &Path, n: usize) -> PathBuf {
    let imgs = root.join("imgs");
    for i in 0..n {
        let (w, h) = [(256, 256), (384, 256)][i % 2];
        let path = image(
            &imgs,
            &format!("img{i:03}.png"),
            w,
            h,
            Some(&format!("tag{i}")),
        );
        larder_synth::write_image(&path, w, h, i as u64).expect("distinct image");
    }
    let config = file(
        root,
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n    resolution: 256\n    caption_dropout_rate: 0.1\n",
    );
    let out = root.join("store");
    let options = prepare_options();
    larder::prepare(&Config::load(&config).expect("config"), &out, &options).expect("prepare");
    out
}

/// [`prepared`], and one epoch of it served locally: what every remote reading must equal.
fn served(root: &Path, n: usize) -> (PathBuf, Vec<crate::load::Digest>) {
    let local = prepared(root, n);
    let expected = epoch(&mut loader(Arc::new(Store::open(&local).expect("open"))));
    (local, expected)
}

/// The prepare options of [`prepared`].
fn prepare_options() -> PrepareOptions {
    PrepareOptions {
        shard_bytes: SHARD_BYTES,
        ..PrepareOptions::default()
    }
}

fn remote_options(cache: &Path) -> RemoteOptions {
    RemoteOptions {
        cache_dir: Some(cache.to_path_buf()),
        retries: 2,
        retry_timeout: Duration::from_secs(3),
        ..RemoteOptions::default()
    }
}

fn loader(store: Arc<Store>) -> Loader {
    Loader::new(store, options(4, 2)).expect("loader")
}

#[test]
fn a_remote_store_serves_the_same_batches_and_a_warm_cache_reads_nothing_remote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (local, expected) = served(dir.path(), 24);

    let memory = Arc::new(MemoryStorage::new());
    let pushed = larder::transfer::push_to(&local, memory.as_ref()).expect("push");
    assert!(pushed.shards_uploaded >= 2, "{pushed:?}");
    let opts = remote_options(&dir.path().join("cache"));

    let store = Arc::new(Store::open_storage(memory.clone(), &opts).expect("open remote"));
    assert!(store.is_remote());
    let mut cold = loader(store.clone());
    assert_eq!(epoch(&mut cold), expected, "cold cache");
    let snapshot = cold.metrics().snapshot();
    assert!(snapshot.cache_misses > 0, "{snapshot:?}");
    let fetched = memory.bytes_read();
    let shard_bytes: u64 = std::fs::read_dir(local.join("shards"))
        .expect("shards")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    assert!(
        fetched <= shard_bytes + (2 << 20),
        "every chunk is fetched once: {fetched} bytes fetched for {shard_bytes} of shards"
    );
    drop((cold, store));

    // Reopened: the catalog is fetched again, the shards come from the cache.
    let reads = memory.reads();
    let store = Arc::new(Store::open_storage(memory.clone(), &opts).expect("reopen"));
    let mut warm = loader(store);
    assert_eq!(epoch(&mut warm), expected, "warm cache");
    assert_eq!(memory.reads(), reads + 1, "only the catalog was fetched");
    let snapshot = warm.metrics().snapshot();
    assert_eq!(snapshot.cache_misses, 0, "{snapshot:?}");
    assert!(snapshot.cache_hits > 0);
}

#[test]
fn a_cache_limit_smaller_than_one_chunk_still_serves_every_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = prepared(dir.path(), 12);
    let mut reference = loader(Arc::new(Store::open(&local).expect("open")));
    let memory = Arc::new(MemoryStorage::new());
    larder::transfer::push_to(&local, memory.as_ref()).expect("push");
    let cache = dir.path().join("cache");
    let opts = RemoteOptions {
        cache_limit: 100 << 10,
        prefetch_bytes: 64 << 10,
        ..remote_options(&cache)
    };
    let store = Arc::new(Store::open_storage(memory.clone(), &opts).expect("open"));
    let mut l = loader(store);
    // Every epoch evicts and refetches: each must equal the local store's same epoch.
    for e in 0..3 {
        assert_eq!(epoch(&mut l), epoch(&mut reference), "epoch {e}");
    }
    drop(l);
    // Blocks in use, not file sizes: the cache's shard files are sparse.
    use std::os::unix::fs::MetadataExt;
    let held: u64 = cache_shard_files(&cache)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0))
        .sum();
    assert!(
        held <= 100 << 10,
        "the cache holds {held} bytes, over its limit, once nothing is queued"
    );
}

#[test]
fn an_altered_shard_fails_its_checksum_and_is_never_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = prepared(dir.path(), 8);
    let memory = Arc::new(MemoryStorage::new());
    larder::transfer::push_to(&local, memory.as_ref()).expect("push");
    // Flip one byte near the end of every shard on the "server": its first chunks stay good.
    let shards = memory.list("shards/").expect("list");
    for (key, size) in &shards {
        let mut bytes = memory.get(key).expect("get");
        bytes[*size as usize - 10] ^= 0x40;
        memory.put(key, &bytes).expect("put");
    }
    let cache = dir.path().join("cache");
    let opts = remote_options(&cache);
    let store = Arc::new(Store::open_storage(memory.clone(), &opts).expect("open"));
    let errors: Vec<String> = loader(store.clone())
        .filter_map(|b| b.err().map(|e| e.to_string()))
        .collect();
    assert!(!errors.is_empty(), "some batch reads an altered chunk");
    for e in &errors {
        assert!(
            e.contains("memory:///shards/") && e.contains("checksum"),
            "{e}"
        );
    }
    // Nothing that failed its check was cached.
    assert_cache_holds_only_good_chunks(&cache, &local);
    // verify names the altered shards by URL.
    let report = store.verify().expect("verify");
    assert_eq!(report.problems.len(), shards.len(), "{report:?}");
    assert!(
        report.problems[0]
            .path
            .to_string_lossy()
            .starts_with("memory:///shards/"),
        "{:?}",
        report.problems[0]
    );
}

#[test]
fn repairs_of_a_remote_store_are_refused_with_the_way_to_do_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = prepared(dir.path(), 4);
    let memory = Arc::new(MemoryStorage::new());
    larder::transfer::push_to(&local, memory.as_ref()).expect("push");
    let mut store =
        Store::open_storage(memory, &remote_options(&dir.path().join("c"))).expect("open");
    let err = store.gc().expect_err("gc refused");
    assert!(err.to_string().contains("larder pull"), "{err}");
}

#[test]
fn a_store_without_a_catalog_is_refused_naming_the_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryStorage::new());
    memory
        .put("shards/x.safetensors", b"partial upload")
        .expect("put");
    let err = Store::open_storage(memory, &remote_options(dir.path())).expect_err("no catalog");
    let text = err.to_string();
    assert!(
        text.contains("memory:///catalog.sqlite") && text.contains("uploaded last"),
        "{text}"
    );
}

/// Every 1 MiB chunk of every shard file in the cache is either a hole (zeros: never fetched,
/// or evicted) or equal to that chunk of the good shard in the local store.
fn assert_cache_holds_only_good_chunks(cache: &Path, local: &Path) {
    let files = cache_shard_files(cache);
    assert!(!files.is_empty(), "the cache holds the chunks that passed");
    for path in files {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let good = std::fs::read(local.join("shards").join(format!("{name}.safetensors")))
            .expect("good shard");
        let cached = std::fs::read(&path).expect("cached shard");
        assert_eq!(cached.len(), good.len(), "{}", path.display());
        for (i, (c, g)) in cached.chunks(1 << 20).zip(good.chunks(1 << 20)).enumerate() {
            assert!(
                c == g || c.iter().all(|&b| b == 0),
                "chunk {i} of {} is neither the good data nor a hole",
                path.display()
            );
        }
    }
}

/// The shard files of every cache folder under `cache`.
fn cache_shard_files(cache: &Path) -> Vec<PathBuf> {
    walk(&cache.join("stores"))
        .into_iter()
        .filter(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .is_some_and(|d| d == "shards")
                && !p.components().any(|c| c.as_os_str() == "staging")
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A real S3 server.

/// An s3s-fs server on loopback with one bucket, its data in a temporary folder (which
/// survives a stop, so a restarted server serves the same objects).
pub struct S3Server {
    child: Option<Child>,
    binary: PathBuf,
    pub data: tempfile::TempDir,
    pub port: u16,
}

const BUCKET: &str = "larder-test";
const ACCESS_KEY: &str = "larder";
const SECRET_KEY: &str = "larder-secret";

impl S3Server {
    /// Starts a server. The binary comes from `LARDER_TEST_S3S_FS`, which `scripts/test` sets
    /// after installing s3s-fs; without it the test fails saying so, never skips.
    pub fn start() -> S3Server {
        let binary = std::env::var_os("LARDER_TEST_S3S_FS")
            .map(PathBuf::from)
            .expect("LARDER_TEST_S3S_FS must name the s3s-fs binary: run scripts/test, which installs it (cargo install s3s-fs --features binary)");
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(data.path().join(BUCKET)).expect("bucket");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = S3Server {
            child: None,
            binary,
            data,
            port,
        };
        server.resume();
        server
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port and data.
    pub fn resume(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (connections are refused until [`resume`](Self::resume)).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// Where the server keeps object `key` of store `prefix` (to alter it behind its back).
    pub fn object_path(&self, prefix: &str, key: &str) -> PathBuf {
        self.data.path().join(BUCKET).join(prefix).join(key)
    }

    pub fn options(&self, cache: &Path) -> RemoteOptions {
        RemoteOptions {
            config: vec![
                ("aws_endpoint".into(), self.endpoint()),
                ("aws_access_key_id".into(), ACCESS_KEY.into()),
                ("aws_secret_access_key".into(), SECRET_KEY.into()),
                ("aws_region".into(), "us-east-1".into()),
            ],
            ..remote_options(cache)
        }
    }

    pub fn storage(&self, prefix: &str, options: &RemoteOptions) -> Arc<dyn Storage> {
        larder::storage::storage_for(&self.url(prefix), options).expect("storage")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn prepare_into_s3_then_read_verify_and_pull_it_back() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, expected) = served(dir.path(), 16);
    let opts = server.options(&dir.path().join("cache"));
    let url = server.url("stores/faces");

    let config = Config::load(dir.path().join("c.yaml")).expect("config");
    let prepare_options = prepare_options();
    let report = larder::Prepare::new(&config)
        .options(prepare_options.clone())
        .remote(opts.clone())
        .run(&url)
        .expect("prepare into s3");
    assert_eq!(report.items, 16);
    assert!(
        server
            .object_path("stores/faces", "catalog.sqlite")
            .is_file()
    );

    let store = Arc::new(Store::open_location(&url, &opts).expect("open url"));
    assert_eq!(store.location(), url);
    assert_eq!(epoch(&mut loader(store.clone())), expected);
    let report = store.verify().expect("verify");
    assert!(
        report.problems.is_empty() && report.strays.is_empty(),
        "{report:?}"
    );

    // A second prepare finds everything done and uploads nothing new.
    let again = larder::Prepare::new(&config)
        .options(prepare_options.clone())
        .remote(opts.clone())
        .run(&url)
        .expect("again");
    assert_eq!((again.entries_computed, again.shards_written), (0, 0));

    let pulled = dir.path().join("pulled");
    let report = larder::transfer::pull(&url, &pulled, &opts).expect("pull");
    assert!(report.shards_downloaded > 0);
    let copy = Arc::new(Store::open(&pulled).expect("open pulled"));
    assert!(copy.verify().expect("verify").problems.is_empty());
    assert_eq!(epoch(&mut loader(copy)), expected);
    let again = larder::transfer::pull(&url, &pulled, &opts).expect("pull again");
    assert_eq!(again.shards_downloaded, 0, "{again:?}");
}

#[test]
fn an_interrupted_push_resumes_and_sends_only_the_rest() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = prepared(dir.path(), 12);
    let opts = server.options(&dir.path().join("cache"));
    let url = server.url("pushed");
    let storage = server.storage("pushed", &opts);
    // As if a push died after one shard: that shard is there, the catalog is not.
    let first = std::fs::read_dir(local.join("shards"))
        .expect("shards")
        .next()
        .expect("a shard")
        .expect("entry")
        .file_name()
        .to_string_lossy()
        .into_owned();
    storage
        .put_file(
            &format!("shards/{first}"),
            &local.join("shards").join(&first),
        )
        .expect("one shard");
    assert!(Store::open_location(&url, &opts).is_err(), "no catalog yet");
    let report = larder::transfer::push(&local, &url, &opts).expect("push");
    assert_eq!(report.shards_present, 1, "{report:?}");
    assert!(report.shards_uploaded >= 1, "{report:?}");
    let store = Store::open_location(&url, &opts).expect("open");
    assert!(store.verify().expect("verify").problems.is_empty());
}

#[test]
fn a_server_that_stops_mid_epoch_is_waited_for_and_the_epoch_resumes() {
    let mut server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (local, expected) = served(dir.path(), 24);
    let opts = RemoteOptions {
        retries: 20,
        retry_timeout: Duration::from_secs(30),
        // No look-ahead beyond the next batch, so most of the epoch is still to fetch.
        prefetch_bytes: 1,
        ..server.options(&dir.path().join("cache"))
    };
    let url = server.url("outage");
    larder::transfer::push(&local, &url, &opts).expect("push");
    let store = Arc::new(Store::open_location(&url, &opts).expect("open"));
    let mut l = loader(store);
    let mut got = Vec::new();
    got.push(crate::load::digest(
        &l.next().expect("a batch").expect("first batch"),
    ));
    server.stop();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        server.resume();
        server
    });
    for b in l.by_ref() {
        got.push(crate::load::digest(&b.expect("batches after the outage")));
    }
    let _server = restarter.join().expect("restarted");
    assert_eq!(got, expected);
}

#[test]
fn a_server_that_stays_down_gives_a_clear_error_naming_the_url_in_bounded_time() {
    let mut server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = prepared(dir.path(), 8);
    let opts = RemoteOptions {
        retries: 3,
        retry_timeout: Duration::from_secs(2),
        prefetch_bytes: 1,
        ..server.options(&dir.path().join("cache"))
    };
    let url = server.url("down");
    larder::transfer::push(&local, &url, &opts).expect("push");
    let store = Arc::new(Store::open_location(&url, &opts).expect("open"));
    server.stop();
    let started = Instant::now();
    let first = loader(store).next().expect("a batch");
    let err = first.expect_err("the server is down");
    let text = err.to_string();
    assert!(matches!(err, Error::Remote { .. }), "{text}");
    assert!(text.contains(&format!("{url}/shards/")), "{text}");
    // The failed request is kept as the error's source, for callers that inspect it.
    let source = std::error::Error::source(&err).expect("object_store's error as the source");
    assert!(text.contains(&source.to_string()), "{text} / {source}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_shard_altered_on_the_server_fails_its_checksum_and_the_cache_keeps_nothing_of_it() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = prepared(dir.path(), 8);
    let cache = dir.path().join("cache");
    let opts = server.options(&cache);
    let url = server.url("altered");
    larder::transfer::push(&local, &url, &opts).expect("push");
    for entry in std::fs::read_dir(local.join("shards")).expect("shards") {
        let name = entry.expect("entry").file_name();
        let path = server.object_path("altered", &format!("shards/{}", name.to_string_lossy()));
        let mut bytes = std::fs::read(&path).expect("object");
        let at = bytes.len() - 10;
        bytes[at] ^= 1;
        std::fs::write(&path, bytes).expect("alter");
    }
    let store = Arc::new(Store::open_location(&url, &opts).expect("open"));
    let errors: Vec<String> = loader(store)
        .filter_map(|b| b.err().map(|e| e.to_string()))
        .collect();
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .all(|e| e.contains(&url) && e.contains("checksum")),
        "{errors:?}"
    );
    assert_cache_holds_only_good_chunks(&cache, &local);
}

#[test]
fn a_distributed_prepare_into_s3_merges_there_into_the_unsharded_store() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, expected) = served(dir.path(), 12);
    let opts = server.options(&dir.path().join("cache"));
    let url = server.url("distributed");
    let config = Config::load(dir.path().join("c.yaml")).expect("config");
    for i in 0..3 {
        let options = PrepareOptions {
            part: Some(larder::Part::new(i, 3).expect("part")),
            ..prepare_options()
        };
        larder::Prepare::new(&config)
            .options(options.clone())
            .remote(opts.clone())
            .run(&url)
            .expect("prepare a part");
        assert!(
            server
                .object_path("distributed", &format!("parts/{i}-of-3/catalog.sqlite"))
                .is_file()
        );
    }
    assert!(
        Store::open_location(&url, &opts).is_err(),
        "no store before the merge"
    );
    let report = larder::merge(&url, &[], Some(&opts)).expect("merge");
    assert_eq!((report.parts, report.items), (3, 12), "{report:?}");
    assert!(
        !server
            .object_path("distributed", "parts")
            .join("0-of-3")
            .join("catalog.sqlite")
            .exists()
    );
    let store = Arc::new(Store::open_location(&url, &opts).expect("open merged"));
    assert_eq!(epoch(&mut loader(store.clone())), expected);
    let verified = store.verify().expect("verify");
    assert!(
        verified.problems.is_empty() && verified.strays.is_empty(),
        "{verified:?}"
    );
}
