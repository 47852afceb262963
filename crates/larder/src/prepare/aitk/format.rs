//! AI Toolkit's cache files: how they are named (the info-dict hash), what their metadata
//! records, and how their tensors are read.

use std::collections::BTreeMap;
use std::path::Path;

use md5::{Digest, Md5};

use super::Item;
use crate::encode::EncodedTensor;
use crate::plan::Flip;
use crate::store::{SafetensorsFile, TensorRef};
use crate::{Error, Result};

/// A value of an AI Toolkit info dict.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
}

type Info = BTreeMap<String, Value>;

/// `json.dumps(info, sort_keys=True)` as Python writes it (", " and ": " separators, non-ASCII
/// escaped), MD5, URL-safe base64 without padding: AI Toolkit's cache-name hash.
fn info_hash(info: &Info) -> String {
    let mut json = String::from("{");
    for (i, (k, v)) in info.iter().enumerate() {
        if i > 0 {
            json.push_str(", ");
        }
        py_string(k, &mut json);
        json.push_str(": ");
        match v {
            Value::Text(s) => py_string(s, &mut json),
            Value::Int(n) => json.push_str(&n.to_string()),
            Value::Bool(b) => json.push_str(if *b { "true" } else { "false" }),
        }
    }
    json.push('}');
    base64_url(&Md5::digest(json.as_bytes()))
}

/// A JSON string as Python's `json.dumps` writes it with `ensure_ascii=True`.
fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// URL-safe base64 without padding, as Python's `base64.urlsafe_b64encode(...).rstrip("=")`.
fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The info dict AI Toolkit records in a cache file's metadata: every value but the strings
/// was written with `json.dumps`. Its bookkeeping keys (`software`, `format`) are dropped.
fn recorded_info(file: &SafetensorsFile, text_keys: &[&str]) -> Info {
    file.metadata()
        .into_iter()
        .filter(|(k, _)| k != "software" && k != "format")
        .map(|(k, v)| {
            let value = if text_keys.contains(&k.as_str()) {
                Value::Text(v)
            } else {
                match serde_json::from_str::<serde_json::Value>(&v) {
                    Ok(serde_json::Value::Bool(b)) => Value::Bool(b),
                    Ok(serde_json::Value::Number(n)) if n.is_i64() => {
                        Value::Int(n.as_i64().unwrap_or_default())
                    }
                    _ => Value::Text(v),
                }
            };
            (k, value)
        })
        .collect()
}

/// Checks that the name's hash is the hash of the recorded dict: the file is what its name says.
fn name_matches(path: &Path, info: &Info) -> std::result::Result<(), String> {
    let hash = info_hash(info);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(&format!("_{hash}.safetensors")) {
        Ok(())
    } else {
        Err(format!(
            "its name does not match its recorded parameters (expected hash {hash}): renamed or edited"
        ))
    }
}

/// Compares a recorded dict with what larder's plan implies; lists the differences.
fn compare(info: &Info, expected: &Info) -> std::result::Result<(), String> {
    let keys: std::collections::BTreeSet<&String> = info.keys().chain(expected.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| info.get(*k) != expected.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| match v {
                None => "absent".to_owned(),
                Some(Value::Text(s)) => format!("{s:?}"),
                Some(Value::Int(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
            };
            format!(
                "{k} {} (larder plans {})",
                show(info.get(k)),
                show(expected.get(k))
            )
        })
        .collect();
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!("recorded parameters differ: {}", diffs.join(", ")))
    }
}

fn flips(info: &mut Info, flip: Flip) {
    if matches!(flip, Flip::X | Flip::XY) {
        info.insert("flip_x".into(), Value::Bool(true));
    }
    if matches!(flip, Flip::Y | Flip::XY) {
        info.insert("flip_y".into(), Value::Bool(true));
    }
}

