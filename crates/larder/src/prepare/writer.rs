//! The writer of a prepare: computed entries go to one thread that packs them into shards and
//! commits each shard with its entries in one catalog transaction; the pool of threads that
//! decodes, places and encodes image fields feeds it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crossbeam_channel::Sender;
use rayon::prelude::*;
use rusqlite::params;

use super::PrepareOptions;
use super::items::{FieldJob, ItemPlan};
use crate::config::ControlSize;
use crate::encode::squared_reference_chw;
use crate::image::{self, Convert};
use crate::plan::{Flip, Placement};
use crate::scan::{Finding, FindingKind};
use crate::store::catalog::Catalog;
use crate::store::codec::{self, Codec, Values};
use crate::store::shard::{PendingTensor, ShardBuilder};
use crate::store::{SHARD_DIR, TMP_DIR};
use crate::video;
use crate::{Error, Result};

/// A computed entry on its way to the writer, or the reason it failed.
pub(super) enum Produced {
    Entry {
        key: String,
        tensor: PendingTensor,
        meta: Option<String>,
        encoded: EncodedInfo,
    },
    Failed {
        key: String,
        finding: Finding,
    },
}

/// An entry in the shard being built, waiting for the shard's commit.
struct Pending {
    key: String,
    tensor: String,
    info: EncodedInfo,
}

/// What the catalog records of an entry besides its location.
pub(super) struct EncodedInfo {
    dtype: &'static str,
    shape: Vec<usize>,
    codec: String,
    raw_len: usize,
    scale: Vec<f32>,
    bias: Vec<f32>,
}

/// What the writer did.
#[derive(Default)]
pub(super) struct Written {
    pub(super) entries: usize,
    pub(super) shards: usize,
    pub(super) bytes: u64,
    /// Entries that failed to compute, with the finding that says why.
    pub(super) failed: Vec<(String, Finding)>,
}

impl Written {
    /// Adds what another writer did.
    pub(super) fn absorb(&mut self, other: Written) {
        self.entries += other.entries;
        self.shards += other.shards;
        self.bytes += other.bytes;
        self.failed.extend(other.failed);
    }
}

/// Packs computed entries into shards and commits each shard with its entries.
struct ShardWriter<'a> {
    catalog: Catalog,
    tmp: &'a Path,
    shard_dir: &'a Path,
    target_bytes: u64,
    builder: ShardBuilder,
    pending: Vec<Pending>,
    names: HashSet<String>,
    done: Written,
    /// Told the file name of each shard once it is committed.
    sink: Option<&'a Sender<String>>,
}

