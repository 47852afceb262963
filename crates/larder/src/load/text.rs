//! Text embeddings in batches: the caption variant each item gets this epoch, padded to the
//! batch's longest caption, with an attention mask.
//!
//! Each item has precomputed caption variants per text encoder (see docs/encoders.md). Per
//! (seed, epoch, item), the loader draws caption dropout exactly as the caption transforms do
//! (so an item drops its caption in the same epochs with or without embeddings) and then one
//! variant; a dropped caption gets the embedding of its dataset's dropout caption (the empty
//! caption, or the trigger word alone).

use std::sync::Arc;

use super::batch::{BufferPool, Tensor};
use crate::caption::CaptionRecipe;
use crate::metrics::LoaderMetrics;
use crate::rng::{Purpose, Stream};
use crate::store::codec::{self, Repr};
use crate::store::{Store, TextTable};
use crate::{Error, Result};

/// Which side of a token sequence padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Real tokens first, then padding (most text encoders: CLIP, T5).
    #[default]
    Right,
    /// Padding first, then the real tokens (decoder-only text encoders such as Qwen or Llama
    /// often expect this).
    Left,
}

/// The text fields of a batch, and the caption each item got.
pub(super) struct TextBatch {
    /// `<encoder>.<output>` and `<encoder>.mask` tensors.
    pub fields: Vec<(String, Tensor)>,
    /// The caption behind each item's embedding (that of the first text encoder).
    pub captions: Option<Vec<String>>,
}

/// Returns true if and only if some of the items `ids` have no caption in `table`.
fn lacks(table: &TextTable, ids: &[u32]) -> bool {
    ids.iter()
        .any(|&id| table.offsets[id as usize] == table.offsets[id as usize + 1])
}

/// The caption (an index into `table.captions`) each of the items `ids` gets in `epoch`.
fn picks(
    table: &TextTable,
    recipes: &[CaptionRecipe],
    ids: &[u32],
    datasets: &[u32],
    seed: u64,
    epoch: u64,
) -> Result<Vec<u32>> {
    ids.iter()
        .zip(datasets)
        .map(|(&id, &dataset)| {
            let item = u64::from(id);
            let recipe = &recipes[dataset as usize];
            if recipe.drops(crate::CaptionContext { seed, epoch, item }) {
                let dropped = table.dropped.get(dataset as usize).copied().flatten();
                return dropped.ok_or_else(|| Error::InvalidArgument {
                    name: "caption_dropout_rate",
                    message: format!(
                        "item {id} drops its caption, but the store has no {:?} embedding of its dropout caption {:?} (imported caches have none, and stores prepared before the dataset dropped captions): run prepare with the text encoder to add it",
                        table.field,
                        recipe.dropout_caption()
                    ),
                });
            }
            let (a, b) = (
                table.offsets[id as usize] as usize,
                table.offsets[id as usize + 1] as usize,
            );
            let v = Stream::new(Purpose::CaptionVariant, &[seed, epoch, item]).below((b - a) as u64)
                as usize;
            Ok(table.variants[a + v])
        })
        .collect()
}

/// The entries (by position) whose text embeddings [`assemble`] reads for the items `ids`: what
/// a remote store prefetches.
pub(super) fn entry_positions(
    tables: &[TextTable],
    recipes: &[CaptionRecipe],
    ids: &[u32],
    datasets: &[u32],
    seed: u64,
    epoch: u64,
) -> Vec<u32> {
    let mut out = Vec::new();
    for table in tables {
        if lacks(table, ids) {
            continue;
        }
        // A batch that cannot pick (no dropout caption) fails when assembled and says why.
        let Ok(picks) = picks(table, recipes, ids, datasets, seed, epoch) else {
            continue;
        };
        for c in picks {
            out.extend_from_slice(&table.captions[c as usize].1);
        }
    }
    out
}

/// Assembles every text field of the items `ids` (of datasets `datasets`).
#[allow(clippy::too_many_arguments)]
pub(super) fn assemble(
    store: &Store,
    tables: &[TextTable],
    recipes: &[CaptionRecipe],
    pool: &Arc<BufferPool>,
    ids: &[u32],
    datasets: &[u32],
    seed: u64,
    epoch: u64,
    padding: Padding,
    metrics: &LoaderMetrics,
) -> Result<TextBatch> {
    let mut fields = Vec::new();
    let mut captions = None;
    for table in tables {
        // A field that some items lack is left out of the batch, as item fields are.
        if lacks(table, ids) {
            continue;
        }
        let picks = picks(table, recipes, ids, datasets, seed, epoch)?;
        if captions.is_none() {
            captions = Some(
                picks
                    .iter()
                    .map(|&c| table.captions[c as usize].0.clone())
                    .collect(),
            );
        }
        let mut mask: Option<Tensor> = None;
        for (o, (output, sequence)) in table.outputs.iter().enumerate() {
            let positions: Vec<u32> = picks
                .iter()
                .map(|&c| table.captions[c as usize].1[o])
                .collect();
            let name = format!("{}.{output}", table.field);
            let (tensor, lengths) =
                pad_stack(store, pool, &positions, *sequence, padding, &name, metrics)?;
            if let (Some(lengths), None) = (lengths, &mask) {
                mask = Some(attention_mask(pool, &lengths, tensor.shape[1], padding));
            }
            fields.push((name, tensor));
        }
        if let Some(mask) = mask {
            fields.push((format!("{}.mask", table.field), mask));
        }
    }
    Ok(TextBatch { fields, captions })
}

