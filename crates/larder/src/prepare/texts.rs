//! Text encoders in prepare: one entry per distinct caption, with the variants training needs.
//!
//! With cached text embeddings AI Toolkit serves a cached blank embedding at the caption-dropout
//! rate, but turns token dropout off and shuffles tokens once, when the cache is written,
//! because a cache of one embedding per item cannot change per step. larder keeps all three by
//! precomputing what the loader may pick: for every item, `caption_variants`
//! transformed captions when its dataset's caption transforms are random (one otherwise), plus
//! once per encoder the empty caption and each dataset's dropout caption (its trigger word,
//! as AI Toolkit caches it). Each distinct string is encoded and
//! stored once, however many items use it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crossbeam_channel::Sender;

use super::{ItemPlan, PrepareOptions, Produced, stored_entry};
use crate::caption::{CaptionContext, CaptionRecipe};
use crate::config::Config;
use crate::encode::{EncodedTensor, TextEncoder};
use crate::store::captions::caption_key;
use crate::store::codec::Values;
use crate::store::key::KeyBuilder;
use crate::{Error, Result};

/// The output names that carry an attention mask.
const MASK_NAMES: [&str; 2] = ["mask", "attention_mask"];

/// What one text encoder returns, as recorded in the catalog so the loader can pad it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TextOutputs {
    /// Stored outputs (the mask is not stored: a stored sequence's length is its mask).
    pub outputs: Vec<String>,
    /// The outputs that are token sequences (L×…), padded by the loader.
    pub sequences: Vec<String>,
    /// Whether the encoder returned an attention mask (its sequences are stored unpadded).
    pub masked: bool,
}

/// A distinct input of a text encoder: a caption, with the control images it is encoded with
/// (none but for encoders that take controls, for the items that have them).
#[derive(Debug)]
pub(super) struct Caption {
    /// The key of its entries.
    pub key: String,
    pub text: String,
    /// Control image files, in control order.
    pub controls: Vec<PathBuf>,
}

/// The captions of one text encoder.
#[derive(Debug)]
pub(super) struct EncoderTexts {
    pub field: String,
    /// Distinct captions; a caption's index is its id.
    pub captions: Vec<Caption>,
    /// Per item (in the order of the items given to [`plan_texts`]), its variants' caption ids.
    pub variants: Vec<Vec<u32>>,
}

/// The meta key under which a text encoder's outputs are remembered between runs.
pub(super) fn outputs_meta_key(field: &str, identity: &str, codec: &str) -> String {
    format!(
        "text_outputs/{}",
        KeyBuilder::new("larder/text-outputs/v1")
            .text(field)
            .text(identity)
            .text(codec)
            .finish()
    )
}

