//! Loading straight to a GPU: cuFile → pinned ring with overlapped copies → plain copies.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::buffer::{ALIGN, round_up};
use super::checkpoint::{Checkpoint, Shard, note, read_host};
use super::{LoadOptions, LoadPath, LoadReport, read};
use crate::cuda::cufile::{self, CuFile, Registered};
use crate::cuda::{Device, DeviceBuffer, PinnedBuffer, Stream};
use crate::safetensors_header::TensorInfo;
use crate::{Error, Result};

/// Every tensor of a checkpoint in GPU memory: one device buffer per file holding its data
/// section, tensors viewing it.
#[derive(Debug)]
pub struct DeviceTensors {
    files: Vec<Arc<DeviceBuffer>>,
    report: LoadReport,
}

/// A tensor in a device buffer.
#[derive(Debug, Clone, Copy)]
pub struct DeviceView<'a> {
    /// Name, dtype, shape and byte range.
    pub info: &'a TensorInfo,
    /// The device buffer holding the file's data section.
    pub buffer: &'a Arc<DeviceBuffer>,
    /// Where the tensor's bytes start in `buffer`.
    pub offset: usize,
}

impl DeviceTensors {
    /// The view of tensor `name` of `checkpoint` (the checkpoint these were loaded from).
    pub fn get<'a>(&'a self, checkpoint: &'a Checkpoint, name: &str) -> Option<DeviceView<'a>> {
        let (info, shard, _) = checkpoint.locate(name)?;
        Some(DeviceView {
            info,
            buffer: &self.files[shard],
            offset: info.range.start as usize,
        })
    }

    /// How the files were read.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }
}

impl Checkpoint {
    /// Reads every tensor into the memory of GPU `ordinal`, by the fastest path that works
    /// (or only `options.only`).
    ///
    /// Fails only when CUDA itself is unusable (no driver, no such device, out of device
    /// memory) or the files cannot be read; a faster path that is unavailable or fails is
    /// left for the next one with a warning, and the report says why.
    pub fn load_to(&self, ordinal: usize, options: &LoadOptions) -> Result<DeviceTensors> {
        let started = Instant::now();
        let device = Device::open(ordinal)?;
        let mut fallbacks = Vec::new();
        let wanted = |p: LoadPath| options.only.is_none_or(|o| o == p);
        let mut files = Vec::with_capacity(self.shards.len());
        let mut path = LoadPath::Plain;
        for shard in &self.shards {
            let buffer = device.alloc(shard.header.data_len as usize)?;
            let mut done = None;
            if wanted(LoadPath::Cufile) {
                let attempt =
                    cufile_usable(&device, shard).and_then(|()| by_cufile(shard, &buffer, options));
                match attempt {
                    Ok(()) => done = Some(LoadPath::Cufile),
                    Err(e) => note(&mut fallbacks, format!("cufile: {e}")),
                }
            }
            if done.is_none() && wanted(LoadPath::Pinned) {
                match by_pinned_ring(shard, &device, &buffer, options) {
                    Ok(()) => done = Some(LoadPath::Pinned),
                    Err(e) => note(&mut fallbacks, format!("pinned: {e}")),
                }
            }
            if done.is_none() && wanted(LoadPath::Plain) {
                by_plain_copy(shard, &buffer, options, &mut fallbacks)?;
                done = Some(LoadPath::Plain);
            }
            path = done.ok_or_else(|| Error::Cuda {
                message: format!(
                    "the {} path is unavailable for {}: {}",
                    options.only.map_or("requested", LoadPath::name),
                    shard.path.display(),
                    fallbacks.last().map_or("", String::as_str)
                ),
            })?;
            files.push(Arc::new(buffer));
        }
        Ok(DeviceTensors {
            files,
            report: LoadReport {
                path,
                fallbacks,
                bytes: self.shards.iter().map(|s| s.file_len).sum(),
                seconds: started.elapsed().as_secs_f64(),
            },
        })
    }
}

/// Every requirement of GPUDirect Storage for this file and device, or the first unmet one.
fn cufile_usable(device: &Device, shard: &Shard) -> Result<()> {
    let cuda = |message: String| Error::Cuda { message };
    cufile::usable_for(&shard.path).map_err(cuda)?;
    if device.attribute(crate::cuda::ATTR_GPU_DIRECT_RDMA_SUPPORTED)? == 0 {
        return Err(cuda(format!(
            "cuda:{} does not support GPUDirect RDMA",
            device.ordinal()
        )));
    }
    Ok(())
}

/// Chunks of the file's data section: (offset in the section, length).
fn section_chunks(shard: &Shard, chunk: usize) -> Vec<(u64, usize)> {
    let len = shard.header.data_len;
    let chunk = round_up(chunk.max(ALIGN)) as u64;
    (0..len.div_ceil(chunk))
        .map(|i| (i * chunk, (len - i * chunk).min(chunk) as usize))
        .collect()
}