/// A `[B, L]` mask, 1 for real tokens.
fn attention_mask(
    pool: &Arc<BufferPool>,
    lengths: &[usize],
    width: usize,
    padding: Padding,
) -> Tensor {
    let mut data = pool.take(lengths.len() * width);
    for (row, &len) in data.as_mut_slice().chunks_mut(width.max(1)).zip(lengths) {
        row.fill(0);
        match padding {
            Padding::Right => row[..len].fill(1),
            Padding::Left => row[width - len..].fill(1),
        }
    }
    Tensor {
        dtype: "BOOL",
        shape: vec![lengths.len(), width],
        data,
    }
}

/// Stacks one output of the picked captions; sequences are padded with zeros to the longest.
/// Returns the tensor and, for sequences, each item's length.
fn pad_stack(
    store: &Store,
    pool: &Arc<BufferPool>,
    positions: &[u32],
    sequence: bool,
    padding: Padding,
    name: &str,
    metrics: &LoaderMetrics,
) -> Result<(Tensor, Option<Vec<usize>>)> {
    let mut parts = Vec::with_capacity(positions.len());
    for &pos in positions {
        let (stored, entry) = store
            .stored_bytes_at(pos)
            .map_err(|e| e.in_item(format!("text embedding {name}")))?;
        let context = |e: Error| Error::Store {
            path: stored.origin().to_path_buf(),
            message: format!("{name}: {e}"),
        };
        let decoding = std::time::Instant::now();
        let (dtype, bytes) = element_bytes(entry, &stored).map_err(context)?;
        metrics.record_read(stored.len() as u64, decoding.elapsed());
        if let Some(hit) = stored.cache_hit() {
            metrics.record_cache(hit);
        }
        parts.push((dtype, bytes.into_owned(), entry.shape.clone()));
    }
    let (dtype, _, first_shape) = parts.first().ok_or_else(|| Error::InvalidArgument {
        name: "batch",
        message: "empty batch".into(),
    })?;
    let dtype = *dtype;
    let size = match dtype {
        "F32" => 4,
        _ => 2,
    };
    // Every part must agree on everything but a sequence's length.
    let rest: &[usize] = if sequence && !first_shape.is_empty() {
        &first_shape[1..]
    } else {
        first_shape
    };
    let lengths: Vec<usize> = parts
        .iter()
        .map(|(_, _, s)| {
            if sequence {
                s.first().copied().unwrap_or(0)
            } else {
                1
            }
        })
        .collect();
    for (d, _, s) in &parts {
        let tail = if sequence && !s.is_empty() {
            &s[1..]
        } else {
            &s[..]
        };
        if *d != dtype || tail != rest {
            return Err(Error::InvalidArgument {
                name: "field",
                message: format!(
                    "{name}: shapes {:?} {d} and {first_shape:?} {dtype} cannot share a batch",
                    s
                ),
            });
        }
    }
    let row = rest.iter().product::<usize>() * size;
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let per_item = if sequence { longest * row } else { row };
    let mut data = pool.take(per_item * parts.len());
    let out = data.as_mut_slice();
    out.fill(0);
    for (k, (_, bytes, _)) in parts.iter().enumerate() {
        let start = match (sequence, padding) {
            (true, Padding::Left) => (longest - lengths[k]) * row,
            _ => 0,
        };
        out[k * per_item + start..][..bytes.len()].copy_from_slice(bytes);
    }
    let mut shape = vec![parts.len()];
    if sequence {
        shape.push(longest);
    }
    shape.extend_from_slice(rest);
    let tensor = Tensor { dtype, shape, data };
    Ok((tensor, sequence.then_some(lengths)))
}

/// An entry's element bytes as the loader serves them: f32, f16 and bf16 as stored
/// (decompressed when compressed), fp8 and int8 decoded to f32.
pub(super) fn element_bytes<'m>(
    entry: &crate::store::EntryRow,
    stored: &'m [u8],
) -> Result<(&'static str, std::borrow::Cow<'m, [u8]>)> {
    let codec = entry.codec;
    let elements = codec::decompress(codec, stored, entry.raw_len as usize)?;
    Ok(match codec.repr {
        Repr::Fp8E4M3 | Repr::Fp8E5M2 | Repr::Int8 => {
            let values =
                codec::decode_f32(codec, &elements, &entry.shape, &entry.scale, &entry.bias)?;
            (
                "F32",
                values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
            )
        }
        _ => (codec.element_dtype(), elements),
    })
}
