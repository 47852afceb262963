//! Serving a store to a training loop: a deterministic order ([`plan`]), reader threads that
//! assemble batches ([`Loader`]), and a position small enough to checkpoint ([`LoaderState`]).

mod batch;
mod loader;
pub mod plan;
mod state;
mod text;

pub use batch::{Batch, BufferPool, PooledBuffer, Tensor};
pub use loader::{Loader, LoaderOptions};
pub use state::LoaderState;
pub use text::Padding;
