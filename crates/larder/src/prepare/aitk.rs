//! `larder import-aitk`: AI Toolkit's latent, text-embedding and CLIP-vision caches copied into a
//! store without re-encoding.
//!
//! AI Toolkit keeps one safetensors file per image next to the images:
//! `_latent_cache/<stem>_<hash>.safetensors`, `_t_e_cache/<stem>_<hash>.safetensors` and
//! `_clip_vision_cache/<stem>_<hash>.safetensors`, where `<hash>` is the URL-safe base64 (no
//! padding) of the MD5 of `json.dumps(info, sort_keys=True)` over a dict of the parameters
//! that made the file (toolkit/dataloader_mixins.py). Latent and CLIP files also record that
//! dict in their metadata. The import prepares the config as usual (pixels, masks, controls),
//! then, for each item, computes the dict larder's plan implies; a file with exactly that name
//! and metadata is imported under the key an encoder of the given identity would produce, so a
//! later `prepare` with that encoder reuses it and computes only what is missing. A file for
//! the same image made with other parameters (another crop, size, flip or latent space) is
//! reported as a mismatch and not imported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use rusqlite::params;

use super::texts::{self, TextOutputs};
use super::{
    PrepareOptions, PrepareReport, Produced, encoded, image_encoder_key, open_for_writing, prepare,
    stored_entry, with_writer,
};
use crate::caption::{CaptionContext, CaptionRecipe};
use crate::config::Config;
use crate::encode::{EncodedTensor, EncoderIdentity, PixelFormat};
use crate::plan::Flip;
use crate::store::catalog::Catalog;
use crate::store::codec::Values;
use crate::store::{SafetensorsFile, TensorRef};
use crate::{Error, Result};

/// What to import and under which identities.
#[derive(Debug, Clone)]
pub struct AitkImportOptions {
    /// Settings of the prepare that builds the store around the imported tensors.
    pub prepare: PrepareOptions,
    /// AI Toolkit's model architecture (`latent_space_version` and
    /// `text_embedding_space_version`, e.g. `"flux"`, `"sdxl"`); found in the latent caches'
    /// metadata when not given.
    pub arch: Option<String>,
    /// Field and identity of imported latents. The identity defaults to
    /// `ai-toolkit/<arch>`; give the one your encoder declares to extend the store later.
    pub latent: (String, Option<EncoderIdentity>),
    /// Field and identity of imported text embeddings (default `ai-toolkit/<arch>/text`).
    pub text: (String, Option<EncoderIdentity>),
    /// Field and identity of imported CLIP embeddings (default
    /// `ai-toolkit/clip/<image_encoder_path>`).
    pub clip: (String, Option<EncoderIdentity>),
}

impl Default for AitkImportOptions {
    fn default() -> Self {
        AitkImportOptions {
            prepare: PrepareOptions::default(),
            arch: None,
            latent: ("latent".into(), None),
            text: ("text".into(), None),
            clip: ("clip".into(), None),
        }
    }
}

/// Counts of one kind of cache.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ImportCounts {
    /// Tensors copied into the store in this run.
    pub imported: usize,
    /// Found in the store already (imported before).
    pub stored: usize,
    /// Items with no cache file at all.
    pub missing: usize,
    /// Items whose cache files do not match larder's plan (see the mismatches).
    pub mismatched: usize,
}

/// A cache file that was not imported, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ImportMismatch {
    /// `"latent"`, `"text"` or `"clip"`.
    pub kind: &'static str,
    /// The item's image.
    pub item: String,
    /// The cache file.
    pub cache: String,
    /// What differs.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AitkImportReport {
    /// The prepare that built the store around the imported tensors.
    pub prepare: PrepareReport,
    /// The architecture the caches were matched against.
    pub arch: Option<String>,
    /// Latent caches.
    pub latents: ImportCounts,
    /// Text-embedding caches.
    pub texts: ImportCounts,
    /// CLIP-vision caches.
    pub clip: ImportCounts,
    /// Files not imported.
    pub mismatches: Vec<ImportMismatch>,
}

/// An item of the prepared store, as the import needs it.
struct Item {
    id: i64,
    dataset: usize,
    path: PathBuf,
    bucket: (u32, u32),
    scale_to: (u32, u32),
    crop: (u32, u32),
    flip: Flip,
    caption: String,
    content_hash: String,
    item_key: String,
}

