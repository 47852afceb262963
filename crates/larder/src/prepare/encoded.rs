//! Image encoders in prepare: latents and CLIP image embeddings, in batches of one bucket.
//!
//! This thread decodes, resizes and crops the next batch on all cores while a second thread
//! runs the encoder on the previous one, so the model never waits for pixels it could have
//! had. The encoder thread converts each output to the field's codec and hands it to the
//! shard writer. An encoder error ends the phase with the field and the batch's first item
//! named; what the writer already received is committed.

use crossbeam_channel::Sender;
use rayon::prelude::*;

use super::{ItemPlan, PrepareOptions, Produced, decode_placed, stored_entry};
use crate::encode::{
    ClipPreprocess, EncodedTensor, ImageEncoder, PixelBatch, PixelFormat, PixelValues, signed_unit,
};
use crate::image::Convert;
use crate::scan::{Finding, FindingKind};
use crate::store::codec::Values;
use crate::{Error, Result};

/// Which preprocessing an image encoder's input gets.
#[derive(Debug, Clone, Copy)]
pub(super) enum Input {
    /// The item's bucket crop, as the encoder's [`PixelFormat`] asks.
    Bucket(PixelFormat),
    /// The whole source image, CLIP-preprocessed.
    Clip(ClipPreprocess),
}

/// One entry to compute: an item and the entry's key.
pub(super) type Job<'p, 'a> = (&'p ItemPlan<'a>, String);

/// A decoded batch on its way to the encoder.
struct Decoded<'p, 'a> {
    jobs: Vec<&'p Job<'p, 'a>>,
    shape: [usize; 4],
    values: Pixels,
}

