//! Positioned reads of large aligned chunks, in parallel.
//!
//! One `pread` stream (what `f.read()` does) keeps one request in flight and relies on the
//! kernel's read-ahead; NVMe drives and network block devices deliver their bandwidth only with
//! many requests in flight. Here `threads` workers each read whole chunks (16 MiB by default)
//! at their own offsets with `read_at`, into disjoint parts of one buffer.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{Error, Result};

/// Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
pub(crate) fn fill_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let want = buf.len();
    fill_at_most(file, buf, offset, want)
}

/// Reads into `buf` from `offset` until `want` bytes have come or the file ends; returns the
/// bytes read. `buf` may be longer than `want`: an `O_DIRECT` read must ask for whole blocks
/// even at the end of a file, and must not be followed by a read at the unaligned offset where
/// the file ended (which the kernel refuses rather than answering "end of file").
pub(crate) fn fill_at_most(
    file: &File,
    buf: &mut [u8],
    offset: u64,
    want: usize,
) -> io::Result<usize> {
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads the file's first `len` bytes into `dst` (at least `len` long; for `O_DIRECT` files,
/// page-aligned and a multiple of the page size long), `chunk` bytes per request on `threads`
/// threads.
pub(crate) fn read_parallel(
    file: &File,
    path: &Path,
    dst: &mut [u8],
    len: u64,
    chunk: usize,
    threads: usize,
) -> Result<()> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, part) in dst.chunks_mut(chunk).enumerate() {
        let offset = (i * chunk) as u64;
        if offset >= len {
            break;
        }
        // Never more than `len` bytes are expected; an O_DIRECT part keeps its aligned
        // length (the file simply ends inside it).
        let _ = tx.send((offset, part));
    }
    drop(tx);
    let workers = threads.clamp(1, rx.len().max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || -> Result<()> {
                    for (offset, part) in rx.iter() {
                        let want = (len - offset).min(part.len() as u64) as usize;
                        let got = fill_at_most(file, part, offset, want).map_err(|e| Error::io(path, e))?;
                        if got < want {
                            return Err(Error::Safetensors {
                                path: path.to_path_buf(),
                                tensor: None,
                                message: format!(
                                    "the file ended at byte {} while {len} bytes were expected: truncated while being read?",
                                    offset + got as u64
                                ),
                            });
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        join_all(handles)
    })
}

/// Joins every worker — all of them, so that each failure surfaces and none is left running —
/// and returns the first error; a worker's panic is re-raised here.
pub(crate) fn join_all(handles: Vec<std::thread::ScopedJoinHandle<'_, Result<()>>>) -> Result<()> {
    let mut first = Ok(());
    for h in handles {
        let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        if first.is_ok() {
            first = r;
        }
    }
    first
}