impl ShardWriter<'_> {
    /// Adds a group of entries; the shard may close after the group, never inside it.
    fn add_group(&mut self, group: Vec<Produced>) -> Result<()> {
        for produced in group {
            self.add(produced)?;
        }
        if self.builder.data_bytes() as u64 >= self.target_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn add(&mut self, produced: Produced) -> Result<()> {
        let (key, tensor, meta, info) = match produced {
            Produced::Failed { key, finding } => {
                self.done.failed.push((key, finding));
                return Ok(());
            }
            Produced::Entry {
                key,
                tensor,
                meta,
                encoded,
            } => (key, tensor, meta, encoded),
        };
        // Two datasets may cut one image alike with different field parameters; a shard
        // cannot hold two tensors of one name, so the second starts a new shard.
        if self.names.contains(&tensor.name) {
            self.flush()?;
        }
        self.names.insert(tensor.name.clone());
        self.pending.push(Pending {
            key,
            tensor: tensor.name.clone(),
            info,
        });
        self.builder.push(tensor, meta);
        Ok(())
    }

    /// Writes the shard being built and commits it with its entries in one transaction.
    fn flush(&mut self) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let shard = std::mem::take(&mut self.builder).write(self.tmp, self.shard_dir)?;
        let catalog = &self.catalog;
        let err = |e| catalog.err(e);
        let tx = catalog.conn.unchecked_transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO shards(file, bytes, blake3) VALUES (?1, ?2, ?3) ON CONFLICT(file) DO NOTHING",
            params![shard.file, shard.bytes as i64, shard.blake3],
        )
        .map_err(err)?;
        let shard_id: i64 = tx
            .query_row(
                "SELECT id FROM shards WHERE file = ?1",
                [&shard.file],
                |r| r.get(0),
            )
            .map_err(err)?;
        tx.execute(
            "INSERT OR REPLACE INTO shard_chunks(shard, chunk_bytes, blake3) VALUES (?1, ?2, ?3)",
            params![
                shard_id,
                shard.chunks.chunk_bytes as i64,
                shard.chunks.digests.concat()
            ],
        )
        .map_err(err)?;
        let places: HashMap<&str, _> = shard.tensors.iter().map(|p| (p.name.as_str(), p)).collect();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO entries(key, shard, tensor, offset, length, dtype, shape, codec, raw_len, scale, bias)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(err)?;
            for Pending { key, tensor, info } in &self.pending {
                let place = places.get(tensor.as_str()).ok_or_else(|| Error::Store {
                    path: self.shard_dir.join(&shard.file),
                    message: format!("tensor {tensor} missing from the shard just written"),
                })?;
                insert
                    .execute(params![
                        key,
                        shard_id,
                        place.name,
                        place.offset as i64,
                        place.length as i64,
                        info.dtype,
                        serde_json::json!(info.shape).to_string(),
                        info.codec,
                        info.raw_len as i64,
                        serde_json::json!(info.scale).to_string(),
                        serde_json::json!(info.bias).to_string(),
                    ])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        if let Some(sink) = self.sink {
            // The receiver (an uploader) outlives the writer; if it has stopped, the shard is
            // uploaded with the rest at the end.
            let _ = sink.send(shard.file.clone());
        }
        self.done.entries += self.pending.len();
        self.done.shards += 1;
        self.done.bytes += shard.bytes;
        self.pending.clear();
        self.names.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(Catalog, Written)> {
        self.flush()?;
        Ok((self.catalog, self.done))
    }
}

/// Runs `produce` on this thread while one writer thread packs what it sends into shards.
///
/// `produce` sends groups of entries; a shard never closes inside a group, so a group (the
/// outputs of one caption) is committed whole or not at all. When `produce` fails (an encoder
/// raised), the writer still commits everything sent before the failure, then the error is
/// returned: nothing already computed is lost.
pub(super) fn with_writer(
    catalog: Catalog,
    out: &Path,
    options: &PrepareOptions,
    sink: Option<&Sender<String>>,
    produce: impl FnOnce(&Sender<Vec<Vec<Produced>>>) -> Result<()>,
) -> Result<(Catalog, Written)> {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<Produced>>>(2);
    let tmp = out.join(TMP_DIR);
    let shard_dir = out.join(SHARD_DIR);
    let mut writer = ShardWriter {
        catalog,
        tmp: &tmp,
        shard_dir: &shard_dir,
        target_bytes: options.shard_bytes,
        builder: ShardBuilder::default(),
        pending: Vec::new(),
        names: HashSet::new(),
        done: Written::default(),
        sink,
    };
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<(Catalog, Written)> {
            for groups in rx {
                for group in groups {
                    writer.add_group(group)?;
                }
            }
            writer.finish()
        });
        // When the writer fails it drops the receiver, sending fails, and its error is the
        // one returned.
        let produced = produce(&tx);
        drop(tx);
        let written = handle.join().unwrap_or_else(|_| {
            Err(Error::Store {
                path: out.to_path_buf(),
                message: "the shard writer thread panicked".into(),
            })
        });
        match (produced, written) {
            (Err(e), _) => Err(e),
            (Ok(()), written) => written,
        }
    })
}

