//! The caption tables of a merged store, numbered as an unsharded prepare numbers them.

use std::collections::HashMap;

use rusqlite::params;

use super::store_error;
use crate::Result;
use crate::store::catalog::Catalog;

/// The caption tables of all parts, renumbered for the merged store.
#[derive(Default)]
pub(super) struct CaptionMerge {
    /// Text encoders in the order of their first caption (the order prepare numbers them in).
    encoders: Vec<String>,
    /// Per part: caption id → (encoder, key, text).
    captions: Vec<HashMap<i64, (String, String, String)>>,
    /// Per part: (encoder, item) → caption ids, in variant order.
    variants: Vec<HashMap<(String, i64), Vec<i64>>>,
}

impl CaptionMerge {
    /// Reads the caption tables of the part attached as `part` (part number `k`).
    pub(super) fn read_part(&mut self, cat: &Catalog, k: usize) -> Result<()> {
        let rows = cat.rows(
            "SELECT id, encoder, key, text FROM part.captions ORDER BY id",
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )?;
        let mut captions = HashMap::with_capacity(rows.len());
        for (id, encoder, key, text) in rows {
            if !self.encoders.contains(&encoder) {
                self.encoders.push(encoder.clone());
            }
            captions.insert(id, (encoder, key, text));
        }
        let mut variants: HashMap<(String, i64), Vec<i64>> = HashMap::new();
        for (item, encoder, caption) in cat.rows(
            "SELECT item, encoder, caption FROM part.item_captions ORDER BY item, encoder, variant",
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )? {
            variants.entry((encoder, item)).or_default().push(caption);
        }
        debug_assert_eq!(self.captions.len(), k);
        self.captions.push(captions);
        self.variants.push(variants);
        Ok(())
    }

    /// Writes the merged `captions` and `item_captions`: per encoder, the empty caption, then
    /// the captions in order of first use by the merged items, then any no item uses.
    pub(super) fn write(&self, cat: &Catalog) -> Result<()> {
        let err = |e| cat.err(e);
        let order = cat.rows("SELECT part, item FROM temp.item_ids ORDER BY id", |r| {
            Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)?))
        })?;
        let tx = cat.conn.unchecked_transaction().map_err(err)?;
        {
            let mut ins_caption = tx
                .prepare("INSERT INTO captions(id, encoder, key, text) VALUES (?1, ?2, ?3, ?4)")
                .map_err(err)?;
            let mut ins_variant = tx
                .prepare("INSERT INTO item_captions(item, encoder, variant, caption) VALUES (?1, ?2, ?3, ?4)")
                .map_err(err)?;
            let mut next_id = 0i64;
            for encoder in &self.encoders {
                let mut seen: HashMap<String, i64> = HashMap::new();
                let mut assign = |key: &str, text: &str| -> Result<i64> {
                    if let Some(&id) = seen.get(key) {
                        return Ok(id);
                    }
                    ins_caption
                        .execute(params![next_id, encoder, key, text])
                        .map_err(err)?;
                    seen.insert(key.to_owned(), next_id);
                    next_id += 1;
                    Ok(next_id - 1)
                };
                let per_part: Vec<Vec<(i64, &str, &str)>> = self
                    .captions
                    .iter()
                    .map(|part| {
                        let mut v: Vec<(i64, &str, &str)> = part
                            .iter()
                            .filter(|(_, (e, _, _))| e == encoder)
                            .map(|(id, (_, key, text))| (*id, key.as_str(), text.as_str()))
                            .collect();
                        v.sort_unstable();
                        v
                    })
                    .collect();
                if let Some((_, key, text)) = per_part
                    .iter()
                    .flatten()
                    .find(|(_, _, text)| text.is_empty())
                {
                    assign(key, text)?;
                }
                for (new_item, (k, item)) in order.iter().enumerate() {
                    let Some(list) = self.variants[*k].get(&(encoder.clone(), *item)) else {
                        continue;
                    };
                    for (variant, caption) in list.iter().enumerate() {
                        let (_, key, text) = self.captions[*k].get(caption).ok_or_else(|| {
                            store_error(
                                &cat.path,
                                format!(
                                    "a part's item {item} refers to caption {caption}, which the part does not hold; prepare that part again"
                                ),
                            )
                        })?;
                        let id = assign(key, text)?;
                        ins_variant
                            .execute(params![new_item as i64, encoder, variant as i64, id])
                            .map_err(err)?;
                    }
                }
                for (_, key, text) in per_part.iter().flatten() {
                    assign(key, text)?;
                }
            }
        }
        tx.commit().map_err(err)
    }
}
