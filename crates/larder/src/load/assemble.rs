//! Assembling one batch from the store: every requested field of every item, stacked into one
//! pooled buffer, with the items' captions or text embeddings.

use std::sync::Arc;
use std::time::Instant;

use super::batch::{Batch, BufferPool, Tensor};
use super::text::{self, Padding};
use crate::caption::{CaptionContext, CaptionRecipe};
use crate::config::{CLIP_IMAGE, RAW_CONTROL};
use crate::metrics::LoaderMetrics;
use crate::rng::{Purpose, Stream};
use crate::store::{DANGLING, ItemColumns, ItemRow, NO_ENTRY, Store, TextTable};
use crate::{Error, Result};

/// What the readers need to know of each item, shared by all of them.
#[derive(Debug)]
pub(super) struct Catalogued {
    pub(super) columns: ItemColumns,
    pub(super) recipes: Vec<CaptionRecipe>,
    /// The fields to load, as indices into `columns.fields`, in name order.
    pub(super) fields: Vec<usize>,
    pub(super) random_flip: bool,
    /// Wait, queue depth, bytes read and assembly time, recorded as batches are made and served.
    pub(super) metrics: Arc<LoaderMetrics>,
    /// Text encoders' captions and variants (see the `text` module).
    pub(super) texts: Vec<TextTable>,
    pub(super) text_padding: Padding,
}

/// Assembles one batch: every requested field of every item, stacked into one buffer.
pub(super) fn assemble(
    store: &Store,
    shared: &Catalogued,
    pool: &Arc<BufferPool>,
    ids: &[u32],
    epoch: u64,
    index: u64,
    seed: u64,
) -> Result<Batch> {
    let columns = &shared.columns;
    let rows: Vec<&ItemRow> = ids.iter().map(|&id| &columns.items[id as usize]).collect();
    let first = rows.first().ok_or_else(|| Error::InvalidArgument {
        name: "batch",
        message: "empty batch".into(),
    })?;
    let flipped: Vec<bool> = ids
        .iter()
        .map(|&id| {
            shared.random_flip
                && Stream::new(Purpose::Flip, &[seed, epoch, u64::from(id)]).unit() < 0.5
        })
        .collect();
    let mut fields = std::collections::BTreeMap::new();
    let mut per_item_fields = std::collections::BTreeMap::new();
    for &f in &shared.fields {
        let positions: Vec<u32> = ids
            .iter()
            .map(|&id| columns.entries[f][id as usize])
            .collect();
        let name = &columns.fields[f];
        // A field no item of the batch has is not in the batch. One that only some lack is
        // what AI Toolkit's batch does: a missing mask, control or inpaint image is zeros
        // like the others' (`torch.zeros_like`), and anything else (an encoder's output)
        // fails the batch, naming the item.
        let lacking = positions.iter().filter(|&&p| p == NO_ENTRY).count();
        if lacking == positions.len() {
            continue;
        }
        if lacking > 0 && !zero_when_missing(name) {
            let k = positions.iter().position(|&p| p == NO_ENTRY).unwrap_or(0);
            return Err(Error::Store {
                path: store.root().to_path_buf(),
                message: format!(
                    "item {} ({}) has no {name} while other items of its batch do (as AI Toolkit, only a missing mask, control, inpaint image or audio track is filled with zeros); run `larder prepare` again so that every item gets one, or load without the field",
                    ids[k], rows[k].path
                ),
            });
        }
        if per_item(name) {
            // Each item's own tensor: a batch of one, without its batch dimension.
            let mut own = Vec::with_capacity(ids.len());
            for k in 0..ids.len() {
                if positions[k] == NO_ENTRY {
                    own.push(None);
                    continue;
                }
                let one = k..k + 1;
                let (ids, rows, positions) =
                    (&ids[one.clone()], &rows[one.clone()], &positions[one]);
                let mut tensor = stack(store, pool, ids, rows, positions, name, &shared.metrics)?;
                mirror_flipped(&mut tensor, &flipped[k..k + 1]);
                tensor.shape.remove(0);
                own.push(Some(tensor));
            }
            // An item without the field (a clip without audio) gets zeros shaped like the
            // first item's that has it, as AI Toolkit's `zeros_like`.
            let zeros = (own.iter().flatten().next())
                .map(|t| (t.dtype, t.shape.clone(), t.data.as_slice().len()));
            let own = (own.into_iter())
                .map(|t| match (t, &zeros) {
                    (Some(t), _) => Some(t),
                    (None, Some((dtype, shape, len))) => {
                        let mut data = pool.take(*len);
                        data.as_mut_slice().fill(0);
                        Some(Tensor {
                            dtype,
                            shape: shape.clone(),
                            data,
                        })
                    }
                    (None, None) => None,
                })
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default();
            per_item_fields.insert(name.clone(), own);
            continue;
        }
        let mut tensor = stack(store, pool, ids, &rows, &positions, name, &shared.metrics)?;
        mirror_flipped(&mut tensor, &flipped);
        fields.insert(name.clone(), tensor);
    }
    let text = text::assemble(
        store,
        &shared.texts,
        &shared.recipes,
        pool,
        ids,
        &rows.iter().map(|r| r.dataset).collect::<Vec<_>>(),
        seed,
        epoch,
        shared.text_padding,
        &shared.metrics,
    )?;
    fields.extend(text.fields);
    let captions = text.captions.unwrap_or_else(|| {
        ids.iter()
            .zip(&rows)
            .map(|(&id, row)| {
                let recipe = &shared.recipes[row.dataset as usize];
                recipe.apply(
                    &row.caption,
                    CaptionContext {
                        seed,
                        epoch,
                        item: u64::from(id),
                    },
                )
            })
            .collect()
    });
    Ok(Batch {
        epoch,
        index,
        items: ids.to_vec(),
        keys: rows
            .iter()
            .map(|r| r.key.iter().map(|b| format!("{b:02x}")).collect())
            .collect(),
        flipped,
        bucket: first.bucket,
        fields,
        per_item_fields,
        captions,
        is_reg: rows.iter().map(|r| r.is_reg).collect(),
        network_weight: rows.iter().map(|r| r.network_weight).collect(),
        loss_multiplier: rows.iter().map(|r| r.loss_multiplier).collect(),
    })
}