/// AI Toolkit's `get_latent_info_dict` for an item as larder plans it.
fn latent_info(item: &Item, arch: &str) -> Info {
    let filename = item
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut info: Info = [
        ("filename", Value::Text(filename)),
        ("scale_to_width", Value::Int(item.scale_to.0.into())),
        ("scale_to_height", Value::Int(item.scale_to.1.into())),
        ("crop_x", Value::Int(item.crop.0.into())),
        ("crop_y", Value::Int(item.crop.1.into())),
        ("crop_width", Value::Int(item.bucket.0.into())),
        ("crop_height", Value::Int(item.bucket.1.into())),
        ("latent_space_version", Value::Text(arch.to_owned())),
        ("latent_version", Value::Int(1)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    flips(&mut info, item.flip);
    info
}

/// Checks a latent cache file against the item; returns its latent space version.
pub(super) fn check_latent(
    file: &Path,
    item: &Item,
    arch: Option<&str>,
) -> std::result::Result<String, String> {
    let st = SafetensorsFile::open(file).map_err(|e| e.to_string())?;
    let info = recorded_info(&st, &["filename", "latent_space_version"]);
    name_matches(file, &info)?;
    let version = match (info.get("latent_space_version"), arch) {
        (_, Some(a)) => a.to_owned(),
        (Some(Value::Text(v)), None) => v.clone(),
        _ => return Err("no latent_space_version recorded".into()),
    };
    compare(&info, &latent_info(item, &version))?;
    Ok(version)
}

/// AI Toolkit's `get_text_embedding_info_dict` for a caption.
fn text_info(caption: &str, arch: &str) -> Info {
    [
        ("caption", Value::Text(caption.to_owned())),
        ("text_embedding_space_version", Value::Text(arch.to_owned())),
        ("text_embedding_version", Value::Int(1)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The name hash of the text-embedding cache of `caption` for the architecture `arch`.
pub(super) fn text_hash(caption: &str, arch: &str) -> String {
    info_hash(&text_info(caption, arch))
}

/// Checks a CLIP-vision cache file against the item; returns its image encoder path.
pub(super) fn check_clip(
    file: &Path,
    item: &Item,
    encoder: Option<&str>,
) -> std::result::Result<String, String> {
    let st = SafetensorsFile::open(file).map_err(|e| e.to_string())?;
    let info = recorded_info(&st, &["filename", "image_encoder_path"]);
    name_matches(file, &info)?;
    let path = match (info.get("image_encoder_path"), encoder) {
        (_, Some(e)) => e.to_owned(),
        (Some(Value::Text(v)), None) => v.clone(),
        _ => return Err("no image_encoder_path recorded".into()),
    };
    let filename = item
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut expected: Info = [
        ("image_encoder_path", Value::Text(path.clone())),
        ("filename", Value::Text(filename)),
        ("is_quad", Value::Bool(false)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    flips(&mut expected, item.flip);
    compare(&info, &expected)?;
    Ok(path)
}

/// A tensor of a cache file as f32, without a leading batch dimension of 1.
pub(super) fn read_tensor(file: &Path, name: &str) -> Result<EncodedTensor> {
    let st = SafetensorsFile::open(file)?;
    let t = st.tensor(name)?;
    let values = to_f32(&t).ok_or_else(|| Error::Store {
        path: file.to_path_buf(),
        message: format!(
            "tensor {name} has dtype {}, which cannot be imported",
            t.dtype
        ),
    })?;
    let mut shape = t.shape.to_vec();
    if shape.len() > 1 && shape[0] == 1 {
        shape.remove(0);
    }
    Ok(EncodedTensor { shape, values })
}

/// A `PromptEmbeds.save` file as named outputs with a batch of one: `text_embed` (or
/// `text_embed_<i>`) → `embeds` (`embeds_<i>`), `pooled_embed` → `pooled`, `attention_mask`
/// → the mask.
pub(super) fn read_prompt_embeds(
    file: &Path,
) -> std::result::Result<Vec<(String, EncodedTensor)>, String> {
    let st = SafetensorsFile::open(file).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for name in st.names() {
        let output = match name.as_str() {
            "text_embed" => "embeds".to_owned(),
            "pooled_embed" => "pooled".to_owned(),
            "attention_mask" => "attention_mask".to_owned(),
            n => match n.strip_prefix("text_embed_") {
                Some(i) => format!("embeds_{i}"),
                None => n.replace('.', "_"),
            },
        };
        let t = st.tensor(&name).map_err(|e| e.to_string())?;
        let values = to_f32(&t).ok_or_else(|| format!("{name} has dtype {}", t.dtype))?;
        let mut shape = t.shape.to_vec();
        if shape.first() != Some(&1) {
            shape.insert(0, 1);
        }
        out.push((output, EncodedTensor { shape, values }));
    }
    Ok(out)
}

/// Widens a tensor's elements to f32 (floats, integers and booleans, as masks are stored).
fn to_f32(t: &TensorRef<'_>) -> Option<Vec<f32>> {
    let d = t.data;
    let chunks = |n: usize| d.chunks_exact(n);
    Some(match t.dtype {
        "F32" => chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "F16" => chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "BF16" => chunks(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "I64" => chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        "I32" => chunks(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        "U8" | "BOOL" => d.iter().map(|&b| f32::from(b)).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pythons_for_the_same_dict() {
        // python3 -c 'import json,hashlib,base64; d={"filename":"a.jpg","scale_to_width":80,
        //   "crop_x":8,"flip_x":True,"latent_space_version":"flux"};
        //   print(base64.urlsafe_b64encode(hashlib.md5(json.dumps(d,sort_keys=True)
        //   .encode()).digest()).decode().replace("=",""))'
        let info: Info = [
            ("filename", Value::Text("a.jpg".into())),
            ("scale_to_width", Value::Int(80)),
            ("crop_x", Value::Int(8)),
            ("flip_x", Value::Bool(true)),
            ("latent_space_version", Value::Text("flux".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(info_hash(&info), PYTHON_HASH);
    }

    /// The value printed by the command in the test above.
    const PYTHON_HASH: &str = "dGmqvFYt_3kV1V8aB4T00g";

    #[test]
    fn non_ascii_is_escaped_as_python_does() {
        let mut s = String::new();
        py_string("café \u{1F600}\"", &mut s);
        assert_eq!(s, "\"caf\\u00e9 \\ud83d\\ude00\\\"\"");
    }

    #[test]
    fn base64_matches_the_standard_alphabet_without_padding() {
        assert_eq!(base64_url(b"\xfb\xff"), "-_8");
        assert_eq!(base64_url(b"abc"), "YWJj");
        assert_eq!(base64_url(&[0u8; 16]).len(), 22);
    }
}
