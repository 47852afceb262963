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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::params;

mod format;

use format::{check_clip, check_latent, read_prompt_embeds, read_tensor, text_hash};

use super::texts::{self, TextOutputs};
use super::{
    Prepare, PrepareOptions, PrepareReport, Produced, encoded, image_encoder_key, open_for_writing,
    stored_entry, with_writer,
};
use crate::Result;
use crate::caption::{CaptionContext, CaptionRecipe};
use crate::config::Config;
use crate::encode::{EncoderIdentity, PixelFormat};
use crate::plan::Flip;
use crate::storage::Location;
use crate::store::captions::caption_key;
use crate::store::catalog::Catalog;
use crate::store::codec::Values;

/// What to import and under which identities ([`Prepare::import_aitk`]; the prepare around
/// the imported tensors takes its settings from [`Prepare::options`]).
#[derive(Debug, Clone)]
pub struct AitkImportOptions {
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

impl AitkImportReport {
    fn counts(&mut self, kind: &str) -> &mut ImportCounts {
        match kind {
            "latent" => &mut self.latents,
            "clip" => &mut self.clip,
            _ => &mut self.texts,
        }
    }
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

impl Prepare<'_> {
    /// Prepares into the store folder `out`, then imports AI Toolkit's caches found next to
    /// the images: [`Prepare::run`] for a store that starts from AI Toolkit's own latents and
    /// embeddings instead of encoders.
    ///
    /// The import writes into a local folder only (it reads and rewrites the catalog after the
    /// prepare); for object storage, import into a folder and `larder push` it. It takes no
    /// encoders and no part: run a prepare with encoders afterwards to compute only what was
    /// not imported, and merge a distributed prepare's parts before importing into the result.
    pub fn import_aitk(
        self,
        out: impl Into<Location>,
        import: &AitkImportOptions,
    ) -> Result<AitkImportReport> {
        let out = match out.into() {
            Location::Local(dir) => dir,
            Location::Url(url) => {
                return Err(crate::Error::InvalidArgument {
                    name: "out",
                    message: format!(
                        "AI Toolkit's caches are imported into a local store folder, not {url}: import into a folder, then `larder push` it"
                    ),
                });
            }
        };
        if self.options.part.is_some_and(|p| !p.is_whole()) {
            return Err(crate::Error::InvalidArgument {
                name: "part",
                message: "importing AI Toolkit's caches is not split into parts: merge the parts, then import into the merged store".into(),
            });
        }
        if self.encoders.is_some() {
            return Err(crate::Error::InvalidArgument {
                name: "encoders",
                message: "an import copies AI Toolkit's caches instead of encoding: import first, then prepare with encoders, which computes only what was not imported".into(),
            });
        }
        let config = self.config;
        let options = self.options.clone();
        let prepared = self.run_in(&out, None)?;
        import_caches(config, &out, &options, import, prepared)
    }
}

/// Imports the caches of the items of the store `out`, just prepared as `prepared`.
fn import_caches(
    config: &Config,
    out: &Path,
    prepare: &PrepareOptions,
    options: &AitkImportOptions,
    prepared: PrepareReport,
) -> Result<AitkImportReport> {
    let mut report = AitkImportReport {
        prepare: prepared,
        ..AitkImportReport::default()
    };
    let (_lock, catalog) = open_for_writing(out)?;
    let items = stored_items(&catalog)?;
    let mut dirs = Listing::default();

    // Latents first: the architecture is given, or the first file that matches the plan says.
    let (latents, arch) = find_described(
        &items,
        &mut dirs,
        ("latent", "_latent_cache"),
        options.arch.clone(),
        check_latent,
        &mut report,
    );
    let (mut clips, clip_encoder) = find_described(
        &items,
        &mut dirs,
        ("clip", "_clip_vision_cache"),
        None,
        check_clip,
        &mut report,
    );
    // Where a dataset gives CLIP images of their own (`clip_image_path`), larder keys CLIP
    // entries by those; they are encoded, not imported.
    clips.retain(|(i, _)| {
        (config.datasets.get(items[*i].dataset)).is_some_and(|d| d.clip_image_path.is_none())
    });
    let texts = find_texts(config, &items, &mut dirs, arch.as_deref(), &mut report);
    report.arch = arch.clone();

    let arch_name = arch.as_deref().unwrap_or("unknown");
    let default = |given: &Option<EncoderIdentity>, id: String| {
        given.clone().unwrap_or_else(|| EncoderIdentity::new(id))
    };
    let mut targets = Targets {
        latent: (
            &options.latent.0,
            default(&options.latent.1, format!("ai-toolkit/{arch_name}")),
        ),
        text: (
            &options.text.0,
            default(&options.text.1, format!("ai-toolkit/{arch_name}/text")),
        ),
        clip: (
            &options.clip.0,
            default(
                &options.clip.1,
                format!(
                    "ai-toolkit/clip/{}",
                    clip_encoder.as_deref().unwrap_or("unknown")
                ),
            ),
        ),
        options: prepare,
        stored_captions: HashSet::new(),
        stored: catalog.entry_keys()?,
    };
    targets.stored_captions = targets
        .stored
        .iter()
        .filter_map(|k| k.split_once('.').map(|(caption, _)| caption.to_owned()))
        .collect();
    let mut imported = Imported::default();
    let (catalog, written) = with_writer(catalog, out, prepare, None, |tx| {
        targets.copy_latents(tx, &items, &latents, &mut imported, &mut report)?;
        targets.copy_clips(tx, &items, &clips, &mut imported, &mut report)?;
        targets.copy_texts(tx, &items, &texts, &mut imported, &mut report)
    })?;
    report.prepare.entries_computed += written.entries;
    report.prepare.shards_written += written.shards;
    report.prepare.bytes_written += written.bytes;
    let found = (!latents.is_empty(), !clips.is_empty());
    targets.record(&catalog, &imported, found, arch.as_deref())?;
    Ok(report)
}

/// Finds each item's cache file in the folder `kinds.1` by its recorded parameters: `check`
/// returns the parameter that must agree across files (the latent space, the CLIP encoder),
/// which is `fixed` when given and else taken from the first file that matches.
fn find_described(
    items: &[Item],
    dirs: &mut Listing,
    (kind, folder): (&'static str, &str),
    mut fixed: Option<String>,
    check: fn(&Path, &Item, Option<&str>) -> std::result::Result<String, String>,
    report: &mut AitkImportReport,
) -> (Vec<(usize, PathBuf)>, Option<String>) {
    let mut found = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let candidates = dirs.candidates(&cache_dir(&item.path, folder), &item.path);
        let counts = report.counts(kind);
        if candidates.is_empty() {
            counts.missing += 1;
            continue;
        }
        let mut reasons = Vec::new();
        let hit = candidates
            .iter()
            .find(|file| match check(file, item, fixed.as_deref()) {
                Ok(value) => {
                    fixed.get_or_insert(value);
                    true
                }
                Err(reason) => {
                    reasons.push((file.to_path_buf(), reason));
                    false
                }
            });
        match hit {
            Some(file) => found.push((i, file.clone())),
            None => {
                counts.mismatched += 1;
                for (file, reason) in reasons {
                    report.mismatches.push(mismatch(kind, item, &file, reason));
                }
            }
        }
    }
    (found, fixed)
}

/// Finds each item's text-embedding cache by the hash of its caption: as loaded, or with the
/// trigger word injected (what AI Toolkit encodes depends on its version).
fn find_texts(
    config: &Config,
    items: &[Item],
    dirs: &mut Listing,
    arch: Option<&str>,
    report: &mut AitkImportReport,
) -> Vec<(usize, String, PathBuf)> {
    let recipes: Vec<CaptionRecipe> = config
        .datasets
        .iter()
        .map(|d| CaptionRecipe {
            caption_dropout_rate: 0.0,
            token_dropout_rate: 0.0,
            shuffle_tokens: false,
            random_triggers: Vec::new(),
            ..CaptionRecipe::from_dataset(d)
        })
        .collect();
    let mut found = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let dir = cache_dir(&item.path, "_t_e_cache");
        let candidates = dirs.candidates(&dir, &item.path);
        if candidates.is_empty() {
            report.texts.missing += 1;
            continue;
        }
        let Some(arch) = arch else {
            report.texts.mismatched += 1;
            let reason = "the model architecture is unknown (no latent cache matched): pass --arch";
            report
                .mismatches
                .push(mismatch("text", item, &candidates[0], reason.into()));
            continue;
        };
        let mut captions = vec![item.caption.clone()];
        if let Some(recipe) = recipes.get(item.dataset) {
            let ctx = CaptionContext {
                seed: 0,
                epoch: 0,
                item: 0,
            };
            let injected = recipe.apply(&item.caption, ctx);
            if !captions.contains(&injected) {
                captions.push(injected);
            }
        }
        let stem = stem(&item.path);
        let hit = captions.into_iter().find_map(|c| {
            let file = dir.join(format!("{stem}_{}.safetensors", text_hash(&c, arch)));
            candidates.contains(&file).then_some((c, file))
        });
        match hit {
            Some((caption, file)) => found.push((i, caption, file)),
            None => {
                report.texts.mismatched += 1;
                let reason = format!(
                    "no text-embedding cache of this image was made from the caption {:?} with text_embedding_space_version {arch:?}",
                    item.caption
                );
                report
                    .mismatches
                    .push(mismatch("text", item, &candidates[0], reason));
            }
        }
    }
    found
}

