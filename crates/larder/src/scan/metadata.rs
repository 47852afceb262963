//! Image lists from files: AI Toolkit's JSON dataset file, and JSONL or CSV metadata.
//!
//! A metadata file that gives each image's width and height lets the scan skip opening the
//! images at all, which is what a dataset of millions of files on network storage needs.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// One image listed by a metadata file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetaRecord {
    pub path: PathBuf,
    pub caption: Option<String>,
    pub caption_short: Option<String>,
    /// Width and height as displayed, when the file gives both.
    pub size: Option<(u32, u32)>,
}

/// Resolves an image path written in a metadata file: beside the metadata file when it exists
/// there, else relative to the current directory (where AI Toolkit resolves JSON keys).
fn resolve(meta: &Path, written: &str) -> PathBuf {
    let p = Path::new(written);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match meta.parent().map(|d| d.join(p)) {
        Some(beside) if beside.exists() => beside,
        _ => p.to_path_buf(),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// AI Toolkit's JSON dataset file: `{"<image path>": {"caption": ..., "caption_short": ...}}`,
/// in the file's key order.
pub(crate) fn read_aitk_json(path: &Path) -> Result<Vec<MetaRecord>> {
    #[derive(Deserialize, Default)]
    struct Entry {
        caption: Option<String>,
        caption_short: Option<String>,
    }
    let text = read(path)?;
    // serde_json keeps object order only with preserve_order; read the pairs as a list instead.
    let entries: Vec<(String, Entry)> = serde_json::from_str::<OrderedMap<Entry>>(&text)
        .map_err(|e| Error::Metadata {
            path: path.to_path_buf(),
            message: format!(
                "not an AI Toolkit dataset file ({{\"image path\": {{\"caption\": ...}}}}): {e}"
            ),
        })?
        .0;
    Ok(entries
        .into_iter()
        .map(|(p, e)| MetaRecord {
            path: resolve(path, &p),
            caption: e.caption,
            caption_short: e.caption_short,
            size: None,
        })
        .collect())
}

/// A JSON object read as its (key, value) pairs in document order.
struct OrderedMap<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = m.next_entry()? {
                    out.push(pair);
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Row {
    path: String,
    caption: Option<String>,
    caption_short: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
}

impl Row {
    fn into_record(self, meta: &Path) -> MetaRecord {
        MetaRecord {
            path: resolve(meta, &self.path),
            caption: self.caption,
            caption_short: self.caption_short,
            size: match (self.width, self.height) {
                (Some(w), Some(h)) if w > 0 && h > 0 => Some((w, h)),
                _ => None,
            },
        }
    }
}

/// A JSON-lines file: one `{"path", "caption"?, "width"?, "height"?}` object per line.
pub(crate) fn read_jsonl(path: &Path) -> Result<Vec<MetaRecord>> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line).map_err(|e| Error::Metadata {
            path: path.to_path_buf(),
            message: format!("line {}: expected {{\"path\": ..., \"caption\": ..., \"width\": ..., \"height\": ...}}: {e}", i + 1),
        })?;
        out.push(row.into_record(path));
    }
    Ok(out)
}

/// A CSV file whose header names the columns `path` and optionally `caption`, `width`, `height`.
pub(crate) fn read_csv(path: &Path) -> Result<Vec<MetaRecord>> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| Error::Metadata {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, row) in reader.deserialize::<Row>().enumerate() {
        let row = row.map_err(|e| Error::Metadata {
            path: path.to_path_buf(),
            // Record 1 is the first line after the header.
            message: format!(
                "record {}: expected columns path[,caption,width,height]: {e}",
                i + 1
            ),
        })?;
        out.push(row.into_record(path));
    }
    Ok(out)
}
