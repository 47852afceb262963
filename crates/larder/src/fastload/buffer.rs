//! Host memory that a whole file is read into: page-aligned (as `O_DIRECT` requires), and
//! either ordinary or page-locked.

use crate::cuda::PinnedBuffer;
use crate::{Error, Result};

/// Alignment of buffers, file offsets and lengths for `O_DIRECT` reads: the page size, which is
/// also a multiple of every logical block size in use (512 or 4096).
pub(crate) const ALIGN: usize = 4096;

/// A page-aligned host buffer holding one file's bytes.
#[derive(Debug)]
pub struct HostBuffer {
    memory: Memory,
    /// The meaningful bytes (the allocation may be longer, rounded up to [`ALIGN`]).
    len: usize,
}

#[derive(Debug)]
enum Memory {
    /// Anonymous memory from `mmap`: page-aligned and zeroed by the kernel as pages are first
    /// touched, so a 4 GB buffer costs no up-front memset (an aligned `alloc_zeroed` would).
    Mapped(memmap2::MmapMut),
    /// Page-locked memory from the CUDA driver.
    Pinned(PinnedBuffer),
}

impl HostBuffer {
    /// An ordinary buffer for `len` bytes, with room rounded up to a whole number of pages.
    pub fn new(len: usize) -> Result<HostBuffer> {
        let capacity = round_up(len).max(ALIGN);
        let map = memmap2::MmapMut::map_anon(capacity).map_err(|e| Error::InvalidArgument {
            name: "len",
            message: format!("cannot allocate {capacity} bytes of host memory: {e}"),
        })?;
        // Transparent huge pages cut the page faults of a multi-GB buffer 512-fold; where the
        // kernel does not offer them this is a no-op, so the result is ignored.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(HostBuffer {
            memory: Memory::Mapped(map),
            len,
        })
    }

    /// A page-locked buffer for `len` bytes (fails when CUDA is unavailable).
    pub fn pinned(len: usize) -> Result<HostBuffer> {
        Ok(HostBuffer {
            memory: Memory::Pinned(PinnedBuffer::new(round_up(len).max(ALIGN))?),
            len,
        })
    }

    /// The file's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.whole()[..self.len]
    }

    /// Returns true if and only if the memory is page-locked.
    pub fn is_pinned(&self) -> bool {
        matches!(self.memory, Memory::Pinned(_))
    }

    /// The number of meaningful bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns true if and only if the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn whole(&self) -> &[u8] {
        match &self.memory {
            Memory::Mapped(m) => m,
            Memory::Pinned(p) => p.as_slice(),
        }
    }

    /// The whole allocation, writable (its length is a multiple of [`ALIGN`]).
    pub(crate) fn whole_mut(&mut self) -> &mut [u8] {
        match &mut self.memory {
            Memory::Mapped(m) => m,
            Memory::Pinned(p) => p.as_mut_slice(),
        }
    }
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub(crate) fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}
