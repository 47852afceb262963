//! Image encoders in prepare: latents and CLIP image embeddings, in batches of one bucket.
//!
//! This thread decodes, resizes and crops the next batch on all cores while a second thread
//! runs the encoder on the previous one, so the model never waits for pixels it could have
//! had. The encoder thread converts each output to the field's codec and hands it to the
//! shard writer. An encoder error ends the phase with the field and the batch's first item
//! named; what the writer already received is committed.

use crossbeam_channel::Sender;
use rayon::prelude::*;

use super::writer::guarded;
use super::{ItemPlan, PrepareOptions, Produced, decode_pixels, stored_entry};
use crate::encode::{
    ClipPreprocess, EncodedTensor, ImageEncoder, PixelBatch, PixelFormat, PixelValues, Squaring,
    signed_unit, squared_reference, squared_reference_chw,
};
use crate::plan::{Flip, Placement};
use crate::scan::{Finding, FindingKind};
use crate::store::codec::Values;
use crate::{Error, Result};

/// Which preprocessing an image encoder's input gets.
#[derive(Debug, Clone, Copy)]
pub(super) enum Input {
    /// The item's bucket crop, as the encoder's [`PixelFormat`] asks: all of a clip's frames,
    /// or with `first_frame` only the first (a clip's `do_i2v` latents).
    Bucket {
        format: PixelFormat,
        first_frame: bool,
    },
    /// The image CLIP sees (the whole source image, or the dataset's CLIP image squared),
    /// CLIP-preprocessed; with `None`, u8 at its own size for an encoder that preprocesses
    /// itself (its pixel format is u8), one per batch.
    Clip(Option<ClipPreprocess>),
}

/// One entry to compute: an item and the entry's key.
pub(super) type Job<'p, 'a> = (&'p ItemPlan<'a>, String);