/// Where imported tensors go: field names, identities, codecs, and what the store holds.
struct Targets<'a> {
    latent: (&'a String, EncoderIdentity),
    text: (&'a String, EncoderIdentity),
    clip: (&'a String, EncoderIdentity),
    options: &'a PrepareOptions,
    stored: HashSet<String>,
    /// Captions with embeddings stored: the part of a `{caption key}.{output}` entry key
    /// before the dot, as the text encoder's pass reads it.
    stored_captions: HashSet<String>,
}

/// What the copy produced, for the catalog.
#[derive(Default)]
struct Imported {
    /// (item id, field, entry key).
    fields: Vec<(i64, String, String)>,
    /// Distinct captions: (caption key, text).
    captions: Vec<(String, String)>,
    /// (item id, index into `captions`).
    item_captions: Vec<(i64, usize)>,
    text_outputs: Option<TextOutputs>,
    /// Entry keys handled in this import (an entry shared by items is copied once).
    seen: HashSet<String>,
}

type Tx = crossbeam_channel::Sender<Vec<Vec<Produced>>>;

impl Targets<'_> {
    fn copy_latents(
        &self,
        tx: &Tx,
        items: &[Item],
        found: &[(usize, PathBuf)],
        imported: &mut Imported,
        report: &mut AitkImportReport,
    ) -> Result<()> {
        let (field, identity) = (&self.latent.0, &self.latent.1);
        let codec = self.options.latent_codec;
        for (i, file) in found {
            let item = &items[*i];
            let key = image_encoder_key(
                &item.item_key,
                &item.content_hash,
                field,
                identity,
                PixelFormat::SignedUnit,
                &codec.name(),
            );
            if !imported.seen.contains(&key) {
                if self.stored.contains(&key) {
                    report.latents.stored += 1;
                } else {
                    // A cache file whose header read but whose tensor does not (truncated,
                    // corrupt) is a mismatch like any other: the item is left for a prepare
                    // with the encoder, and the rest is imported.
                    let t = match read_tensor(file, "latent") {
                        Ok(t) => t,
                        Err(e) => {
                            report.latents.mismatched += 1;
                            report
                                .mismatches
                                .push(mismatch("latent", item, file, e.to_string()));
                            continue;
                        }
                    };
                    let name = format!("{}/{field}", item.item_key);
                    send(
                        tx,
                        vec![stored_entry(
                            &key,
                            name,
                            codec,
                            Values::F32(&t.values),
                            t.shape,
                        )?],
                    );
                    report.latents.imported += 1;
                }
                imported.seen.insert(key.clone());
            }
            imported.fields.push((item.id, field.to_string(), key));
        }
        Ok(())
    }

    fn copy_clips(
        &self,
        tx: &Tx,
        items: &[Item],
        found: &[(usize, PathBuf)],
        imported: &mut Imported,
        report: &mut AitkImportReport,
    ) -> Result<()> {
        let (field, identity) = (&self.clip.0, self.clip.1.key_text());
        let codec = self.options.latent_codec;
        for (i, file) in found {
            let item = &items[*i];
            let mut group = Vec::new();
            let mut fields = Vec::new();
            let mut already = false;
            let mut unreadable = None;
            for (tensor, name) in [
                ("image_embeds", field.to_string()),
                ("last_hidden_state", format!("{field}.last_hidden_state")),
                (
                    "penultimate_hidden_states",
                    format!("{field}.penultimate_hidden_states"),
                ),
            ] {
                let key = encoded::clip_key(
                    &item.content_hash,
                    item.flip,
                    &self.options.clip.key_text(),
                    &name,
                    &identity,
                    &codec.name(),
                );
                fields.push((item.id, name.clone(), key.clone()));
                if imported.seen.contains(&key) {
                    continue;
                }
                if self.stored.contains(&key) {
                    already = true;
                    continue;
                }
                match read_tensor(file, tensor) {
                    Ok(t) => group.push(stored_entry(
                        &key,
                        format!("{key}/{name}"),
                        codec,
                        Values::F32(&t.values),
                        t.shape,
                    )?),
                    Err(e) => {
                        unreadable = Some(e);
                        break;
                    }
                }
            }
            // An unreadable tensor makes the item a mismatch (as in `copy_latents`): none of
            // its CLIP fields are imported.
            if let Some(e) = unreadable {
                report.clip.mismatched += 1;
                report
                    .mismatches
                    .push(mismatch("clip", item, file, e.to_string()));
                continue;
            }
            for (_, _, key) in &fields {
                imported.seen.insert(key.clone());
            }
            imported.fields.extend(fields);
            if !group.is_empty() {
                report.clip.imported += 1;
                send(tx, group);
            } else if already {
                report.clip.stored += 1;
            }
        }
        Ok(())
    }

    fn copy_texts(
        &self,
        tx: &Tx,
        items: &[Item],
        found: &[(usize, String, PathBuf)],
        imported: &mut Imported,
        report: &mut AitkImportReport,
    ) -> Result<()> {
        let (field, identity) = (&self.text.0, self.text.1.key_text());
        let codec = self.options.text_codec;
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (i, caption, file) in found {
            let item = &items[*i];
            let key = caption_key(field, &identity, &codec.name(), caption, &[]);
            if let Some(&id) = ids.get(caption) {
                imported.item_captions.push((item.id, id));
                continue;
            }
            let split = read_prompt_embeds(file).and_then(|o| texts::split_outputs(o, 1));
            let problem = match (&split, &imported.text_outputs) {
                (Err(reason), _) => Some(reason.clone()),
                (Ok(s), Some(o)) if s.outputs != *o => Some(format!(
                    "holds {:?}, other files hold {:?}",
                    s.outputs.outputs, o.outputs
                )),
                _ => None,
            };
            let split = match (split, problem) {
                (Ok(split), None) => split,
                (_, problem) => {
                    report.texts.mismatched += 1;
                    let reason = problem.unwrap_or_default();
                    report.mismatches.push(mismatch("text", item, file, reason));
                    continue;
                }
            };
            imported.text_outputs = Some(split.outputs.clone());
            let id = imported.captions.len();
            imported.captions.push((key.clone(), caption.clone()));
            ids.insert(caption.clone(), id);
            imported.item_captions.push((item.id, id));
            if self.stored_captions.contains(&key) {
                report.texts.stored += 1;
                continue;
            }
            let mut group = Vec::new();
            for (name, shape, values) in &split.items[0] {
                group.push(stored_entry(
                    &format!("{key}.{name}"),
                    format!("{key}/{field}.{name}"),
                    codec,
                    Values::F32(values),
                    shape.clone(),
                )?);
            }
            report.texts.imported += 1;
            send(tx, group);
        }
        Ok(())
    }

    /// Records the imported fields, encoders and captions in one transaction.
    fn record(
        &self,
        catalog: &Catalog,
        imported: &Imported,
        (latents, clips): (bool, bool),
        arch: Option<&str>,
    ) -> Result<()> {
        let err = |e| catalog.err(e);
        let tx = catalog.conn.unchecked_transaction().map_err(err)?;
        {
            let mut ins_field = tx
                .prepare(
                    "INSERT OR REPLACE INTO item_fields(item, field, entry, entry_id)
                     VALUES (?1, ?2, ?3, (SELECT id FROM entries WHERE key = ?3))",
                )
                .map_err(err)?;
            for (item, field, key) in &imported.fields {
                ins_field.execute(params![item, field, key]).map_err(err)?;
            }
            let mut ins_encoder = tx
                .prepare(
                    "INSERT OR REPLACE INTO encoders(field, identity, params) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            let mut encoder = |(field, identity): &(&String, EncoderIdentity),
                               kind: &str,
                               codec: String,
                               extra: (&str, serde_json::Value)|
             -> Result<()> {
                let mut p = serde_json::json!({"imported_from": "ai-toolkit", "kind": kind, "arch": arch,
                    "codec": codec, "model": identity.id, "scaling_factor": identity.scaling_factor,
                    "shift_factor": identity.shift_factor});
                p[extra.0] = extra.1;
                ins_encoder
                    .execute(params![field, identity.key_text(), p.to_string()])
                    .map_err(err)?;
                Ok(())
            };
            if latents {
                let format = serde_json::json!(PixelFormat::SignedUnit);
                encoder(
                    &self.latent,
                    "image",
                    self.options.latent_codec.name(),
                    ("pixel_format", format),
                )?;
            }
            if clips {
                let clip = serde_json::json!(self.options.clip);
                encoder(
                    &self.clip,
                    "clip",
                    self.options.latent_codec.name(),
                    ("clip", clip),
                )?;
            }
            let Some(outputs) = &imported.text_outputs else {
                drop(ins_field);
                drop(ins_encoder);
                return tx.commit().map_err(err);
            };
            let text_codec = self.options.text_codec.name();
            encoder(
                &self.text,
                "text",
                text_codec.clone(),
                ("outputs", serde_json::json!(outputs)),
            )?;
            let field = self.text.0;
            tx.execute("DELETE FROM item_captions WHERE encoder = ?1", [field])
                .map_err(err)?;
            tx.execute("DELETE FROM captions WHERE encoder = ?1", [field])
                .map_err(err)?;
            let first: i64 = tx
                .query_row("SELECT coalesce(max(id), -1) + 1 FROM captions", [], |r| {
                    r.get(0)
                })
                .map_err(err)?;
            let mut ins_caption = tx
                .prepare("INSERT INTO captions(id, encoder, key, text) VALUES (?1, ?2, ?3, ?4)")
                .map_err(err)?;
            for (id, (key, text)) in imported.captions.iter().enumerate() {
                ins_caption
                    .execute(params![first + id as i64, field, key, text])
                    .map_err(err)?;
            }
            let mut ins_variant = tx
                .prepare("INSERT OR REPLACE INTO item_captions(item, encoder, variant, caption) VALUES (?1, ?2, 0, ?3)")
                .map_err(err)?;
            for (item, id) in &imported.item_captions {
                ins_variant
                    .execute(params![item, field, first + *id as i64])
                    .map_err(err)?;
            }
            let meta_key = texts::outputs_meta_key(field, &self.text.1.key_text(), &text_codec);
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![meta_key, serde_json::to_string(outputs).unwrap_or_default()],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }
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
            Ok(Item {
                id: r.get(0)?,
                dataset: r.get::<_, i64>(1)? as usize,
                path: PathBuf::from(r.get::<_, String>(2)?),
                bucket: (r.get(3)?, r.get(4)?),
                scale_to: (r.get(5)?, r.get(6)?),
                crop: (r.get(7)?, r.get(8)?),
                flip: r.get(9)?,
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