/// A value of an AI Toolkit info dict.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
}

type Info = BTreeMap<String, Value>;

/// Prepares `config` into `out` and imports AI Toolkit's caches found next to its images.
pub fn import_aitk(
    config: &Config,
    out: &Path,
    options: &AitkImportOptions,
) -> Result<AitkImportReport> {
    let mut report = AitkImportReport {
        prepare: prepare(config, out, &options.prepare)?,
        ..AitkImportReport::default()
    };
    let (_lock, catalog) = open_for_writing(out)?;
    let items = stored_items(&catalog)?;
    let stored = catalog.entry_keys()?;
    let mut dirs = Listing::default();

    // Latents: the architecture is given, or taken from the first file that matches the plan.
    let mut arch = options.arch.clone();
    let mut latents: Vec<(usize, PathBuf)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let dir = cache_dir(&item.path, "_latent_cache");
        let candidates = dirs.candidates(&dir, &item.path);
        if candidates.is_empty() {
            report.latents.missing += 1;
            continue;
        }
        let mut reasons = Vec::new();
        let mut found = None;
        for file in &candidates {
            match check_latent(file, item, arch.as_deref()) {
                Ok(version) => {
                    arch.get_or_insert(version);
                    found = Some(file.clone());
                    break;
                }
                Err(reason) => reasons.push((file, reason)),
            }
        }
        match found {
            Some(file) => latents.push((i, file)),
            None => {
                report.latents.mismatched += 1;
                for (file, reason) in reasons {
                    report
                        .mismatches
                        .push(mismatch("latent", item, file, reason));
                }
            }
        }
    }
    report.arch = arch.clone();
    let arch_name = arch.clone().unwrap_or_else(|| "unknown".into());
    let latent_identity = options
        .latent
        .1
        .clone()
        .unwrap_or_else(|| EncoderIdentity::new(format!("ai-toolkit/{arch_name}")));
    let text_identity = options
        .text
        .1
        .clone()
        .unwrap_or_else(|| EncoderIdentity::new(format!("ai-toolkit/{arch_name}/text")));
    let latent_codec = options.prepare.latent_codec.name();

    // CLIP: the encoder path and quad flag come from the files' metadata.
    let mut clips: Vec<(usize, PathBuf)> = Vec::new();
    let mut clip_encoder: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let dir = cache_dir(&item.path, "_clip_vision_cache");
        let candidates = dirs.candidates(&dir, &item.path);
        if candidates.is_empty() {
            report.clip.missing += 1;
            continue;
        }
        let mut reasons = Vec::new();
        let mut found = None;
        for file in &candidates {
            match check_clip(file, item, clip_encoder.as_deref()) {
                Ok(encoder) => {
                    clip_encoder.get_or_insert(encoder);
                    found = Some(file.clone());
                    break;
                }
                Err(reason) => reasons.push((file, reason)),
            }
        }
        match found {
            Some(file) => clips.push((i, file)),
            None => {
                report.clip.mismatched += 1;
                for (file, reason) in reasons {
                    report.mismatches.push(mismatch("clip", item, file, reason));
                }
            }
        }
    }
    let clip_identity = options.clip.1.clone().unwrap_or_else(|| {
        EncoderIdentity::new(format!(
            "ai-toolkit/clip/{}",
            clip_encoder.as_deref().unwrap_or("unknown")
        ))
    });

    // Text: files are found by the hash of the caption, so the architecture must be known.
    let recipes: Vec<CaptionRecipe> = config
        .datasets
        .iter()
        .map(CaptionRecipe::from_dataset)
        .collect();
    let mut texts_found: Vec<(usize, String, PathBuf)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let dir = cache_dir(&item.path, "_t_e_cache");
        let candidates = dirs.candidates(&dir, &item.path);
        if candidates.is_empty() {
            report.texts.missing += 1;
            continue;
        }
        let Some(arch) = &arch else {
            report.texts.mismatched += 1;
            report.mismatches.push(mismatch(
                "text",
                item,
                &candidates[0],
                "the model architecture is unknown (no latent cache matched): pass --arch".into(),
            ));
            continue;
        };
        // The caption AI Toolkit encoded: as loaded, or with the trigger word injected.
        let mut captions = vec![item.caption.clone()];
        let recipe = recipes.get(item.dataset).map(|r| CaptionRecipe {
            caption_dropout_rate: 0.0,
            token_dropout_rate: 0.0,
            shuffle_tokens: false,
            random_triggers: Vec::new(),
            ..r.clone()
        });
        if let Some(r) = recipe {
            let ctx = CaptionContext {
                seed: 0,
                epoch: 0,
                item: 0,
            };
            let injected = r.apply(&item.caption, ctx);
            if !captions.contains(&injected) {
                captions.push(injected);
            }
        }
        let stem = stem(&item.path);
        let hit = captions.iter().find_map(|c| {
            let info = text_info(c, arch);
            let file = dir.join(format!("{stem}_{}.safetensors", info_hash(&info)));
            candidates.contains(&file).then(|| (c.clone(), file))
        });
        match hit {
            Some((caption, file)) => texts_found.push((i, caption, file)),
            None => {
                report.texts.mismatched += 1;
                report.mismatches.push(mismatch(
                    "text",
                    item,
                    &candidates[0],
                    format!(
                        "no text-embedding cache of this image was made from the caption {:?} with text_embedding_space_version {arch:?}",
                        item.caption
                    ),
                ));
            }
        }
    }

    // Copy the tensors into shards, then record the fields in one transaction.
    let (latent_field, clip_field, text_field) =
        (&options.latent.0, &options.clip.0, &options.text.0);
    let mut fields: Vec<(i64, String, String)> = Vec::new();
    let mut caption_rows: Vec<(String, String)> = Vec::new();
    let mut item_captions: Vec<(i64, usize)> = Vec::new();
    let mut text_outputs: Option<TextOutputs> = None;
    let codec = options.prepare.latent_codec;
    let text_codec = options.prepare.text_codec;
    let text_key_text = text_identity.key_text();
    let (catalog, written) = with_writer(catalog, out, &options.prepare, |tx| {
        let mut seen: HashSet<String> = HashSet::new();
        for (i, file) in &latents {
            let item = &items[*i];
            let key = image_encoder_key(
                &item.item_key,
                &item.content_hash,
                latent_field,
                &latent_identity,
                PixelFormat::SignedUnit,
                &latent_codec,
            );
            fields.push((item.id, latent_field.clone(), key.clone()));
            if !seen.insert(key.clone()) {
                continue;
            }
            if stored.contains(&key) {
                report.latents.stored += 1;
                continue;
            }
            let tensor = read_tensor(file, "latent", true)?;
            let name = format!("{}/{latent_field}", item.item_key);
            let entry = stored_entry(&key, name, codec, Values::F32(&tensor.values), tensor.shape)?;
            report.latents.imported += 1;
            send(tx, vec![entry]);
        }
        let clip_pre = options.prepare.clip;
        let clip_key_text = clip_identity.key_text();
        for (i, file) in &clips {
            let item = &items[*i];
            let mut group = Vec::new();
            for (tensor_name, field) in [
                ("image_embeds", clip_field.clone()),
                (
                    "last_hidden_state",
                    format!("{clip_field}.last_hidden_state"),
                ),
                (
                    "penultimate_hidden_states",
                    format!("{clip_field}.penultimate_hidden_states"),
                ),
            ] {
                let key = encoded::clip_key(
                    &item.content_hash,
                    item.flip,
                    &clip_pre,
                    &field,
                    &clip_key_text,
                    &latent_codec,
                );
                fields.push((item.id, field.clone(), key.clone()));
                if !seen.insert(key.clone()) {
                    continue;
                }
                if stored.contains(&key) {
                    report.clip.stored += usize::from(tensor_name == "image_embeds");
                    continue;
                }
                let tensor = read_tensor(file, tensor_name, true)?;
                let name = format!("{key}/{field}");
                group.push(stored_entry(
                    &key,
                    name,
                    codec,
                    Values::F32(&tensor.values),
                    tensor.shape,
                )?);
            }
            if !group.is_empty() {
                report.clip.imported += 1;
                send(tx, group);
            }
        }
        let mut caption_ids: HashMap<String, usize> = HashMap::new();
        let codec_name = text_codec.name();
        for (i, caption, file) in &texts_found {
            let item = &items[*i];
            let ckey = texts::caption_key(text_field, &text_key_text, &codec_name, caption);
            let id = *caption_ids.entry(caption.clone()).or_insert_with(|| {
                caption_rows.push((ckey.clone(), caption.clone()));
                caption_rows.len() - 1
            });
            if !seen.insert(ckey.clone()) {
                item_captions.push((item.id, id));
                continue;
            }
            let outputs = match read_prompt_embeds(file) {
                Ok(o) => o,
                Err(reason) => {
                    report.texts.mismatched += 1;
                    report.mismatches.push(mismatch("text", item, file, reason));
                    continue;
                }
            };
            let split = match texts::split_outputs(outputs, 1) {
                Ok(s) => s,
                Err(reason) => {
                    report.texts.mismatched += 1;
                    report.mismatches.push(mismatch("text", item, file, reason));
                    continue;
                }
            };
            match &text_outputs {
                Some(o) if *o != split.outputs => {
                    report.texts.mismatched += 1;
                    report.mismatches.push(mismatch(
                        "text",
                        item,
                        file,
                        format!(
                            "holds {:?}, other files hold {:?}",
                            split.outputs.outputs, o.outputs
                        ),
                    ));
                    continue;
                }
                _ => text_outputs = Some(split.outputs.clone()),
            }
            item_captions.push((item.id, id));
            if stored.iter().any(|k| k.starts_with(&format!("{ckey}."))) {
                report.texts.stored += 1;
                continue;
            }
            let mut group = Vec::new();
            for (name, shape, values) in &split.items[0] {
                group.push(stored_entry(
                    &format!("{ckey}.{name}"),
                    format!("{ckey}/{text_field}.{name}"),
                    text_codec,
                    Values::F32(values),
                    shape.clone(),
                )?);
            }
            report.texts.imported += 1;
            send(tx, group);
        }
        Ok(())
    })?;
    report.prepare.entries_computed += written.entries;
    report.prepare.shards_written += written.shards;
    report.prepare.bytes_written += written.bytes;
    // Captions that no item kept (a file that failed to read) are not recorded.
    let used: HashSet<usize> = item_captions.iter().map(|(_, c)| *c).collect();

    let err = |e| catalog.err(e);
    let tx = catalog.conn.unchecked_transaction().map_err(err)?;
    {
        let mut ins_field = tx
            .prepare(
                "INSERT OR REPLACE INTO item_fields(item, field, entry, entry_id)
                 VALUES (?1, ?2, ?3, (SELECT id FROM entries WHERE key = ?3))",
            )
            .map_err(err)?;
        for (item, field, key) in &fields {
            ins_field.execute(params![item, field, key]).map_err(err)?;
        }
        let mut ins_encoder = tx
            .prepare("INSERT OR REPLACE INTO encoders(field, identity, params) VALUES (?1, ?2, ?3)")
            .map_err(err)?;
        let source = |kind: &str| serde_json::json!({"imported_from": "ai-toolkit", "kind": kind, "arch": arch, "codec": codec.name()});
        if !latents.is_empty() {
            let mut p = source("image");
            p["pixel_format"] = serde_json::json!(PixelFormat::SignedUnit);
            p["model"] = latent_identity.id.clone().into();
            ins_encoder
                .execute(params![
                    latent_field,
                    latent_identity.key_text(),
                    p.to_string()
                ])
                .map_err(err)?;
        }
        if !clips.is_empty() {
            let mut p = source("clip");
            p["clip"] = serde_json::json!(options.prepare.clip);
            p["model"] = clip_identity.id.clone().into();
            ins_encoder
                .execute(params![clip_field, clip_identity.key_text(), p.to_string()])
                .map_err(err)?;
        }
        if let Some(outputs) = &text_outputs {
            let mut p = source("text");
            p["codec"] = text_codec.name().into();
            p["outputs"] = serde_json::json!(outputs);
            p["model"] = text_identity.id.clone().into();
            ins_encoder
                .execute(params![text_field, text_key_text, p.to_string()])
                .map_err(err)?;
            tx.execute("DELETE FROM item_captions WHERE encoder = ?1", [text_field])
                .map_err(err)?;
            tx.execute("DELETE FROM captions WHERE encoder = ?1", [text_field])
                .map_err(err)?;
            let first: i64 = tx
                .query_row("SELECT coalesce(max(id), -1) + 1 FROM captions", [], |r| {
                    r.get(0)
                })
                .map_err(err)?;
            let mut ins_caption = tx
                .prepare("INSERT INTO captions(id, encoder, key, text) VALUES (?1, ?2, ?3, ?4)")
                .map_err(err)?;
            for (id, (key, text)) in caption_rows.iter().enumerate() {
                if used.contains(&id) {
                    ins_caption
                        .execute(params![first + id as i64, text_field, key, text])
                        .map_err(err)?;
                }
            }
            let mut ins_variant = tx
                .prepare("INSERT OR REPLACE INTO item_captions(item, encoder, variant, caption) VALUES (?1, ?2, 0, ?3)")
                .map_err(err)?;
            for (item, id) in &item_captions {
                ins_variant
                    .execute(params![item, text_field, first + *id as i64])
                    .map_err(err)?;
            }
            let meta_key = texts::outputs_meta_key(text_field, &text_key_text, &text_codec.name());
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![meta_key, serde_json::to_string(outputs).unwrap_or_default()],
            )
            .map_err(err)?;
        }
    }
    tx.commit().map_err(err)?;
    Ok(report)
}

