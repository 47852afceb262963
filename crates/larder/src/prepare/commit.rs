//! The last step of a prepare: the item list, findings, datasets, encoders and captions,
//! replaced in one transaction, each table by its own function.

use rusqlite::{Transaction, params};

use super::items::ItemPlan;
use super::{Part, PrepareOptions, config_digest, merge, texts};
use crate::Result;
use crate::config::{Config, RAW_CONTROL};
use crate::image::PIPELINE;
use crate::scan::Finding;
use crate::store::catalog::Catalog;
use crate::store::codec::Codec;

/// An encoder as the catalog's `encoders` table records it.
pub(super) struct EncoderRow {
    field: String,
    identity: String,
    params: serde_json::Value,
}

impl EncoderRow {
    pub(super) fn new(
        field: &str,
        identity: &crate::encode::EncoderIdentity,
        codec: Codec,
        mut params: serde_json::Value,
    ) -> Self {
        params["model"] = identity.id.clone().into();
        params["scaling_factor"] = identity.scaling_factor.into();
        params["shift_factor"] = identity.shift_factor.into();
        params["codec"] = codec.name().into();
        EncoderRow {
            field: field.to_owned(),
            identity: identity.key_text(),
            params,
        }
    }
}

/// Everything the last transaction of a prepare records.
pub(super) struct Commit<'a> {
    pub(super) config: &'a Config,
    pub(super) items: &'a [&'a ItemPlan<'a>],
    pub(super) findings: &'a [Finding],
    pub(super) options: &'a PrepareOptions,
    pub(super) encoders: &'a [EncoderRow],
    pub(super) texts: &'a [texts::EncoderTexts],
    /// For a part of a distributed prepare: the part and the number of planned items in the
    /// whole plan.
    pub(super) part: Option<(Part, usize)>,
}