/// A decoded batch on its way to the encoder.
struct Decoded<'p, 'a> {
    jobs: Vec<&'p Job<'p, 'a>>,
    batch: PixelBatch,
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
    // Images at their own size cannot share a batch.
    let batch_size = match input {
        Input::Clip(None) => 1,
        _ => options.encode_batch_size.max(1),
    };
    // Batches never span two buckets (nor clips of different lengths): the encoder gets one
    // N×3×H×W array, or N×F×3×H×W for clips.
    let mut batches: Vec<&[Job<'_, '_>]> = Vec::new();
    let mut start = 0;
    for i in 1..=jobs.len() {
        let split = i == jobs.len()
            || i - start == batch_size
            || (matches!(input, Input::Bucket { .. })
                && (jobs[i].0.planned.placement.bucket != jobs[start].0.planned.placement.bucket
                    || frame_count(jobs[i].0) != frame_count(jobs[start].0)));
        if split {
            batches.push(&jobs[start..i]);
            start = i;
        }
    }
    let codec = options.latent_codec;
    let (btx, brx) = crossbeam_channel::bounded::<Decoded<'_, '_>>(1);
    std::thread::scope(|s| {
        let worker = s.spawn(move || -> Result<()> {
            for Decoded { jobs, batch } in brx {
                let n = jobs.len();
                let first = jobs[0].0.image.path.display().to_string();
                let named = |message: String| Error::Encoder {
                    field: field.to_owned(),
                    item: if n > 1 {
                        format!("{first} (and {} more in its batch)", n - 1)
                    } else {
                        first.clone()
                    },
                    message,
                };
                let out: EncodedTensor = encoder.encode(batch).map_err(|e| named(e.to_string()))?;
                let item_shape = out.item_shape(n).map_err(named)?.to_vec();
                let mut group = Vec::with_capacity(n);
                for (k, (item, key)) in jobs.iter().map(|j| (j.0, &j.1)).enumerate() {
                    let name = match input {
                        Input::Bucket { .. } => format!("{}/{field}", item.item_key),
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

/// Decodes and places a batch on all cores, each image converted straight into its slot of
/// the batch buffer. Items that fail to decode become findings (sent to the writer) and leave
/// the batch; `None` when none is left.
fn decode_batch<'p, 'a>(
    tx: &Sender<Vec<Vec<Produced>>>,
    batch: &'p [Job<'p, 'a>],
    input: Input,
) -> Result<Option<Decoded<'p, 'a>>> {
    let Some(first) = batch.first() else {
        return Ok(None);
    };
    let (h, w) = match input {
        Input::Bucket { .. } => {
            let b = first.0.planned.placement.bucket;
            (b.height as usize, b.width as usize)
        }
        Input::Clip(Some(clip)) => (clip.size as usize, clip.size as usize),
        Input::Clip(None) => {
            // A batch of one (see `encode_images`), at the image's own size.
            return match clip_image(first.0, None) {
                Ok((h, w, data)) => Ok(Some(Decoded {
                    jobs: vec![first],
                    batch: PixelBatch {
                        shape: vec![1, 3, h, w],
                        values: PixelValues::U8(data),
                    },
                })),
                Err(e) => {
                    // A closed channel means the writer stopped: its error is the one reported.
                    let _ = tx.send(vec![vec![failure(first, &e)]]);
                    Ok(None)
                }
            };
        }
    };
    // CLIP and first-frame latents see one image: a clip's first frame chosen.
    let frames = match input {
        Input::Bucket {
            first_frame: false, ..
        } => frame_count(first.0),
        Input::Bucket { .. } | Input::Clip(_) => None,
    };
    let per = frames.unwrap_or(1) * 3 * h * w;
    let decode = |item: &ItemPlan<'_>| -> Result<Vec<u8>> {
        let data = match input {
            Input::Bucket { first_frame, .. } => {
                decode_pixels(item, &item.planned.placement, first_frame)?.1
            }
            Input::Clip(clip) => clip_image(item, clip)?.2,
        };
        if data.len() != per {
            return Err(Error::image(
                &item.image.path,
                format!("placed to {} values, not {per}", data.len()),
            ));
        }
        Ok(data)
    };
    let (values, results) = match input {
        Input::Bucket {
            format: PixelFormat::U8,
            ..
        } => {
            let (buf, r) = fill(batch, per, 0u8, |item, out| {
                out.copy_from_slice(&decode(item)?);
                Ok(())
            });
            (PixelValues::U8(buf), r)
        }
        Input::Bucket {
            format: PixelFormat::SignedUnit,
            ..
        } => {
            let (buf, r) = fill(batch, per, 0f32, |item, out| {
                signed_unit(&decode(item)?, out);
                Ok(())
            });
            (PixelValues::F32(buf), r)
        }
        Input::Clip(clip) => {
            let (buf, r) = fill(batch, per, 0f32, |item, out| {
                let data = decode(item)?;
                if let Some(clip) = clip {
                    clip.normalize(&data, out);
                }
                Ok(())
            });
            (PixelValues::F32(buf), r)
        }
    };
    let mut jobs = Vec::with_capacity(batch.len());
    let mut failed = Vec::new();
    for (job, result) in batch.iter().zip(&results) {
        match result {
            Ok(()) => jobs.push(job),
            Err(e) => failed.push(vec![failure(job, e)]),
        }
    }
    if !failed.is_empty() && tx.send(failed).is_err() {
        return Ok(None);
    }
    if jobs.is_empty() {
        return Ok(None);
    }
    // Rare: drop the slots of the items that failed.
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    let values = match values {
        PixelValues::F32(v) if jobs.len() < batch.len() => PixelValues::F32(keep(v, per, &ok)),
        PixelValues::U8(v) if jobs.len() < batch.len() => PixelValues::U8(keep(v, per, &ok)),
        v => v,
    };
    Ok(Some(Decoded {
        batch: PixelBatch {
            shape: match frames {
                Some(f) => vec![jobs.len(), f, 3, h, w],
                None => vec![jobs.len(), 3, h, w],
            },
            values,
        },
        jobs,
    }))
}

/// A job whose input could not be made: a finding, and the item is left out.
fn failure(job: &Job<'_, '_>, e: &Error) -> Produced {
    Produced::Failed {
        key: job.1.clone(),
        finding: Finding::new(
            job.0.planned.dataset,
            FindingKind::Corrupt,
            &job.0.image.path,
            format!("cannot decode for encoding: {e}"),
        ),
    }
}

/// The image a CLIP encoder sees for `item`, as (height, width, C×H×W bytes): the dataset's
/// CLIP image squared as AI Toolkit squares it (`clip_image_path`), else the item's own image
/// (a clip's first chosen frame), flipped as the item; resized and cropped by `preprocess`,
/// else at its own size.
fn clip_image(
    item: &ItemPlan<'_>,
    preprocess: Option<ClipPreprocess>,
) -> Result<(usize, usize, Vec<u8>)> {
    match (&item.dataset.clip_image_path, &item.clip_image) {
        (None, _) => {
            // The scan's sizes are as displayed, which is what decoding yields.
            let (w, h) = (item.image.width, item.image.height);
            let placement = match preprocess {
                Some(clip) => clip.placement(w, h),
                None => Placement::unchanged(w, h),
            };
            let data = decode_pixels(item, &placement, true)?.1;
            let b = placement.bucket;
            Ok((b.height as usize, b.width as usize, data))
        }
        (Some(_), Some((path, _))) => {
            let (flip, squaring) = (item.planned.flip, Squaring::of(item.dataset));
            match preprocess {
                Some(clip) => {
                    let img = guarded(path, || squared_reference(path, flip, squaring))?;
                    Ok((clip.size as usize, clip.size as usize, clip.resize(img)?))
                }
                None => guarded(path, || squared_reference_chw(path, flip, squaring)),
            }
        }
        (Some(dir), None) => Err(Error::image(
            &item.image.path,
            format!("no readable CLIP image with this stem in {}", dir.display()),
        )),
    }
}

/// The number of frames of an item that is a clip; `None` for an image.
fn frame_count(item: &ItemPlan<'_>) -> Option<usize> {
    item.frames.as_ref().map(Vec::len)
}

/// A buffer of `batch.len() * per` values, item `k`'s slot filled by `f` on all cores.
fn fill<T: Copy + Send + Sync>(
    batch: &[Job<'_, '_>],
    per: usize,
    zero: T,
    f: impl Fn(&ItemPlan<'_>, &mut [T]) -> Result<()> + Sync,
) -> (Vec<T>, Vec<Result<()>>) {
    let mut buf = vec![zero; batch.len() * per];
    let results = buf
        .par_chunks_mut(per.max(1))
        .zip(batch.par_iter())
        .map(|(out, (item, _))| f(item, out))
        .collect();
    (buf, results)
}

/// The slots of `values` whose flag in `ok` is set.
fn keep<T: Copy>(values: Vec<T>, per: usize, ok: &[bool]) -> Vec<T> {
    values
        .chunks(per.max(1))
        .zip(ok)
        .filter(|(_, ok)| **ok)
        .flat_map(|(slot, _)| slot.iter().copied())
        .collect()
}

/// The key of a CLIP entry: the source content (`source`, its hash and how it is read), the flip, the preprocessing and the encoder.
/// Not the bucket: CLIP sees the whole image, so every resolution of it shares one entry.
pub(super) fn clip_key(
    source: &str,
    flip: Flip,
    preprocess: &str,
    field: &str,
    identity: &str,
    codec: &str,
) -> String {
    crate::store::key::KeyBuilder::new("larder/clip/v1")
        .text(source)
        .text(flip.name())
        .text(preprocess)
        .text(field)
        .text(identity)
        .text(codec)
        .text(crate::image::PIPELINE)
        .finish()
}