enum Pixels {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

/// Encodes `jobs` (sorted so that items of one bucket are adjacent) with `encoder` into the
/// field `field`, sending entries and findings to the writer through `tx`.
pub(super) fn encode_images(
    tx: &Sender<Vec<Vec<Produced>>>,
    encoder: &mut dyn ImageEncoder,
    field: &str,
    input: Input,
    jobs: &[Job<'_, '_>],
    options: &PrepareOptions,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let batch_size = options.encode_batch_size.max(1);
    // Batches never span two buckets: the encoder gets one N×3×H×W array.
    let mut batches: Vec<&[Job<'_, '_>]> = Vec::new();
    let mut start = 0;
    for i in 1..=jobs.len() {
        let split = i == jobs.len()
            || i - start == batch_size
            || (matches!(input, Input::Bucket(_))
                && jobs[i].0.planned.placement.bucket != jobs[start].0.planned.placement.bucket);
        if split {
            batches.push(&jobs[start..i]);
            start = i;
        }
    }
    let codec = options.latent_codec;
    let (btx, brx) = crossbeam_channel::bounded::<Decoded<'_, '_>>(1);
    std::thread::scope(|s| {
        let worker = s.spawn(move || -> Result<()> {
            for batch in brx {
                let n = batch.jobs.len();
                let values = match &batch.values {
                    Pixels::F32(v) => PixelValues::F32(v),
                    Pixels::U8(v) => PixelValues::U8(v),
                };
                let first = batch.jobs[0].0.image.path.display().to_string();
                let named = |message: String| Error::Encoder {
                    field: field.to_owned(),
                    item: if n > 1 {
                        format!("{first} (and {} more in its batch)", n - 1)
                    } else {
                        first.clone()
                    },
                    message,
                };
                let out: EncodedTensor = encoder
                    .encode(PixelBatch {
                        shape: batch.shape,
                        values,
                    })
                    .map_err(|e| named(e.to_string()))?;
                let item_shape = out.item_shape(n).map_err(named)?.to_vec();
                let mut group = Vec::with_capacity(n);
                for (k, (item, key)) in batch.jobs.iter().map(|j| (j.0, &j.1)).enumerate() {
                    let name = match input {
                        Input::Bucket(_) => format!("{}/{field}", item.item_key),
                        Input::Clip(_) => format!("{key}/{field}"),
                    };
                    let entry = stored_entry(
                        key,
                        name,
                        codec,
                        Values::F32(out.item(k, n)),
                        item_shape.clone(),
                    )
                    .map_err(|e| named(e.to_string()))?;
                    group.push(vec![entry]);
                }
                if tx.send(group).is_err() {
                    break;
                }
            }
            Ok(())
        });
        for batch in batches {
            let decoded = decode_batch(tx, batch, input)?;
            bar.inc(batch.len() as u64);
            // The worker stopped (its encoder failed): its error is the one to report.
            if let Some(decoded) = decoded
                && btx.send(decoded).is_err()
            {
                break;
            }
        }
        drop(btx);
        worker.join().unwrap_or_else(|_| {
            Err(Error::Encoder {
                field: field.to_owned(),
                item: String::new(),
                message: "the encoder thread panicked".into(),
            })
        })
    })
}

/// Decodes and places a batch on all cores. Items that fail to decode become findings (sent
/// to the writer) and leave the batch; `None` when none is left.
fn decode_batch<'p, 'a>(
    tx: &Sender<Vec<Vec<Produced>>>,
    batch: &'p [Job<'p, 'a>],
    input: Input,
) -> Result<Option<Decoded<'p, 'a>>> {
    let decoded: Vec<Result<Vec<u8>>> = batch
        .par_iter()
        .map(|(item, _)| {
            let placement = match input {
                Input::Bucket(_) => item.planned.placement,
                Input::Clip(clip) => {
                    // The scan's sizes are as displayed, which is what decoding yields.
                    clip.placement(item.image.width, item.image.height)
                }
            };
            decode_placed(
                &item.image.path,
                Convert::Rgb,
                &placement,
                item.planned.flip,
            )
            .map(|(_, data)| data)
        })
        .collect();
    let mut jobs = Vec::with_capacity(batch.len());
    let mut failed = Vec::new();
    let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(batch.len());
    for (job, result) in batch.iter().zip(decoded) {
        match result {
            Ok(data) => {
                jobs.push(job);
                bytes.push(data);
            }
            Err(e) => failed.push(vec![Produced::Failed {
                key: job.1.clone(),
                finding: Finding::new(
                    job.0.planned.dataset,
                    FindingKind::Corrupt,
                    &job.0.image.path,
                    format!("cannot decode for encoding: {e}"),
                ),
            }]),
        }
    }
    if !failed.is_empty() && tx.send(failed).is_err() {
        return Ok(None);
    }
    let Some(first) = jobs.first() else {
        return Ok(None);
    };
    let (h, w) = match input {
        Input::Bucket(_) => {
            let b = first.0.planned.placement.bucket;
            (b.height as usize, b.width as usize)
        }
        Input::Clip(clip) => (clip.size as usize, clip.size as usize),
    };
    let shape = [jobs.len(), 3, h, w];
    let values = match input {
        Input::Bucket(PixelFormat::U8) => Pixels::U8(bytes.concat()),
        Input::Bucket(PixelFormat::SignedUnit) => {
            let mut v = Vec::with_capacity(shape.iter().product());
            for b in &bytes {
                signed_unit(b, &mut v);
            }
            Pixels::F32(v)
        }
        Input::Clip(clip) => {
            let mut v = Vec::with_capacity(shape.iter().product());
            for b in &bytes {
                clip.normalize(b, &mut v);
            }
            Pixels::F32(v)
        }
    };
    Ok(Some(Decoded {
        jobs,
        shape,
        values,
    }))
}

/// The key of a CLIP entry: the source content, the flip, the preprocessing and the encoder.
/// Not the bucket: CLIP sees the whole image, so every resolution of it shares one entry.
pub(super) fn clip_key(
    content_hash: &str,
    flip: crate::plan::Flip,
    clip: &ClipPreprocess,
    field: &str,
    identity: &str,
    codec: &str,
) -> String {
    crate::store::key::KeyBuilder::new("larder/clip/v1")
        .text(content_hash)
        .text(super::flip_name(flip))
        .text(&clip.key_text())
        .text(field)
        .text(identity)
        .text(codec)
        .text(crate::image::PIPELINE)
        .finish()
}
