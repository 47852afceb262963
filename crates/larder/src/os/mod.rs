//! What the operating system says about this process, this machine and its files: the lowest
//! layer of the crate, which every other module may use and which uses none of them.
//!
//! Each file answers one question from the kernel's own accounting:
//! - [`memory`]: this process's memory (`/proc/self/smaps_rollup`, `/proc/self/smaps`) and the
//!   machine's (`/proc/meminfo`);
//! - [`residency`]: how much of a file the page cache holds (`mincore`);
//! - [`file`]: opening a file for reading, optionally with `O_DIRECT`;
//! - [`disk`]: the size and free space of a file system (`statvfs`), and of `/dev/shm`;
//! - [`limits`]: this process's limit on open files (`getrlimit`).
//!
//! Nothing here knows what a store, a loader or a checkpoint is: callers pass paths and
//! interpret the figures. Formatting figures for people is not this layer's job either
//! ([`crate::size::human`] does it).

mod disk;
mod file;
mod limits;
mod memory;
mod residency;

pub(crate) use disk::{fs_space, shm_space};
pub(crate) use file::open;
pub(crate) use limits::open_files;
pub(crate) use memory::mapped_rss;
// Public types and functions, re-exported from the public paths they always had
// (`larder::diagnose::…`); this module itself stays private.
pub use memory::{ProcessMemory, SystemMemory};
pub(crate) use residency::dir_residency;
pub use residency::{Residency, file_residency};