fn send(tx: &crossbeam_channel::Sender<Vec<Vec<Produced>>>, group: Vec<Produced>) {
    // A closed channel means the writer failed; its error is the one returned.
    let _ = tx.send(vec![group]);
}

fn mismatch(kind: &'static str, item: &Item, cache: &Path, reason: String) -> ImportMismatch {
    ImportMismatch {
        kind,
        item: item.path.display().to_string(),
        cache: cache.display().to_string(),
        reason,
    }
}

/// The items of the store as the last prepare committed them.
fn stored_items(catalog: &Catalog) -> Result<Vec<Item>> {
    catalog.rows(
        "SELECT id, dataset, path, bucket_w, bucket_h, scale_to_w, scale_to_h, crop_x, crop_y, flip,
                caption, content_hash, item_key FROM items ORDER BY id",
        |r| {
            let flip: String = r.get(9)?;
            Ok(Item {
                id: r.get(0)?,
                dataset: r.get::<_, i64>(1)? as usize,
                path: PathBuf::from(r.get::<_, String>(2)?),
                bucket: (r.get(3)?, r.get(4)?),
                scale_to: (r.get(5)?, r.get(6)?),
                crop: (r.get(7)?, r.get(8)?),
                flip: match flip.as_str() {
                    "x" => Flip::X,
                    "y" => Flip::Y,
                    "xy" => Flip::XY,
                    _ => Flip::None,
                },
                caption: r.get(10)?,
                content_hash: r.get(11)?,
                item_key: r.get(12)?,
            })
        },
    )
}

