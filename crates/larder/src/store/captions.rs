//! The caption tables: text embeddings stored once per distinct caption, and each item's
//! caption variants per text encoder (see docs/store-format.md).

use super::Store;
use super::catalog::Catalog;
use super::key::KeyBuilder;
use crate::{Error, Result};

/// Returns true if and only if the catalog has the caption tables (stores written before them
/// do not, and are read as having no text embeddings).
pub(crate) fn caption_tables_exist(cat: &Catalog) -> Result<bool> {
    Ok(cat.has_table("captions")? && cat.has_table("item_captions")?)
}

/// SQL condition on `entries.key`: the entry is an output of a caption (`<caption key>.<output>`).
pub(crate) const IS_CAPTION_OUTPUT: &str =
    "(instr(key, '.') > 0 AND substr(key, 1, instr(key, '.') - 1) IN (SELECT key FROM captions))";

/// The key of a caption's entries: the encoder, the exact text and, for an encoder that takes
/// control images, their content hashes (in control order; none for a caption encoded alone).
/// Its outputs are stored as entries `<key>.<output>`.
pub(crate) fn caption_key(
    field: &str,
    identity: &str,
    codec: &str,
    text: &str,
    controls: &[&str],
) -> String {
    let mut key = KeyBuilder::new("larder/caption/v1");
    key.text(field).text(identity).text(codec).text(text);
    if !controls.is_empty() {
        key.text("controls");
        for hash in controls {
            key.text(hash);
        }
    }
    key.finish()
}

/// One text encoder's captions as the loader needs them.
#[derive(Debug, Clone)]
pub(crate) struct TextTable {
    /// The encoder's field name (`"text"`).
    pub field: String,
    /// Stored outputs: (name, is a token sequence).
    pub outputs: Outputs,
    /// Per caption: its text, and the entry position of each output (in `outputs` order).
    pub captions: Vec<(String, Vec<u32>)>,
    /// Per caption: encoded from its text alone, not with an item's control images (see
    /// [`caption_key`]).
    pub plain: Vec<bool>,
    /// Per dataset, the index in `captions` of its dropout caption
    /// ([`CaptionRecipe::dropout_caption`](crate::CaptionRecipe::dropout_caption)); `None`
    /// where the store lacks it (captions imported from AI Toolkit, or prepared before the
    /// dataset dropped captions). Empty until [`TextTable::find_dropouts`] fills it.
    pub dropped: Vec<Option<u32>>,
    /// Item `i`'s variants are `variants[offsets[i]..offsets[i + 1]]` (caption indices); an
    /// item without any (no AI Toolkit cache was imported for it) has an empty range.
    pub offsets: Vec<u32>,
    /// Caption indices, item after item.
    pub variants: Vec<u32>,
}

impl TextTable {
    /// Finds each dataset's dropout caption among the stored captions: the one encoded from
    /// the text alone, since items with controls may have the same text encoded with them.
    pub fn find_dropouts(&mut self, recipes: &[crate::CaptionRecipe]) {
        let index: std::collections::HashMap<&str, u32> = (self.captions.iter().enumerate())
            .filter(|(i, _)| self.plain[*i])
            .map(|(i, (text, _))| (text.as_str(), i as u32))
            .collect();
        self.dropped = (recipes.iter())
            .map(|r| index.get(r.dropout_caption().as_str()).copied())
            .collect();
    }
}

/// A text encoder's stored outputs: (name, is a token sequence).
pub(crate) type Outputs = Vec<(String, bool)>;

