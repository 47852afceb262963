//! The loader's position, small enough to save with every checkpoint.

use super::order::{OrderOptions, SizeChange};

/// Where a loader is: with the store, this determines every batch still to come.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderState {
    /// Format of this record.
    pub version: u32,
    /// The order settings (seed included).
    pub order: OrderOptions,
    /// The current epoch.
    pub epoch: u64,
    /// Global batches of the epoch served so far, by all ranks together.
    pub consumed: u64,
    /// The batch size every epoch starts with.
    pub batch_size: u32,
    /// Every batch-size change, in order.
    pub history: Vec<SizeChange>,
}

/// The state format this larder writes. Version 2: batches hold one dataset's items and a
/// bucket's short batch repeats its own items, so a version-1 position names other batches.
const VERSION: u32 = 2;

impl LoaderState {
    /// The state of a loader that has served nothing.
    pub fn new(order: OrderOptions, batch_size: u32) -> Self {
        LoaderState {
            version: VERSION,
            order,
            epoch: 0,
            consumed: 0,
            batch_size,
            history: Vec::new(),
        }
    }

    /// The batch size in effect at the current position.
    pub fn current_batch_size(&self) -> u32 {
        // Changes carry over into later epochs: the tuner's last decision stands.
        self.history
            .last()
            .map_or(self.batch_size, |c| c.batch_size)
    }

    /// The size the current epoch started with: the last change made in an earlier epoch.
    pub fn epoch_start_size(&self) -> u32 {
        self.history
            .iter()
            .rev()
            .find(|c| c.epoch < self.epoch)
            .map_or(self.batch_size, |c| c.batch_size)
    }

    /// The state as JSON, for checkpoints.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a state saved by [`to_json`](Self::to_json).
    pub fn from_json(text: &str) -> crate::Result<Self> {
        let state: LoaderState =
            serde_json::from_str(text).map_err(|e| crate::Error::InvalidArgument {
                name: "state",
                message: format!("not a larder loader state: {e}"),
            })?;
        if state.version == 1 {
            return Err(crate::Error::InvalidArgument {
                name: "state",
                message: format!(
                    "this loader state was written by an earlier larder (version 1), which cut batches differently, so its position names other batches; start its epoch again instead (`set_epoch({})`)",
                    state.epoch
                ),
            });
        }
        if state.version != VERSION {
            return Err(crate::Error::InvalidArgument {
                name: "state",
                message: format!(
                    "loader state version {} is not supported (this larder writes {VERSION})",
                    state.version
                ),
            });
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_of_an_earlier_larder_is_refused_with_the_way_on() {
        let mut state = LoaderState::new(OrderOptions::default(), 4);
        state.epoch = 3;
        assert_eq!(
            LoaderState::from_json(&state.to_json()).ok(),
            Some(state.clone())
        );
        state.version = 1;
        let err = LoaderState::from_json(&state.to_json()).expect_err("refused");
        assert!(err.to_string().contains("set_epoch(3)"), "{err}");
        state.version = 7;
        let err = LoaderState::from_json(&state.to_json()).expect_err("refused");
        assert!(err.to_string().contains("version 7"), "{err}");
    }
}