impl Commit<'_> {
    /// Replaces the item list, findings, datasets and encoders in one transaction: until it
    /// commits, readers see the previous prepare's complete store. A part of a distributed
    /// prepare also records each item's plan index and its `part` marker: a part is complete
    /// if and only if its marker is there.
    pub(super) fn run(&self, catalog: &Catalog) -> Result<()> {
        let err = |e| catalog.err(e);
        let tx = catalog.conn.unchecked_transaction().map_err(err)?;
        tx.execute_batch("DELETE FROM item_fields; DELETE FROM part_items; DELETE FROM items; DELETE FROM findings; DELETE FROM datasets; DELETE FROM encoders; DELETE FROM item_captions; DELETE FROM captions;")
            .map_err(err)?;
        self.insert_items(&tx).map_err(err)?;
        if self.part.is_some() {
            self.insert_part_items(&tx).map_err(err)?;
        }
        self.insert_findings(&tx).map_err(err)?;
        self.insert_datasets(&tx).map_err(err)?;
        // What the loader applies to the stored captions, recorded once (issue #17).
        let recipes: Vec<_> = (self.config.datasets.iter())
            .map(crate::CaptionRecipe::from_dataset)
            .collect();
        catalog.set_caption_recipes(&recipes)?;
        self.insert_encoders(&tx).map_err(err)?;
        self.insert_captions(&tx).map_err(err)?;
        self.set_meta(&tx).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The items and the entries of their fields.
    fn insert_items(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut ins_item = tx.prepare(
            "INSERT INTO items(id, dataset, path, bytes, content_hash, width, height, orientation, resolution,
               bucket_w, bucket_h, scale_to_w, scale_to_h, crop_x, crop_y, flip, repeat, caption, caption_short,
               is_reg, loss_multiplier, network_weight, item_key, frames, frame_indices)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
        )?;
        let mut ins_field = tx.prepare(
            "INSERT INTO item_fields(item, field, entry, entry_id)
             VALUES (?1, ?2, ?3, (SELECT id FROM entries WHERE key = ?3))",
        )?;
        for (id, item) in self.items.iter().enumerate() {
            let p = &item.planned;
            let cfg = item.dataset;
            let img = item.image;
            ins_item.execute(params![
                id as i64,
                p.dataset as i64,
                img.path.to_string_lossy(),
                img.bytes as i64,
                item.content_hash,
                img.width,
                img.height,
                img.orientation,
                p.resolution,
                p.placement.bucket.width,
                p.placement.bucket.height,
                p.placement.scale_to_width,
                p.placement.scale_to_height,
                p.placement.crop_x,
                p.placement.crop_y,
                p.flip.name(),
                p.repeat,
                img.caption,
                img.caption_short,
                cfg.is_reg,
                cfg.loss_multiplier,
                cfg.network_weight,
                item.item_key,
                item.frames.as_ref().map_or(1, Vec::len) as i64,
                item.frames
                    .as_ref()
                    .map(|f| serde_json::json!(f).to_string()),
            ])?;
            for f in &item.fields {
                ins_field.execute(params![id as i64, f.what.field, f.key])?;
            }
            let audio = item.audio.iter().flatten();
            for (field, key) in item.encoded.iter().chain(&item.first_frame).chain(audio) {
                ins_field.execute(params![id as i64, field, key])?;
            }
        }
        Ok(())
    }

    /// Each item's index in the whole plan, for the merge to put the parts' items in order.
    fn insert_part_items(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut ins_part =
            tx.prepare("INSERT INTO part_items(item, plan_index) VALUES (?1, ?2)")?;
        for (id, item) in self.items.iter().enumerate() {
            ins_part.execute(params![id as i64, item.plan_index as i64])?;
        }
        Ok(())
    }

    fn insert_findings(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut ins_finding = tx
            .prepare("INSERT INTO findings(dataset, kind, path, detail) VALUES (?1, ?2, ?3, ?4)")?;
        for f in self.findings {
            let kind = serde_json::to_value(f.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            ins_finding.execute(params![
                f.dataset as i64,
                kind,
                f.path.to_string_lossy(),
                f.detail
            ])?;
        }
        Ok(())
    }

    /// Every dataset of the config with its settings as JSON (what the loader reads back).
    fn insert_datasets(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut ins_ds =
            tx.prepare("INSERT INTO datasets(id, source, config) VALUES (?1, ?2, ?3)")?;
        for (i, d) in self.config.datasets.iter().enumerate() {
            let json = serde_json::to_string(d).unwrap_or_default();
            ins_ds.execute(params![i as i64, d.source.path().to_string_lossy(), json])?;
        }
        Ok(())
    }

    /// The image fields' pipeline, then every encoder that ran.
    fn insert_encoders(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let image_fields = serde_json::json!({"codec": self.options.image_codec.name(), "filter": "catmull-rom (Pillow BICUBIC)", "layout": "CHW"}).to_string();
        for field in ["pixels", "mask", "control", RAW_CONTROL, "inpaint"] {
            tx.execute(
                "INSERT INTO encoders(field, identity, params) VALUES (?1, ?2, ?3)",
                params![field, PIPELINE, image_fields],
            )?;
        }
        for e in self.encoders {
            tx.execute(
                "INSERT INTO encoders(field, identity, params) VALUES (?1, ?2, ?3)",
                params![e.field, e.identity, e.params.to_string()],
            )?;
        }
        Ok(())
    }

    /// The distinct captions of each text encoder, and which of them each item's variants are.
    fn insert_captions(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut ins_caption =
            tx.prepare("INSERT INTO captions(id, encoder, key, text) VALUES (?1, ?2, ?3, ?4)")?;
        let mut ins_variant = tx.prepare(
            "INSERT INTO item_captions(item, encoder, variant, caption) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut next_id = 0i64;
        for t in self.texts {
            for super::texts::Caption { key, text, .. } in &t.captions {
                ins_caption.execute(params![next_id, t.field, key, text])?;
                next_id += 1;
            }
            let first = next_id - t.captions.len() as i64;
            for (item, variants) in t.variants.iter().enumerate() {
                for (v, &caption) in variants.iter().enumerate() {
                    ins_variant.execute(params![
                        item as i64,
                        t.field,
                        v as i64,
                        first + i64::from(caption)
                    ])?;
                }
            }
        }
        Ok(())
    }

    /// The store's metadata: which config made it, and for a part, the part marker.
    fn set_meta(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let config = self.config;
        let digest = config_digest(config);
        for (k, v) in [
            ("config_digest", digest.as_str()),
            ("config_source", &config.source.to_string_lossy()),
            ("divisibility", &config.divisibility.to_string()),
            ("larder_version", env!("CARGO_PKG_VERSION")),
            ("resize_filter", "catmull-rom"),
        ] {
            set_meta(tx, k, v)?;
        }
        match self.part {
            Some((part, planned)) => {
                set_meta(tx, merge::META_PART, &part.to_string())?;
                set_meta(tx, merge::META_PLAN_ITEMS, &planned.to_string())?;
            }
            None => {
                tx.execute(
                    "DELETE FROM meta WHERE key IN (?1, ?2)",
                    params![merge::META_PART, merge::META_PLAN_ITEMS],
                )?;
            }
        }
        Ok(())
    }
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}