/// The caption variants of every item for the encoder `field`; with `controls` (an encoder that
/// takes control images), an item's variants are encoded with its controls, and keyed by them.
pub(super) fn plan_texts(
    config: &Config,
    items: &[&ItemPlan<'_>],
    field: &str,
    identity: &str,
    controls: bool,
    options: &PrepareOptions,
) -> EncoderTexts {
    let codec = options.text_codec.name();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut captions: Vec<Caption> = Vec::new();
    let mut id_of = |text: String, with: &[(PathBuf, String)]| -> u32 {
        let hashes: Vec<&str> = with.iter().map(|(_, h)| h.as_str()).collect();
        let key = caption_key(field, identity, &codec, &text, &hashes);
        if let Some(&id) = ids.get(&key) {
            return id;
        }
        let id = captions.len() as u32;
        captions.push(Caption {
            key: key.clone(),
            text,
            controls: with.iter().map(|(p, _)| p.clone()).collect(),
        });
        ids.insert(key, id);
        id
    };
    // The empty caption comes first: the unconditional embedding.
    id_of(String::new(), &[]);
    // Dropout is the loader's choice between an item's variants and the dataset's dropout
    // caption, which is encoded once here, as text alone (AI Toolkit encodes its dropout
    // embeddings without control images too).
    for dataset in &config.datasets {
        if dataset.caption_dropout_rate > 0.0 {
            id_of(CaptionRecipe::from_dataset(dataset).dropout_caption(), &[]);
        }
    }
    let recipes: Vec<CaptionRecipe> = config
        .datasets
        .iter()
        .map(|d| CaptionRecipe {
            caption_dropout_rate: 0.0,
            ..CaptionRecipe::from_dataset(d)
        })
        .collect();
    let k = options.caption_variants.max(1) as u64;
    // The variants are drawn from the dataset's `seed` (as its random crops are), with the
    // variant's index as the epoch: a prepare is reproducible, and a changed seed draws new
    // variants. The training seed then picks among them per epoch.
    let variants = items
        .iter()
        .map(|item| {
            let recipe = &recipes[item.planned.dataset];
            let seed = config.datasets[item.planned.dataset].seed;
            let count = if recipe.is_random() { k } else { 1 };
            // Repeats of one image cut alike share their variants, as they share their latents.
            let stable = u64::from_str_radix(&item.item_key[..16], 16).unwrap_or(0);
            let with = if controls { &item.controls[..] } else { &[] };
            (0..count)
                .map(|v| {
                    let context = CaptionContext {
                        seed,
                        epoch: v,
                        item: stable,
                    };
                    id_of(recipe.apply(&item.image.caption, context), with)
                })
                .collect()
        })
        .collect();
    EncoderTexts {
        field: field.to_owned(),
        captions,
        variants,
    }
}

/// Encodes the captions of `texts` not yet stored (`stored` holds entry keys), sending their
/// entries to the writer. Returns the encoder's outputs (as found now, or as `known` from an
/// earlier run when nothing needed encoding) and the number of captions encoded.
pub(super) fn encode_texts(
    tx: &Sender<Vec<Vec<Produced>>>,
    encoder: &mut dyn TextEncoder,
    texts: &EncoderTexts,
    stored: &HashSet<String>,
    known: Option<TextOutputs>,
    options: &PrepareOptions,
    bar: &indicatif::ProgressBar,
) -> Result<(Option<TextOutputs>, usize)> {
    let done: HashSet<&str> = stored
        .iter()
        .filter_map(|k| k.split_once('.').map(|(c, _)| c))
        .collect();
    let todo: Vec<&Caption> = texts
        .captions
        .iter()
        .filter(|c| !done.contains(c.key.as_str()))
        .collect();
    let mut outputs = known;
    // Every caption is stored but what the encoder returns is not recorded (a run that failed
    // before recording it): one call on one caption says, and nothing is stored again. The
    // first caption is the empty one, without controls.
    if outputs.is_none()
        && todo.is_empty()
        && let Some(Caption { text, .. }) = texts.captions.first()
    {
        let named = |message: String| Error::Encoder {
            field: texts.field.clone(),
            item: format!("caption {text:?}"),
            message,
        };
        let out = encoder
            .encode(&[text.as_str()])
            .map_err(|e| named(e.to_string()))?;
        outputs = Some(split_outputs(out, 1).map_err(named)?.outputs);
    }
    let mut encoded = 0;
    // Captions with controls and those without are encoded in batches of their own kind.
    let (plain, controlled): (Vec<&Caption>, Vec<&Caption>) =
        todo.into_iter().partition(|c| c.controls.is_empty());
    let size = options.encode_batch_size.max(1);
    for batch in plain.chunks(size).chain(controlled.chunks(size)) {
        let strings: Vec<&str> = batch.iter().map(|c| c.text.as_str()).collect();
        let named = |message: String| Error::Encoder {
            field: texts.field.clone(),
            item: match batch[0].controls.first() {
                Some(control) => format!(
                    "caption {:?} with control {}",
                    batch[0].text,
                    control.display()
                ),
                None => format!("caption {:?}", batch[0].text),
            },
            message,
        };
        let out = if batch[0].controls.is_empty() {
            encoder.encode(&strings)
        } else {
            let controls: Vec<&[PathBuf]> = batch.iter().map(|c| &c.controls[..]).collect();
            encoder.encode_with_controls(&strings, &controls)
        };
        let out = out.map_err(|e| named(e.to_string()))?;
        let split = split_outputs(out, batch.len()).map_err(named)?;
        match &outputs {
            Some(o) if o.outputs != split.outputs.outputs || o.masked != split.outputs.masked => {
                return Err(named(format!(
                    "returned outputs {:?} (mask: {}), earlier batches or runs returned {:?} (mask: {}); an encoder must return the same outputs for every batch",
                    split.outputs.outputs, split.outputs.masked, o.outputs, o.masked
                )));
            }
            _ => outputs = Some(split.outputs.clone()),
        }
        let mut groups = Vec::with_capacity(batch.len());
        for (k, Caption { key, .. }) in batch.iter().enumerate() {
            let mut group = Vec::new();
            for (name, shape, values) in &split.items[k] {
                group.push(
                    stored_entry(
                        &format!("{key}.{name}"),
                        format!("{key}/{}.{name}", texts.field),
                        options.text_codec,
                        Values::F32(values),
                        shape.clone(),
                    )
                    .map_err(|e| named(e.to_string()))?,
                );
            }
            groups.push(group);
        }
        bar.inc(batch.len() as u64);
        encoded += batch.len();
        if tx.send(groups).is_err() {
            break;
        }
    }
    Ok((outputs, encoded))
}

/// One output of one caption: (output name, shape, values).
type CaptionOutput = (String, Vec<usize>, Vec<f32>);

/// A batch's outputs cut per caption.
pub(super) struct Split {
    pub outputs: TextOutputs,
    /// Per caption: (output, shape, values).
    pub items: Vec<Vec<CaptionOutput>>,
}

/// Cuts a text encoder's batch output into captions, removing padding where a mask says what
/// is padding.
pub(super) fn split_outputs(
    mut out: Vec<(String, EncodedTensor)>,
    n: usize,
) -> std::result::Result<Split, String> {
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let mask_at = out
        .iter()
        .position(|(name, _)| MASK_NAMES.contains(&name.as_str()));
    let mask = mask_at.map(|i| out.remove(i).1);
    if out.is_empty() {
        return Err("returned no tensor besides a mask".into());
    }
    let mask_len = match &mask {
        Some(m) => match m.item_shape(n)? {
            [l] => Some(*l),
            other => return Err(format!("the mask's item shape {other:?} is not [L]")),
        },
        None => None,
    };
    let mut outputs = TextOutputs {
        outputs: Vec::new(),
        sequences: Vec::new(),
        masked: mask.is_some(),
    };
    let mut items: Vec<Vec<CaptionOutput>> = vec![Vec::new(); n];
    for (name, tensor) in &out {
        if name.is_empty() || name.contains(['.', '/']) {
            return Err(format!("output name {name:?} is empty or holds '.' or '/'"));
        }
        let item_shape = tensor.item_shape(n).map_err(|e| format!("{name}: {e}"))?;
        let is_sequence = item_shape.len() >= 2 && mask_len.is_none_or(|l| item_shape[0] == l);
        outputs.outputs.push(name.clone());
        if is_sequence {
            outputs.sequences.push(name.clone());
        }
        let row = item_shape[1..].iter().product::<usize>();
        for (k, slot) in items.iter_mut().enumerate() {
            let values = tensor.item(k, n);
            let (shape, kept) = match (&mask, is_sequence) {
                (Some(m), true) => {
                    let keep: Vec<usize> = m
                        .item(k, n)
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| **v != 0.0)
                        .map(|(j, _)| j)
                        .collect();
                    let mut shape = item_shape.to_vec();
                    shape[0] = keep.len();
                    let kept = keep
                        .iter()
                        .flat_map(|&j| values[j * row..(j + 1) * row].iter().copied())
                        .collect();
                    (shape, kept)
                }
                _ => (item_shape.to_vec(), values.to_vec()),
            };
            slot.push((name.clone(), shape, kept));
        }
    }
    Ok(Split { outputs, items })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: Vec<usize>) -> EncodedTensor {
        let n = shape.iter().product::<usize>();
        EncodedTensor {
            shape,
            values: (0..n).map(|i| i as f32 + 1.0).collect(),
        }
    }

    #[test]
    fn masked_sequences_are_stored_without_their_padding() {
        let mask = EncodedTensor {
            shape: vec![2, 3],
            values: vec![1.0, 1.0, 0.0, 1.0, 0.0, 0.0],
        };
        let split = split_outputs(
            vec![
                ("embeds".into(), tensor(vec![2, 3, 2])),
                ("pooled".into(), tensor(vec![2, 4])),
                ("attention_mask".into(), mask),
            ],
            2,
        )
        .expect("split");
        assert_eq!(split.outputs.outputs, ["embeds", "pooled"]);
        assert_eq!(split.outputs.sequences, ["embeds"]);
        assert!(split.outputs.masked);
        assert_eq!(split.items[0][0].1, [2, 2]);
        assert_eq!(split.items[0][0].2, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(split.items[1][0].1, [1, 2]);
        assert_eq!(split.items[1][0].2, [7.0, 8.0]);
        assert_eq!(split.items[1][1].2, [5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn a_wrong_batch_dimension_is_an_error() {
        let err = split_outputs(vec![("embeds".into(), tensor(vec![3, 4, 2]))], 2)
            .err()
            .expect("error");
        assert!(err.contains("embeds"), "{err}");
    }
}