/// Computes `todo` on all cores while one thread writes the results.
pub(super) fn run_pipeline(
    catalog: Catalog,
    out: &Path,
    options: &PrepareOptions,
    todo: &[(&ItemPlan<'_>, &FieldJob)],
    sink: Option<&Sender<String>>,
) -> Result<(Catalog, Written)> {
    let bar = crate::progress::bar(
        options.progress,
        todo.len(),
        1,
        "{bar:30} {pos}/{len} entries {per_sec} ETA {eta} [{elapsed_precise}]",
    );
    let outcome = with_writer(catalog, out, options, sink, |tx| {
        // Chunks keep the output order deterministic while all cores work on each chunk; a
        // chunk is also kept to about CHUNK_BYTES of output, so that big entries (clips of many
        // frames) do not pile up between the decoders and the writer.
        let threads = rayon::current_num_threads().max(1);
        for part in chunks(todo, threads * 8, threads) {
            let produced: Vec<Vec<Produced>> = part
                .par_iter()
                .map(|(item, job)| vec![produce(item, job, options.image_codec)])
                .collect();
            bar.inc(part.len() as u64);
            if tx.send(produced).is_err() {
                break;
            }
        }
        Ok(())
    });
    bar.finish_and_clear();
    outcome
}

/// About how much decoded output one chunk of [`run_pipeline`] holds.
const CHUNK_BYTES: usize = 64 << 20;

/// `todo` cut into consecutive chunks of at most `max_items`, each ending once it holds about
/// [`CHUNK_BYTES`] of output, but never fewer than `min_items` (every core gets work).
fn chunks<'t, T: Copy + 't>(
    todo: &'t [(&ItemPlan<'_>, T)],
    max_items: usize,
    min_items: usize,
) -> impl Iterator<Item = &'t [(&'t ItemPlan<'t>, T)]> {
    let mut rest = todo;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len().min(max_items) && (n < min_items || bytes < CHUNK_BYTES) {
            let (item, _) = rest[n];
            let bucket = item.planned.placement.bucket;
            let frames = item.frames.as_ref().map_or(1, Vec::len);
            // Four channels at most (inpaint images); controls of their own size are rare.
            bytes += 4 * bucket.width as usize * bucket.height as usize * frames;
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Decodes `source`, converts it, and places it (flip, resize, crop) as C×H×W bytes, with
/// that shape. `size` says whether it follows the item's `placement` and `flip` or has a size
/// of its own (controls, see [`ControlSize`]).
pub(super) fn decode_placed(
    source: &Path,
    convert: Convert,
    size: ControlSize,
    placement: &Placement,
    flip: Flip,
) -> Result<([usize; 3], Vec<u8>)> {
    let decoded = guarded(source, || image::decode(source, convert))?;
    let channels = decoded.channels.count();
    // AI Toolkit neither flips nor crops controls of its own size: `load_control_image` only
    // applies the item's flip and crop to full-size controls of models that do not take them raw.
    let (placement, flip) = match size {
        ControlSize::Item => (*placement, flip),
        ControlSize::Square512 => (Placement::unchanged(512, 512), Flip::None),
        ControlSize::Native => (
            Placement::unchanged(decoded.width, decoded.height),
            Flip::None,
        ),
    };
    let shape = [
        channels,
        placement.bucket.height as usize,
        placement.bucket.width as usize,
    ];
    Ok((shape, image::place(decoded, &placement, flip)?))
}

/// Runs `decode` on a file from a dataset. Decoders are fed untrusted files; should one panic
/// on a hostile file, that file becomes a finding like any other undecodable one instead of
/// ending the prepare.
pub(super) fn guarded<T>(source: &Path, decode: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
        .unwrap_or_else(|_| Err(Error::image(source, "the decoder crashed on this file")))
}

/// Decodes and places an item's own pixels: its image ([3, H, W]), or the frames of its clip
/// ([F, 3, H, W]; only the first with `first_frame`), each frame through the item's geometry
/// as AI Toolkit does.
pub(super) fn decode_pixels(
    item: &ItemPlan<'_>,
    placement: &Placement,
    first_frame: bool,
) -> Result<(Vec<usize>, Vec<u8>)> {
    let (Some(frames), Some(video)) = (&item.frames, &item.image.video) else {
        let (shape, data) = decode_placed(
            &item.image.path,
            Convert::Rgb,
            ControlSize::Item,
            placement,
            item.planned.flip,
        )?;
        return Ok((shape.to_vec(), data));
    };
    let frames = if first_frame {
        &frames[..1]
    } else {
        &frames[..]
    };
    let path = &item.image.path;
    let decoded = guarded(path, || video::decode_frames(path, video, frames))?;
    let (h, w) = (
        placement.bucket.height as usize,
        placement.bucket.width as usize,
    );
    let mut data = Vec::with_capacity(frames.len() * 3 * h * w);
    for frame in decoded {
        let frame = image::Decoded {
            width: frame.width,
            height: frame.height,
            channels: image::Channels::Rgb,
            data: frame.data,
        };
        data.extend(image::place(frame, placement, item.planned.flip)?);
    }
    Ok((vec![frames.len(), 3, h, w], data))
}

/// Decodes, places and encodes one field of one item.
fn produce(item: &ItemPlan<'_>, job: &FieldJob, image_codec: Codec) -> Produced {
    let fail = |e: Error| Produced::Failed {
        key: job.key.clone(),
        finding: Finding::new(
            item.planned.dataset,
            FindingKind::Corrupt,
            &job.what.source,
            format!("cannot decode for field {}: {e}", job.what.field),
        ),
    };
    let source = &job.what.source;
    let placed = if job.what.field == "pixels" {
        decode_pixels(item, &item.planned.placement, false)
    } else if let Some(squaring) = job.what.squaring {
        guarded(source, || {
            squared_reference_chw(source, item.planned.flip, squaring)
        })
        .map(|(h, w, data)| (vec![3, h, w], data))
    } else {
        decode_placed(
            &job.what.source,
            job.what.convert,
            job.what.size,
            &item.planned.placement,
            item.planned.flip,
        )
        .map(|(shape, data)| (shape.to_vec(), data))
    };
    let (shape, mut data) = match placed {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if let Some((invert, min)) = job.what.mask {
        image::map_mask(&mut data, invert, min);
    }
    let name = format!("{}/{}", item.item_key, job.what.field);
    stored_entry(&job.key, name, image_codec, Values::U8(&data), shape).unwrap_or_else(fail)
}

/// Encodes `values` with `codec` into an entry for the writer, named `name` in its shard.
pub(super) fn stored_entry(
    key: &str,
    name: String,
    codec: Codec,
    values: Values<'_>,
    shape: Vec<usize>,
) -> Result<Produced> {
    let encoded = codec::encode(codec, values, &shape)?;
    let (stored_dtype, stored_shape) = if codec.is_raw() {
        (codec.element_dtype(), shape.clone())
    } else {
        ("U8", vec![encoded.bytes.len()])
    };
    // Compressed and quantized tensors need more than safetensors' header to read; the header
    // metadata says how to decode them, so a shard is understandable without the catalog.
    let meta = (!codec.is_raw() || !encoded.scale.is_empty()).then(|| {
        serde_json::json!({"codec": codec.name(), "dtype": codec.element_dtype(), "shape": shape, "raw_len": encoded.raw_len, "scale": encoded.scale, "offset": encoded.offset}).to_string()
    });
    Ok(Produced::Entry {
        key: key.to_owned(),
        tensor: PendingTensor {
            name,
            dtype: stored_dtype,
            shape: stored_shape,
            bytes: encoded.bytes,
        },
        meta,
        encoded: EncodedInfo {
            dtype: codec.element_dtype(),
            shape,
            codec: codec.name(),
            raw_len: encoded.raw_len,
            scale: encoded.scale,
            bias: encoded.offset,
        },
    })
}
