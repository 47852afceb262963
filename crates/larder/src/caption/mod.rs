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
///
/// `prepare` records each dataset's recipe in the catalog as this struct's JSON (the
/// `caption_recipe` column of `datasets`, see docs/store-format.md), and the loader reads it
/// back, so the two agree on the transforms by construction. Unknown keys are refused: a recipe
/// from a newer larder may hold a transform this one would silently skip.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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

    /// The recipe of a dataset whose settings a store recorded before recipes were (the
    /// `config` JSON of `datasets`: a [`DatasetConfig`] as serialized), read the way
    /// [`from_dataset`](Self::from_dataset) reads the config. Every key must be there with its
    /// type: a store whose settings lack one was not made by a larder this one can follow, and
    /// guessing a default would change the captions silently. The error names the key.
    pub(crate) fn from_recorded_config(
        config: &serde_json::Value,
    ) -> std::result::Result<Self, String> {
        let key = |k: &str| config.get(k).ok_or_else(|| format!("no {k:?}"));
        let rate = |k: &str| {
            key(k)?
                .as_f64()
                .ok_or_else(|| format!("{k:?} is not a number"))
        };
        let count = |k: &str| {
            key(k)?
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("{k:?} is not a count"))
        };
        let flag = |k: &str| {
            key(k)?
                .as_bool()
                .ok_or_else(|| format!("{k:?} is not true or false"))
        };
        let trigger_word = match key("trigger_word")? {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            _ => return Err("\"trigger_word\" is not a string".into()),
        };
        let random_triggers = key("random_triggers")?
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|t| t.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| "\"random_triggers\" is not a list of strings".to_owned())?;
        Ok(CaptionRecipe {
            caption_dropout_rate: rate("caption_dropout_rate")?,
            token_dropout_rate: rate("token_dropout_rate")?,
            keep_tokens: count("keep_tokens")?,
            shuffle_tokens: flag("shuffle_tokens")?,
            trigger_word,
            is_reg: flag("is_reg")?,
            random_triggers,
            random_triggers_max: count("random_triggers_max")?,
        })
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

    /// Returns true if and only if the item drops its whole caption in this epoch: the same
    /// draw [`apply`](Self::apply) makes first, so that a loader picking a precomputed text
    /// embedding agrees with the caption it reports.
    pub fn drops(&self, ctx: CaptionContext) -> bool {
        self.draw_dropout(&mut Self::stream(ctx))
    }

    /// The random stream of an item's caption transforms in an epoch.
    fn stream(ctx: CaptionContext) -> Stream {
        Stream::new(Purpose::Caption, &[ctx.seed, ctx.epoch, ctx.item])
    }

    /// The caption-dropout draw: made only when dropout is on, so that turning it off does
    /// not shift the draws of the other transforms.
    fn draw_dropout(&self, rng: &mut Stream) -> bool {
        self.caption_dropout_rate > 0.0 && rng.unit() < self.caption_dropout_rate
    }

    /// Applies the transforms to `raw`, in AI Toolkit's order: caption dropout, split on
    /// commas, token dropout, shuffle, join, trigger substitution and prepending, random
    /// triggers, second shuffle.
    pub fn apply(&self, raw: &str, ctx: CaptionContext) -> String {
        let mut rng = Self::stream(ctx);
        if self.draw_dropout(&mut rng) {
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

    /// The caption a dropped caption is trained on when text embeddings are cached: the
    /// trigger word alone (AI Toolkit's trainer puts it into every prompt it encodes, the empty
    /// one too, and its cache stores that string, trailing space and all), or the empty caption
    /// for a dataset without one and for regularization data.
    pub fn dropout_caption(&self) -> String {
        match self.trigger_word.as_deref() {
            Some(trigger) if !trigger.trim().is_empty() && !self.is_reg => format!("{trigger} "),
            _ => String::new(),
        }
    }

    /// Substitutes `[trigger]` and `[name]` with the trigger word (or removes them when there is
    /// none) and prepends the trigger when the caption lacks it, except for regularization data.
    fn inject_trigger(&self, caption: &str) -> String {
        let trigger = self.trigger_word.as_deref().unwrap_or("");
        let replaced = caption
            .replace("[name]", trigger)
            .replace("[trigger]", trigger);
        // A placeholder replaced by nothing leaves an empty token behind; tidy it away.
        let caption = split_tokens(&replaced).join(", ");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> CaptionRecipe {
        CaptionRecipe {
            caption_dropout_rate: 0.0,
            token_dropout_rate: 0.0,
            keep_tokens: 0,
            shuffle_tokens: false,
            trigger_word: None,
            is_reg: false,
            random_triggers: Vec::new(),
            random_triggers_max: 1,
        }
    }

    fn ctx(epoch: u64, item: u64) -> CaptionContext {
        CaptionContext {
            seed: 7,
            epoch,
            item,
        }
    }

    #[test]
    fn a_recipe_reads_back_from_its_json() {
        let r = CaptionRecipe {
            caption_dropout_rate: 0.05,
            token_dropout_rate: 0.1,
            keep_tokens: 2,
            shuffle_tokens: true,
            trigger_word: Some("sks".into()),
            is_reg: true,
            random_triggers: vec!["x".into(), "y".into()],
            random_triggers_max: 2,
        };
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(
            serde_json::from_str::<CaptionRecipe>(&json).expect("read"),
            r
        );
    }

    #[test]
    fn recorded_rates_read_back_bit_for_bit() {
        // serde_json's default float parser may be one ulp off for ~10% of such numbers; a
        // recipe read back must draw exactly what prepare drew with the config's value.
        let mut rng = Stream::new(Purpose::Caption, &[1]);
        for _ in 0..10_000 {
            let r = CaptionRecipe {
                caption_dropout_rate: rng.unit(),
                token_dropout_rate: rng.unit(),
                ..recipe()
            };
            let json = serde_json::to_string(&r).expect("json");
            let back: CaptionRecipe = serde_json::from_str(&json).expect("read");
            assert_eq!(
                (
                    back.caption_dropout_rate.to_bits(),
                    back.token_dropout_rate.to_bits()
                ),
                (
                    r.caption_dropout_rate.to_bits(),
                    r.token_dropout_rate.to_bits()
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn a_recipe_with_an_unknown_transform_is_refused() {
        let mut v = serde_json::to_value(recipe()).expect("json");
        v["reverse_tokens"] = true.into();
        let err = serde_json::from_value::<CaptionRecipe>(v).expect_err("refused");
        assert!(err.to_string().contains("reverse_tokens"), "{err}");
    }

    /// A dataset with every caption setting away from its default.
    fn configured() -> DatasetConfig {
        let mut d = DatasetConfig::new(crate::config::Source::Folder("imgs".into()));
        d.caption_dropout_rate = 0.05;
        d.token_dropout_rate = 0.3;
        d.keep_tokens = 1;
        d.shuffle_tokens = true;
        d.trigger_word = Some("sks".into());
        d.is_reg = true;
        d.random_triggers = vec!["x".into(), "y".into(), "z".into()];
        d.random_triggers_max = 3;
        d
    }

    #[test]
    fn recorded_settings_give_the_recipe_the_config_gives() {
        for d in [
            configured(),
            DatasetConfig::new(crate::config::Source::Folder("imgs".into())),
        ] {
            // What stores made before recipes were recorded hold: the dataset as serialized.
            let recorded = serde_json::to_value(&d).expect("json");
            assert_eq!(
                CaptionRecipe::from_recorded_config(&recorded),
                Ok(CaptionRecipe::from_dataset(&d))
            );
        }
    }

    #[test]
    fn recorded_settings_without_a_caption_key_are_refused_naming_it() {
        let mut recorded = serde_json::to_value(configured()).expect("json");
        for (key, value) in [
            ("random_triggers_max", serde_json::Value::Null),
            ("shuffle_tokens", "yes".into()),
            ("trigger_word", 3.into()),
        ] {
            let mut bad = recorded.clone();
            bad[key] = value;
            let err = CaptionRecipe::from_recorded_config(&bad).expect_err("refused");
            assert!(err.contains(key), "{err}");
        }
        recorded
            .as_object_mut()
            .expect("object")
            .remove("caption_dropout_rate");
        let err = CaptionRecipe::from_recorded_config(&recorded).expect_err("refused");
        assert!(err.contains("caption_dropout_rate"), "{err}");
    }

    #[test]
    fn drops_agrees_with_apply_item_for_item() {
        let dropping = CaptionRecipe {
            caption_dropout_rate: 0.5,
            shuffle_tokens: true,
            ..recipe()
        };
        let mut dropped = 0;
        for item in 0..200 {
            let ctx = ctx(3, item);
            let drops = dropping.drops(ctx);
            assert_eq!(
                drops,
                dropping.apply("a, b, c", ctx).is_empty(),
                "item {item}"
            );
            dropped += usize::from(drops);
        }
        assert!(
            (60..140).contains(&dropped),
            "{dropped} of 200 dropped at rate 0.5"
        );
    }

    #[test]
    fn tokens_are_trimmed_and_joined_with_one_space() {
        assert_eq!(recipe().apply(" a ,b,, c\n", ctx(0, 0)), "a, b, c");
    }

    #[test]
    fn trigger_replaces_placeholders_and_is_prepended_when_missing() {
        let r = CaptionRecipe {
            trigger_word: Some("sks".into()),
            ..recipe()
        };
        assert_eq!(r.apply("[trigger], a dog", ctx(0, 0)), "sks, a dog");
        assert_eq!(r.apply("photo of [name]", ctx(0, 0)), "photo of sks");
        assert_eq!(r.apply("a dog", ctx(0, 0)), "sks a dog");
        assert_eq!(r.apply("", ctx(0, 0)), "sks");
    }

    #[test]
    fn regularization_captions_are_not_given_the_trigger() {
        let r = CaptionRecipe {
            trigger_word: Some("sks".into()),
            is_reg: true,
            ..recipe()
        };
        assert_eq!(r.apply("a dog", ctx(0, 0)), "a dog");
        assert_eq!(r.apply("[trigger] dog", ctx(0, 0)), "sks dog");
    }

    #[test]
    fn placeholders_vanish_without_a_trigger() {
        assert_eq!(recipe().apply("[trigger], a dog", ctx(0, 0)), "a dog");
    }

    #[test]
    fn full_caption_dropout_empties_the_caption_before_the_trigger() {
        let r = CaptionRecipe {
            caption_dropout_rate: 1.0,
            trigger_word: Some("sks".into()),
            ..recipe()
        };
        assert_eq!(r.apply("a, b", ctx(0, 0)), "");
    }

    #[test]
    fn caption_dropout_hits_about_its_rate() {
        let r = CaptionRecipe {
            caption_dropout_rate: 0.25,
            ..recipe()
        };
        let dropped = (0..4000)
            .filter(|&i| r.apply("a, b", ctx(0, i)).is_empty())
            .count();
        assert!((850..1150).contains(&dropped), "{dropped} of 4000");
    }

    #[test]
    fn token_dropout_keeps_the_first_keep_tokens() {
        let r = CaptionRecipe {
            token_dropout_rate: 1.0,
            keep_tokens: 2,
            ..recipe()
        };
        assert_eq!(r.apply("a, b, c, d", ctx(0, 0)), "a, b");
        let r = CaptionRecipe {
            token_dropout_rate: 0.5,
            keep_tokens: 1,
            ..recipe()
        };
        for i in 0..50 {
            assert!(r.apply("a, b, c, d", ctx(0, i)).starts_with('a'));
        }
    }

    #[test]
    fn shuffles_are_reproducible_per_context_and_vary_across_epochs() {
        let r = CaptionRecipe {
            shuffle_tokens: true,
            ..recipe()
        };
        let caption = "a, b, c, d, e, f, g, h";
        assert_eq!(r.apply(caption, ctx(3, 9)), r.apply(caption, ctx(3, 9)));
        let epochs: std::collections::HashSet<String> =
            (0..10).map(|e| r.apply(caption, ctx(e, 9))).collect();
        assert!(epochs.len() > 5, "{epochs:?}");
        for shuffled in &epochs {
            let mut tokens: Vec<&str> = shuffled.split(", ").collect();
            tokens.sort_unstable();
            assert_eq!(tokens.join(", "), caption);
        }
    }

    #[test]
    fn random_triggers_are_distinct_and_within_the_maximum() {
        let triggers: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        let r = CaptionRecipe {
            random_triggers: triggers.clone(),
            random_triggers_max: 2,
            ..recipe()
        };
        let mut counts = [0usize; 3];
        for i in 0..300 {
            let c = r.apply("base", ctx(0, i));
            let added: Vec<&str> = c.split(", ").skip(1).collect();
            assert!(added.len() <= 2);
            let unique: std::collections::HashSet<_> = added.iter().collect();
            assert_eq!(unique.len(), added.len(), "{c}");
            assert!(added.iter().all(|t| triggers.iter().any(|x| x == t)));
            counts[added.len()] += 1;
        }
        // With a maximum above 1 the count is uniform over 0..=max.
        assert!(counts.iter().all(|&n| n > 60), "{counts:?}");
        let one = CaptionRecipe {
            random_triggers: triggers,
            random_triggers_max: 1,
            ..recipe()
        };
        assert_eq!(one.apply("", ctx(0, 1)).split(", ").count(), 1);
    }
}