/// Every text encoder's field and stored outputs, as the `encoders` table records them; empty
/// for stores without the caption tables.
pub(crate) fn text_encoder_outputs(cat: &Catalog) -> Result<Vec<(String, Outputs)>> {
    if !caption_tables_exist(cat)? {
        return Ok(Vec::new());
    }
    let encoders = cat.rows("SELECT field, params FROM encoders ORDER BY field", |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for (field, params) in encoders {
        let params: serde_json::Value = serde_json::from_str(&params).unwrap_or_default();
        if params["kind"] != "text" {
            continue;
        }
        let names = |key: &str| -> Vec<String> {
            params["outputs"][key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let sequences = names("sequences");
        let outputs = names("outputs")
            .into_iter()
            .map(|o| {
                let seq = sequences.contains(&o);
                (o, seq)
            })
            .collect();
        out.push((field, outputs));
    }
    Ok(out)
}

impl Store {
    /// Every text encoder's captions and variants; empty for stores without text encoders
    /// (including stores written before the caption tables existed).
    pub(crate) fn text_tables(&self, items: usize) -> Result<Vec<TextTable>> {
        let encoders = text_encoder_outputs(&self.catalog())?;
        encoders
            .into_iter()
            .map(|(field, outputs)| self.text_table(field, outputs, items))
            .collect()
    }

    /// The identity and codec a text encoder's caption keys were made with (as the `encoders`
    /// table records them).
    fn encoder_identity(&self, field: &str) -> Result<(String, String)> {
        let cat = self.catalog();
        let (identity, params) = cat
            .conn
            .query_row(
                "SELECT identity, params FROM encoders WHERE field = ?1",
                [field],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .map_err(|e| cat.err(e))?;
        let params: serde_json::Value = serde_json::from_str(&params).unwrap_or_default();
        let codec = params["codec"].as_str().unwrap_or_default().to_owned();
        Ok((identity, codec))
    }

    fn text_table(&self, field: String, outputs: Outputs, items: usize) -> Result<TextTable> {
        let bad = |message: String| Error::Store {
            path: self.root().join(super::CATALOG_FILE),
            message: format!("text encoder {field:?}: {message}; run `larder prepare` again"),
        };
        if outputs.is_empty() {
            return Err(bad("the catalog records no outputs".into()));
        }
        let (rows, variants) = {
            let cat = self.catalog();
            let err = |e| cat.err(e);
            let mut stmt = cat
                .conn
                .prepare("SELECT id, key, text FROM captions WHERE encoder = ?1 ORDER BY id")
                .map_err(err)?;
            let rows = stmt
                .query_map([&field], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            let mut stmt = cat
                .conn
                .prepare(
                    "SELECT item, caption FROM item_captions WHERE encoder = ?1 ORDER BY item, variant",
                )
                .map_err(err)?;
            let variants = stmt
                .query_map([&field], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            (rows, variants)
        };
        let first_id = rows.first().map_or(0, |r| r.0);
        let index = self.key_index()?;
        let (identity, codec) = self.encoder_identity(&field)?;
        let plain = (rows.iter())
            .map(|(_, key, text)| *key == caption_key(&field, &identity, &codec, text, &[]))
            .collect();
        let mut captions = Vec::with_capacity(rows.len());
        for (_, key, text) in rows {
            let positions = outputs
                .iter()
                .map(|(o, _)| {
                    index
                        .get(&format!("{key}.{o}"))
                        .copied()
                        .ok_or_else(|| bad(format!("caption {text:?} has no stored {o}")))
                })
                .collect::<Result<Vec<u32>>>()?;
            captions.push((text, positions));
        }
        let mut offsets = vec![0u32; items + 1];
        let mut flat = Vec::with_capacity(variants.len());
        let mut item_at = 0usize;
        for (item, caption) in variants {
            let item = usize::try_from(item).unwrap_or(usize::MAX);
            let caption = u32::try_from(caption - first_id)
                .ok()
                .filter(|&c| (c as usize) < captions.len())
                .ok_or_else(|| bad(format!("item {item} refers to an unknown caption")))?;
            if item >= items {
                return Err(bad(format!("item {item} has variants but is not an item")));
            }
            while item_at < item {
                item_at += 1;
                offsets[item_at] = flat.len() as u32;
            }
            flat.push(caption);
        }
        while item_at < items {
            item_at += 1;
            offsets[item_at] = flat.len() as u32;
        }
        Ok(TextTable {
            field,
            outputs,
            captions,
            plain,
            dropped: Vec::new(),
            offsets,
            variants: flat,
        })
    }
}
