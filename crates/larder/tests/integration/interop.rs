//! Interop with the Python `safetensors` package, both ways.
//!
//! Needs a Python with `safetensors` and `numpy`, named by `LARDER_TEST_PYTHON`; the README's
//! test command (`scripts/test`) creates one. Without it the test fails, saying so, rather
//! than passing untested.

use std::path::{Path, PathBuf};
use std::process::Command;

use larder::store::SafetensorsFile;
use larder::{Config, FieldData, PrepareOptions, Store, prepare};

use crate::{file, image};

pub fn python() -> String {
    std::env::var("LARDER_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("LARDER_TEST_PYTHON is not set: run the tests with scripts/test, which makes a venv with safetensors and numpy")
    })
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/safetensors_interop.py")
}

/// Runs `script` (under tests/interop) with the test Python; its standard output, or a
/// failure showing what it printed.
pub fn run_script(script: &Path, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python {} {args:?} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_python(args: &[&str]) {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    run_script(&script(), &args);
}

#[test]
fn python_safetensors_reads_larder_shards_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    image(&dir.path().join("imgs"), "a.jpg", 96, 64, Some("a"));
    image(&dir.path().join("imgs"), "b.png", 50, 70, Some("b"));
    let config = file(
        dir.path(),
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n    resolution: 64\n",
    );
    let out = dir.path().join("store");
    prepare(
        &Config::load(&config).expect("config"),
        &out,
        &PrepareOptions::default(),
    )
    .expect("prepare");
    let store = Store::open(&out).expect("open");
    let expected_dir = dir.path().join("expected");
    std::fs::create_dir_all(&expected_dir).expect("mkdir");
    let mut expected = Vec::new();
    for (i, item) in store.items().expect("items").iter().enumerate() {
        let FieldData::U8 { values, shape } = store.read_field(item, "pixels").expect("read")
        else {
            panic!("pixels are u8");
        };
        std::fs::write(expected_dir.join(format!("{i}.bin")), &values).expect("write");
        expected.push(serde_json::json!({"tensor": format!("{}/pixels", item_key(&out, item.id)), "shape": shape}));
    }
    std::fs::write(
        expected_dir.join("expected.json"),
        serde_json::to_string(&expected).expect("json"),
    )
    .expect("write");
    let shard = std::fs::read_dir(out.join("shards"))
        .expect("shards")
        .flatten()
        .next()
        .expect("one shard")
        .path();
    run_python(&[
        "check",
        shard.to_str().expect("utf-8"),
        expected_dir.to_str().expect("utf-8"),
    ]);
}

/// The item key of item `id`, read from the catalog as any SQLite client would.
fn item_key(store: &Path, id: u64) -> String {
    let db = rusqlite::Connection::open(store.join("catalog.sqlite")).expect("catalog");
    db.query_row(
        "SELECT item_key FROM items WHERE id = ?1",
        [id as i64],
        |r| r.get(0),
    )
    .expect("item key")
}

#[test]
fn larder_reads_safetensors_written_by_python() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("py.safetensors");
    run_python(&["write", path.to_str().expect("utf-8")]);
    let f = SafetensorsFile::open(&path).expect("open");
    assert_eq!(f.names(), vec!["f16", "f32", "i8", "u8"]);
    assert_eq!(
        f.metadata().get("written_by").map(String::as_str),
        Some("python")
    );
    let t = f.tensor("f32").expect("f32");
    assert_eq!((t.dtype, t.shape), ("F32", &[2usize, 3, 4][..]));
    let values: Vec<f32> = t
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(values, (0..24).map(|i| i as f32 / 8.0).collect::<Vec<_>>());
    let t = f.tensor("f16").expect("f16");
    let halfs: Vec<f32> = t
        .data
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    assert_eq!(halfs, vec![-3.0, -2.0, -1.0, 0.0, 1.0, 2.0]);
    assert_eq!(
        f.tensor("u8").expect("u8").data,
        (0..10).collect::<Vec<u8>>().as_slice()
    );
    assert_eq!(f.tensor("i8").expect("i8").data, &[128u8, 255, 0, 1, 127]);
    assert!(f.tensor("missing").is_err());
}

#[test]
fn hostile_headers_are_errors_not_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", vec![1, 2, 3]),
        ("huge length", u64::MAX.to_le_bytes().to_vec()),
        (
            "length past end",
            [100u64.to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
        ),
        (
            "not json",
            [4u64.to_le_bytes().to_vec(), b"nope".to_vec()].concat(),
        ),
        ("offsets past end", {
            let h = br#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
            [
                (h.len() as u64).to_le_bytes().to_vec(),
                h.to_vec(),
                vec![0; 4],
            ]
            .concat()
        }),
    ];
    for (name, bytes) in cases {
        let p = dir
            .path()
            .join(format!("{}.safetensors", name.replace(' ', "_")));
        std::fs::write(&p, bytes).expect("write");
        let err = SafetensorsFile::open(&p).expect_err(name);
        assert!(
            err.to_string().contains(p.to_str().expect("utf-8")),
            "{name}: {err}"
        );
    }
}
