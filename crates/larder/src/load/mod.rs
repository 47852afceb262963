//! Serving a store to a training loop: a deterministic order ([`order`]), reader threads that
//! assemble batches ([`Loader`]), and a position small enough to checkpoint ([`LoaderState`]).

mod assemble;
mod batch;
mod loader;
mod options;
pub mod order;
mod readers;
mod state;
mod text;

pub use batch::{Batch, BufferPool, PooledBuffer, Tensor};
pub use loader::Loader;
pub use options::LoaderOptions;
pub use state::LoaderState;
pub use text::Padding;
