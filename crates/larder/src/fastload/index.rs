//! Sharded checkpoints: a `*.safetensors.index.json` whose `weight_map` names, for every
//! tensor, the file (next to the index) that holds it — the layout Hugging Face uses for
//! models larger than one file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// The largest index accepted. An index lists one line per tensor: a few megabytes at most.
const MAX_INDEX_BYTES: u64 = 100_000_000;

/// What an index says: the shard files, and which one holds each tensor.
#[derive(Debug)]
pub(crate) struct Index {
    /// Shard files, in the order they first appear, as paths next to the index.
    pub files: Vec<PathBuf>,
    /// Tensor name to its shard (an index into `files`).
    pub weight_map: BTreeMap<String, usize>,
    /// The index's `metadata` entries, values as strings (numbers written as JSON).
    pub metadata: BTreeMap<String, String>,
}

/// Returns true if and only if `path` names an index rather than a safetensors file.
pub(crate) fn is_index(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

pub(crate) fn read(path: &Path) -> Result<Index> {
    let bad = |message: String| Error::Safetensors {
        path: path.to_path_buf(),
        tensor: None,
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut text = Vec::new();
    file.take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(path, e))?;
    if text.len() as u64 > MAX_INDEX_BYTES {
        return Err(bad(format!(
            "the index is larger than {MAX_INDEX_BYTES} bytes"
        )));
    }
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        metadata: BTreeMap<String, serde_json::Value>,
        weight_map: BTreeMap<String, String>,
    }
    let raw: Raw = serde_json::from_slice(&text).map_err(|e| {
        bad(format!(
            "not a safetensors index ({{\"weight_map\": {{tensor: file}}}}): {e}"
        ))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut by_file: BTreeMap<String, usize> = BTreeMap::new();
    let mut weight_map = BTreeMap::new();
    for (tensor, file) in raw.weight_map {
        // A hostile index must not reach outside its folder (`../../etc/shadow`, `/dev/zero`).
        let plain = Path::new(&file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || file.is_empty() {
            return Err(Error::Safetensors {
                path: path.to_path_buf(),
                tensor: Some(tensor),
                message: format!("shard {file:?} is not a file name inside the index's folder"),
            });
        }
        let next = files.len();
        let i = *by_file.entry(file.clone()).or_insert(next);
        if i == next {
            files.push(dir.join(&file));
        }
        weight_map.insert(tensor, i);
    }
    if files.is_empty() {
        return Err(Error::Safetensors {
            path: path.to_path_buf(),
            tensor: None,
            message: "the index's weight_map names no tensor".into(),
        });
    }
    let metadata = raw
        .metadata
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    Ok(Index {
        files,
        weight_map,
        metadata,
    })
}