/// The cache folder `name` next to `image`.
fn cache_dir(image: &Path, name: &str) -> PathBuf {
    image.parent().unwrap_or(Path::new(".")).join(name)
}

fn stem(image: &Path) -> String {
    image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Cache folders listed once each.
#[derive(Default)]
struct Listing(HashMap<PathBuf, Vec<String>>);

impl Listing {
    /// The files of `dir` that may belong to `image`: `<stem>_<hash>.safetensors`.
    fn candidates(&mut self, dir: &Path, image: &Path) -> Vec<PathBuf> {
        let names = self.0.entry(dir.to_path_buf()).or_insert_with(|| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        });
        let prefix = format!("{}_", stem(image));
        names
            .iter()
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(".safetensors"))
                    // The hash is 22 URL-safe base64 characters, so `a_b_<hash>` is never
                    // taken for a file of the image `a`.
                    .is_some_and(|h| h.len() == 22)
            })
            .map(|n| dir.join(n))
            .collect()
    }
}

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

/// URL-safe base64 without padding.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
        }
    }
    out
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
fn check_latent(
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

/// Checks a CLIP-vision cache file against the item; returns its image encoder path.
fn check_clip(
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

/// A tensor of a cache file as f32; with `unbatch`, a leading dimension of 1 is dropped.
fn read_tensor(file: &Path, name: &str, unbatch: bool) -> Result<EncodedTensor> {
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
    if unbatch && shape.len() > 1 && shape[0] == 1 {
        shape.remove(0);
    }
    Ok(EncodedTensor { shape, values })
}

/// A `PromptEmbeds.save` file as named outputs with a batch of one: `text_embed` (or
/// `text_embed_<i>`) → `embeds` (`embeds_<i>`), `pooled_embed` → `pooled`, `attention_mask`
/// → the mask.
fn read_prompt_embeds(file: &Path) -> std::result::Result<Vec<(String, EncodedTensor)>, String> {
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