/// Returns true if and only if an item that lacks `field` gets zeros in its place in the batch
/// (AI Toolkit's `zeros_like` for masks, controls, inpaint images and audio: a clip without a
/// track is silence, its `audio.sample_rate` 0; an item without a CLIP image is black, where
/// AI Toolkit's batch has zeros after its processor) rather than failing it.
fn zero_when_missing(field: &str) -> bool {
    matches!(
        field.split('.').next().unwrap_or(field),
        "mask" | "control" | "inpaint" | "audio" | CLIP_IMAGE
    )
}

/// Returns true if and only if a batch carries `field` as one tensor per item rather than
/// stacked: controls and CLIP images at their own size, whose sizes differ from item to item,
/// and clips' audio, whose length depends on each track's rate.
fn per_item(field: &str) -> bool {
    field.split('.').next() == Some(RAW_CONTROL) || field == "audio" || field == CLIP_IMAGE
}

/// Mirrors, left to right, the flipped items of a [B, C, H, W] or [B, F, C, H, W] u8 tensor (an
/// image or clip field: every image and frame of a flipped item is mirrored with it); other
/// tensors are left as they are.
fn mirror_flipped(tensor: &mut Tensor, flipped: &[bool]) {
    if !flipped.contains(&true) || tensor.dtype != "U8" || !(4..=5).contains(&tensor.shape.len()) {
        return;
    }
    let width = tensor.shape[tensor.shape.len() - 1];
    let item_bytes = tensor.shape[1..].iter().product::<usize>();
    for (k, _) in flipped.iter().enumerate().filter(|(_, f)| **f) {
        let item = &mut tensor.data.as_mut_slice()[k * item_bytes..(k + 1) * item_bytes];
        for row in item.chunks_exact_mut(width) {
            row.reverse();
        }
    }
}

/// The entries (by position) that assembling the batch of items `ids` reads: what a remote
/// store prefetches.
pub(super) fn batch_entries(shared: &Catalogued, ids: &[u32], epoch: u64, seed: u64) -> Vec<u32> {
    let columns = &shared.columns;
    let mut out: Vec<u32> = shared
        .fields
        .iter()
        .flat_map(|&f| ids.iter().map(move |&id| columns.entries[f][id as usize]))
        .filter(|&pos| pos != NO_ENTRY && pos != DANGLING)
        .collect();
    let datasets: Vec<u32> = ids
        .iter()
        .map(|&id| columns.items[id as usize].dataset)
        .collect();
    out.extend(text::entry_positions(
        &shared.texts,
        &shared.recipes,
        ids,
        &datasets,
        seed,
        epoch,
    ));
    out
}