/// cuFile reads straight into device memory, several requests in flight.
fn by_cufile(shard: &Shard, buffer: &DeviceBuffer, options: &LoadOptions) -> Result<()> {
    // cuFile registers handles and buffers in the current context; popped after both are
    // deregistered (locals drop in reverse order).
    let _current = buffer.device().bind()?;
    let file = CuFile::open(&shard.path)?;
    let _registered = Registered::new(buffer);
    let (tx, rx) = crossbeam_channel::unbounded();
    for c in section_chunks(shard, options.chunk_bytes) {
        let _ = tx.send(c);
    }
    drop(tx);
    let start = shard.header.data_start;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..options.threads.clamp(1, rx.len().max(1)))
            .map(|_| {
                let (rx, file) = (rx.clone(), &file);
                s.spawn(move || -> Result<()> {
                    let _current = buffer.device().bind()?;
                    for (offset, len) in rx.iter() {
                        file.read(buffer, offset as usize, start + offset, len)?;
                    }
                    Ok(())
                })
            })
            .collect();
        read::join_all(handles)
    })
}

/// Reader threads fill a ring of page-locked chunks; this thread queues each filled chunk's
/// copy to the device on a stream as soon as it arrives, so that the reads of chunks k+1, k+2,
/// ... overlap the copy of chunk k. A chunk goes back to the readers once the event recorded
/// after its copy has passed.
fn by_pinned_ring(
    shard: &Shard,
    device: &Arc<Device>,
    buffer: &DeviceBuffer,
    options: &LoadOptions,
) -> Result<()> {
    let chunks = section_chunks(shard, options.chunk_bytes);
    let chunk_len = chunks.first().map_or(ALIGN, |c| round_up(c.1));
    let depth = (2 * options.threads).clamp(2, chunks.len().max(2));
    let slots = (0..depth)
        .map(|_| PinnedBuffer::new(chunk_len).map(Mutex::new))
        .collect::<Result<Vec<_>>>()?;
    let stream = Stream::new(device)?;
    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    for c in &chunks {
        let _ = job_tx.send(*c);
    }
    drop(job_tx);
    let (free_tx, free_rx) = crossbeam_channel::unbounded();
    for i in 0..depth {
        let _ = free_tx.send(i);
    }
    let (filled_tx, filled_rx) = crossbeam_channel::unbounded::<Result<(usize, u64, usize)>>();
    let start = shard.header.data_start;
    let file = crate::os::open(&shard.path, false).map_err(|e| Error::io(&shard.path, e))?;
    let (slots, stream) = (&slots, &stream);
    std::thread::scope(|s| {
        for _ in 0..options.threads.clamp(1, chunks.len().max(1)) {
            let (job_rx, free_rx, filled_tx, file) =
                (job_rx.clone(), free_rx.clone(), filled_tx.clone(), &file);
            s.spawn(move || {
                for (offset, len) in job_rx.iter() {
                    // Without a free slot the copier has stopped (an error): give up quietly.
                    let Ok(i) = free_rx.recv() else { return };
                    let mut slot = slots[i].lock().unwrap_or_else(|p| p.into_inner());
                    let got = read::fill_at(file, &mut slot.as_mut_slice()[..len], start + offset);
                    let message = match got {
                        Ok(n) if n == len => Ok((i, offset, len)),
                        Ok(n) => Err(Error::Safetensors {
                            path: shard.path.clone(),
                            tensor: None,
                            message: format!(
                                "the file ended {n} bytes into a {len}-byte read at {}: truncated",
                                start + offset
                            ),
                        }),
                        Err(e) => Err(Error::io(&shard.path, e)),
                    };
                    if filled_tx.send(message).is_err() {
                        return;
                    }
                }
            });
        }
        drop(filled_tx);
        // The copier owns `free_tx`: when it returns (done or failed) the readers waiting for
        // a slot see the channel closed and stop.
        let copier = move || -> Result<()> {
            let mut pending = VecDeque::new();
            for _ in 0..chunks.len() {
                let (i, offset, len) = filled_rx.recv().map_err(|_| Error::Cuda {
                    message: "a reader thread stopped before the file was read".into(),
                })??;
                let slot = slots[i].lock().unwrap_or_else(|p| p.into_inner());
                // SAFETY: slot `i` is not handed to a reader again until the event recorded
                // after this copy has passed (below), so its bytes stay unchanged and alive
                // (the slots outlive this scope); the destination range is inside `buffer`.
                unsafe { stream.copy_async(buffer, offset as usize, &slot.as_slice()[..len])? };
                drop(slot);
                pending.push_back((i, stream.record()?));
                while pending.len() > depth / 2 {
                    let (j, event): (usize, _) = pending.pop_front().expect("pending is not empty");
                    event.wait()?;
                    let _ = free_tx.send(j);
                }
            }
            stream.synchronize()
        };
        let result = copier();
        // On failure, the queued copies may still read the slots: wait for them before the
        // slots are freed.
        if result.is_err() {
            let _ = stream.synchronize();
        }
        result
    })
}

/// Reads into ordinary host memory, then copies synchronously.
fn by_plain_copy(
    shard: &Shard,
    buffer: &DeviceBuffer,
    options: &LoadOptions,
    fallbacks: &mut Vec<String>,
) -> Result<()> {
    let (mut pinned, mut direct) = (false, options.direct);
    let (host, _) = read_host(
        shard,
        options.threads,
        options.chunk_bytes,
        &mut pinned,
        &mut direct,
        fallbacks,
    )?;
    let start = shard.header.data_start as usize;
    buffer.copy_from_host(0, &host.as_slice()[start..])
}
