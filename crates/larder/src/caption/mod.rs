//! Caption transforms: AI Toolkit's per-step caption processing, seeded.
//!
//! AI Toolkit recomputes every caption each time an item is fetched, from Python's unseeded
//! global random state, so no two runs see the same captions. larder applies the same
//! transforms in the same order, with randomness drawn from `(seed, epoch, item)`: a caption
//! is reproducible, and a resumed run sees what an uninterrupted one would have seen.
//!
//! Two deliberate differences, both about whitespace, are listed in docs/config.md: tokens
//! are trimmed and joined with `", "` (AI Toolkit leaves one more space after each comma per
//! pass), and empty tokens are dropped.

use crate::config::DatasetConfig;
use crate::rng::{Purpose, Stream};

/// The caption settings of one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionRecipe {
    /// Probability of an empty caption.
    pub caption_dropout_rate: f64,
    /// Probability of dropping each token after the first `keep_tokens`.
    pub token_dropout_rate: f64,
    /// Leading tokens never dropped.
    pub keep_tokens: usize,
    /// Shuffle tokens (before and after the random triggers are added).
    pub shuffle_tokens: bool,
    /// Replaces `[trigger]` and `[name]`; prepended when absent (unless `is_reg`).
    pub trigger_word: Option<String>,
    /// A regularization dataset: the trigger is substituted but never prepended.
    pub is_reg: bool,
    /// Candidates appended at random.
    pub random_triggers: Vec<String>,
    /// How many random triggers: exactly this when 1 or less, else a uniform count in 0..=max.
    pub random_triggers_max: usize,
}

/// Which draw of the caption transforms: the same context always gives the same caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaptionContext {
    /// The run's seed.
    pub seed: u64,
    /// The epoch.
    pub epoch: u64,
    /// The item's stable identifier.
    pub item: u64,
}

impl CaptionRecipe {
    /// The recipe configured for `dataset`.
    pub fn from_dataset(dataset: &DatasetConfig) -> Self {
        CaptionRecipe {
            caption_dropout_rate: dataset.caption_dropout_rate,
            token_dropout_rate: dataset.token_dropout_rate,
            keep_tokens: dataset.keep_tokens as usize,
            shuffle_tokens: dataset.shuffle_tokens,
            trigger_word: dataset.trigger_word.clone(),
            is_reg: dataset.is_reg,
            random_triggers: dataset.random_triggers.clone(),
            random_triggers_max: dataset.random_triggers_max as usize,
        }
    }

    /// Returns true if and only if the recipe draws random numbers, i.e. the caption can
    /// differ between epochs.
    pub fn is_random(&self) -> bool {
        self.caption_dropout_rate > 0.0
            || self.token_dropout_rate > 0.0
            || self.shuffle_tokens
            || (!self.random_triggers.is_empty() && self.random_triggers_max > 1)
            || (self.random_triggers.len() > self.random_triggers_max
                && self.random_triggers_max > 0)
    }

    /// Applies the transforms to `raw`, in AI Toolkit's order: caption dropout, split on
    /// commas, token dropout, shuffle, join, trigger substitution and prepending, random
    /// triggers, second shuffle.
    pub fn apply(&self, raw: &str, ctx: CaptionContext) -> String {
        let mut rng = Stream::new(Purpose::Caption, &[ctx.seed, ctx.epoch, ctx.item]);
        if self.caption_dropout_rate > 0.0 && rng.unit() < self.caption_dropout_rate {
            return String::new();
        }
        let mut tokens = split_tokens(raw);
        if self.token_dropout_rate > 0.0 {
            let mut index = 0;
            tokens.retain(|_| {
                let keep = index < self.keep_tokens
                    || (self.token_dropout_rate < 1.0 && rng.unit() > self.token_dropout_rate);
                index += 1;
                keep
            });
        }
        if self.shuffle_tokens {
            rng.shuffle(&mut tokens);
        }
        let mut caption = self.inject_trigger(&tokens.join(", "));
        if !self.random_triggers.is_empty() {
            let n = if self.random_triggers_max > 1 {
                rng.between(0, self.random_triggers_max as u64) as usize
            } else {
                self.random_triggers_max
            };
            let picks = sample(&mut rng, &self.random_triggers, n);
            if !picks.is_empty() {
                if !caption.is_empty() {
                    caption.push_str(", ");
                }
                caption.push_str(&picks.join(", "));
            }
        }
        if self.shuffle_tokens {
            let mut tokens = split_tokens(&caption);
            rng.shuffle(&mut tokens);
            caption = tokens.join(", ");
        }
        caption
    }

    /// Substitutes `[trigger]` and `[name]` with the trigger word (or removes them when there is
    /// none) and prepends the trigger when the caption lacks it, except for regularization data.
    fn inject_trigger(&self, caption: &str) -> String {
        let trigger = self.trigger_word.as_deref().unwrap_or("");
        let caption = caption
            .replace("[name]", trigger)
            .replace("[trigger]", trigger);
        if trigger.trim().is_empty() || self.is_reg || caption.contains(trigger) {
            return caption;
        }
        if caption.is_empty() {
            trigger.to_owned()
        } else {
            format!("{trigger} {caption}")
        }
    }
}

/// Splits a caption on commas into trimmed, non-empty tokens.
fn split_tokens(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// `n` distinct elements of `from` in random order (a partial Fisher–Yates shuffle).
fn sample<'a>(rng: &mut Stream, from: &'a [String], n: usize) -> Vec<&'a str> {
    let mut pool: Vec<&str> = from.iter().map(String::as_str).collect();
    let n = n.min(pool.len());
    for i in 0..n {
        let j = i + rng.below((pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(n);
    pool
}