/// Stacks one field of the items into a pooled buffer: raw entries are copied straight from the
/// memory map (of the shard, or of a remote store's cache); compressed ones are decompressed
/// into place; quantized ones decoded to f32.
fn stack(
    store: &Store,
    pool: &Arc<BufferPool>,
    ids: &[u32],
    rows: &[&ItemRow],
    positions: &[u32],
    field: &str,
    metrics: &LoaderMetrics,
) -> Result<Tensor> {
    let mut out: Option<Tensor> = None;
    for (k, (&pos, row)) in positions.iter().zip(rows).enumerate() {
        let in_item =
            |message: String| format!("item {} ({}) field {field}: {message}", ids[k], row.path);
        let with_item = |e: Error| match e {
            Error::Store { path, message } => Error::Store {
                path,
                message: in_item(message),
            },
            Error::Remote {
                url,
                message,
                source,
            } => Error::Remote {
                url,
                message: in_item(message),
                source,
            },
            e @ Error::CorruptShard { item: None, .. } => {
                e.in_item(format!("item {} ({}) field {field}", ids[k], row.path))
            }
            other => other,
        };
        if pos == NO_ENTRY {
            // Zeros, written once the first present item has given the slot its size.
            continue;
        }
        if pos == DANGLING {
            return Err(Error::Store {
                path: store.root().to_path_buf(),
                message: in_item(
                    "its entry is not in the catalog; run `larder prepare` again".into(),
                ),
            });
        }
        let entry = store.entry_at(pos)?;
        if let Some(dtype) = entry.codec.plain_dtype() {
            // Stored as the elements are: copied from the shard (or the remote cache) straight
            // into the batch.
            let started = Instant::now();
            let dst = slot(
                &mut out,
                pool,
                positions.len(),
                k,
                dtype,
                &entry.shape,
                entry.length,
            )
            .map_err(with_item)?;
            let hit = store.read_plain_into(entry, dst).map_err(with_item)?;
            metrics.record_read(entry.length, started.elapsed());
            if let Some(hit) = hit {
                metrics.record_cache(hit);
            }
            continue;
        }
        let (stored, entry) = store.stored_bytes_at(pos).map_err(with_item)?;
        let context = |e: Error| Error::Store {
            path: stored.origin().to_path_buf(),
            message: in_item(e.to_string()),
        };
        let decoding = Instant::now();
        let (dtype, bytes) = text::element_bytes(entry, &stored).map_err(context)?;
        metrics.record_read(stored.len() as u64, decoding.elapsed());
        if let Some(hit) = stored.cache_hit() {
            metrics.record_cache(hit);
        }
        slot(
            &mut out,
            pool,
            positions.len(),
            k,
            dtype,
            &entry.shape,
            bytes.len() as u64,
        )
        .map_err(context)?
        .copy_from_slice(&bytes);
    }
    let mut out = out.ok_or_else(|| Error::InvalidArgument {
        name: "batch",
        message: "empty batch".into(),
    })?;
    // Pooled buffers hold old bytes: the slots of items without the field are zeroed here.
    let item_bytes = out.data.as_slice().len() / positions.len().max(1);
    for (k, _) in positions
        .iter()
        .enumerate()
        .filter(|(_, p)| **p == NO_ENTRY)
    {
        out.data.as_mut_slice()[k * item_bytes..(k + 1) * item_bytes].fill(0);
    }
    Ok(out)
}

/// Item `k`'s part of the stacked tensor of `count` items, allocated from the pool by the first
/// item; an item whose dtype, shape or size differs from the first's is an error.
fn slot<'t>(
    out: &'t mut Option<Tensor>,
    pool: &Arc<BufferPool>,
    count: usize,
    k: usize,
    dtype: &'static str,
    shape: &[usize],
    bytes: u64,
) -> Result<&'t mut [u8]> {
    let item_bytes = bytes as usize;
    let tensor = out.get_or_insert_with(|| {
        let mut full = vec![count];
        full.extend_from_slice(shape);
        Tensor {
            dtype,
            shape: full,
            data: pool.take(item_bytes * count),
        }
    });
    if tensor.data.as_slice().len() != item_bytes * count
        || tensor.dtype != dtype
        || tensor.shape[1..] != shape[..]
    {
        return Err(Error::InvalidArgument {
            name: "field",
            message: format!(
                "shape {shape:?} {dtype} differs from the batch's {:?} {}",
                &tensor.shape[1..],
                tensor.dtype
            ),
        });
    }
    Ok(&mut tensor.data.as_mut_slice()[k * item_bytes..(k + 1) * item_bytes])
}
