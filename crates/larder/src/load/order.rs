//! The data order: which items form each batch of an epoch, on every rank.
//!
//! The order is a pure function of (seed, epoch, batch-size history): per epoch, a seeded
//! permutation of the items inside each bucket, cut into batches, then a seeded permutation of
//! all batches. A bucket is one dataset's images of one size (AI Toolkit batches each dataset
//! on its own and shuffles the batches of all), and a dataset may fix its own batch size.
//! Nothing depends on thread timing, on the number of reader threads or on the number of
//! ranks, so a run can be resumed — on any number of ranks — from three integers and a short
//! list, without reading the data it skips.
//!
//! A batch-size change re-plans the rest of the epoch: the items not yet served, in the order
//! the epoch's permutation gave them, are cut into batches of the new size and those batches
//! permuted with a stream keyed by the change, so the whole epoch is still deterministic.

use std::collections::BTreeMap;

use crate::rng::{Purpose, Stream};

/// What to do with the last, short batch of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketTail {
    /// Fill it up by repeating its own items (AI Toolkit's choice).
    Fill,
    /// Leave it out for this epoch.
    Drop,
    /// Serve it short.
    Keep,
}

/// What to do when the number of batches is not a multiple of the world size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankTail {
    /// Repeat batches from the start of the epoch until every rank has as many.
    Pad,
    /// Leave the last batches out, so every rank has as many.
    Drop,
}

/// A change of batch size, effective from a global batch position of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SizeChange {
    /// The epoch.
    pub epoch: u64,
    /// Global batches of that epoch served before the change.
    pub at: u64,
    /// The new batch size.
    pub batch_size: u32,
}

/// Settings that shape the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderOptions {
    /// The seed of every permutation.
    pub seed: u64,
    /// Permute items and batches; when false, items are served in id order, bucket by bucket.
    pub shuffle: bool,
    /// The short batch at the end of a bucket.
    pub bucket_tail: BucketTail,
    /// Batches beyond a multiple of the world size.
    pub rank_tail: RankTail,
}

impl Default for OrderOptions {
    fn default() -> Self {
        OrderOptions {
            seed: 0,
            shuffle: true,
            bucket_tail: BucketTail::Fill,
            rank_tail: RankTail::Pad,
        }
    }
}

/// The items of the store grouped by bucket: what the order is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    /// Item ids of each bucket, each list ascending, buckets in a fixed order.
    groups: Vec<Vec<u32>>,
    /// Each bucket's own batch size (its dataset's `batch_size`), which neither the loader's
    /// batch size nor a change of it alters; `None` where the bucket takes the loader's.
    sizes: Vec<Option<u32>>,
}

impl Buckets {
    /// Groups item ids by their bucket key (any ordered key, e.g. (width, height)); every
    /// bucket takes the loader's batch size.
    pub fn new<K: Ord>(items: impl IntoIterator<Item = (u32, K)>) -> Buckets {
        Buckets::with_sizes(items, |_| None)
    }

    /// Groups item ids by their bucket key; `size_of` gives a bucket its own batch size.
    pub fn with_sizes<K: Ord>(
        items: impl IntoIterator<Item = (u32, K)>,
        size_of: impl Fn(&K) -> Option<u32>,
    ) -> Buckets {
        let mut map: BTreeMap<K, Vec<u32>> = BTreeMap::new();
        for (id, key) in items {
            map.entry(key).or_default().push(id);
        }
        let sizes = map.keys().map(|k| size_of(k).map(|n| n.max(1))).collect();
        let mut groups: Vec<Vec<u32>> = map.into_values().collect();
        for g in &mut groups {
            g.sort_unstable();
        }
        Buckets { groups, sizes }
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    /// Returns true if and only if there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One epoch's global batches, for all ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPlan {
    /// Global batches in serving order, each a list of item ids of one bucket.
    pub batches: Vec<Vec<u32>>,
}

/// Cuts each bucket's (already ordered) items into batches of its own size, or of `size`, and
/// permutes the batches.
fn cut(
    groups: &[Vec<u32>],
    sizes: &[Option<u32>],
    size: usize,
    options: &OrderOptions,
    stream: &mut Stream,
) -> Vec<Vec<u32>> {
    let mut batches = Vec::new();
    for (items, own) in groups.iter().zip(sizes) {
        let size = own.map_or(size, |n| n as usize);
        for chunk in items.chunks(size) {
            let mut batch = chunk.to_vec();
            if batch.len() < size {
                match options.bucket_tail {
                    BucketTail::Drop => continue,
                    BucketTail::Keep => {}
                    // Repeat the short batch's own items, as AI Toolkit pads
                    // (`build_batch_indices`: `batch[i % len(batch)]`).
                    BucketTail::Fill => {
                        let need = size - batch.len();
                        batch.extend(chunk.iter().cycle().take(need));
                    }
                }
            }
            batches.push(batch);
        }
    }
    if options.shuffle {
        stream.shuffle(&mut batches);
    }
    batches
}

/// The global batches of `epoch`, given every batch-size change so far (`history`, in order;
/// changes of other epochs are ignored) and the size the epoch started with.
pub fn epoch_plan(
    buckets: &Buckets,
    options: &OrderOptions,
    epoch: u64,
    start_size: u32,
    history: &[SizeChange],
) -> EpochPlan {
    let start_size = start_size.max(1) as usize;
    // The epoch's item order: a permutation inside each bucket.
    let groups: Vec<Vec<u32>> = buckets
        .groups
        .iter()
        .enumerate()
        .map(|(b, items)| {
            let mut items = items.clone();
            if options.shuffle {
                Stream::new(Purpose::Order, &[options.seed, epoch, 0, b as u64])
                    .shuffle(&mut items);
            }
            items
        })
        .collect();
    let mut stream = Stream::new(Purpose::Order, &[options.seed, epoch, 1]);
    let mut batches = cut(&groups, &buckets.sizes, start_size, options, &mut stream);

    for (n, change) in history.iter().filter(|c| c.epoch == epoch).enumerate() {
        let at = (change.at as usize).min(batches.len());
        // What has been served stays; the rest of each bucket is re-cut in its epoch order.
        let mut served: BTreeMap<u32, usize> = BTreeMap::new();
        for batch in &batches[..at] {
            for &id in batch {
                *served.entry(id).or_default() += 1;
            }
        }
        let rest: Vec<Vec<u32>> = groups
            .iter()
            .map(|items| {
                items
                    .iter()
                    .filter(|id| match served.get_mut(id) {
                        // A filled tail may serve an item twice; count each serving once.
                        Some(k) if *k > 0 => {
                            *k -= 1;
                            false
                        }
                        _ => true,
                    })
                    .copied()
                    .collect()
            })
            .collect();
        let mut stream = Stream::new(Purpose::Order, &[options.seed, epoch, 2 + n as u64]);
        batches.truncate(at);
        // A dataset's own batch size is capped by the new size: a trainer that shrinks its
        // batches (the tuner, after running out of memory) shrinks every dataset's.
        let capped: Vec<Option<u32>> = (buckets.sizes.iter())
            .map(|own| own.map(|n| n.min(change.batch_size.max(1))))
            .collect();
        batches.extend(cut(
            &rest,
            &capped,
            change.batch_size.max(1) as usize,
            options,
            &mut stream,
        ));
    }
    EpochPlan { batches }
}

impl EpochPlan {
    /// The number of batches each of `world` ranks serves this epoch.
    pub fn per_rank(&self, world: usize, rank_tail: RankTail) -> usize {
        let n = self.batches.len();
        match rank_tail {
            RankTail::Pad => n.div_ceil(world.max(1)),
            RankTail::Drop => n / world.max(1),
        }
    }

    /// The global batch index served by `rank` of `world` at its local step `step`, starting
    /// after `consumed` global batches; `None` past the end of the epoch. Padding repeats the
    /// epoch's batches from its start.
    pub fn global_index(
        &self,
        consumed: usize,
        rank: usize,
        world: usize,
        step: usize,
        rank_tail: RankTail,
    ) -> Option<usize> {
        let world = world.max(1);
        let n = self.batches.len();
        let remaining = n.saturating_sub(consumed);
        let steps = match rank_tail {
            RankTail::Pad => remaining.div_ceil(world),
            RankTail::Drop => remaining / world,
        };
        if step >= steps || n == 0 {
            return None;
        }
        let g = consumed + step * world + rank;
        Some(if g < n { g } else { (g - n) % n })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Item ids 0..n spread over `b` buckets.
    fn buckets(n: u32, b: u32) -> Buckets {
        Buckets::new((0..n).map(|i| (i, (i * 7 + i / 3) % b)))
    }

    fn opts(bucket_tail: BucketTail, rank_tail: RankTail) -> OrderOptions {
        OrderOptions {
            seed: 11,
            shuffle: true,
            bucket_tail,
            rank_tail,
        }
    }

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    fn flat(batches: &[Vec<u32>]) -> Vec<u32> {
        sorted(batches.iter().flatten().copied().collect())
    }

    fn bucket_of(b: &Buckets, id: u32) -> usize {
        b.groups
            .iter()
            .position(|g| g.contains(&id))
            .expect("item in a bucket")
    }

    #[test]
    fn an_epoch_is_a_seeded_function_of_seed_and_epoch() {
        let b = buckets(100, 5);
        let o = opts(BucketTail::Keep, RankTail::Pad);
        assert_eq!(epoch_plan(&b, &o, 3, 4, &[]), epoch_plan(&b, &o, 3, 4, &[]));
        assert_ne!(epoch_plan(&b, &o, 3, 4, &[]), epoch_plan(&b, &o, 4, 4, &[]));
        let other = OrderOptions { seed: 12, ..o };
        assert_ne!(
            epoch_plan(&b, &o, 3, 4, &[]),
            epoch_plan(&b, &other, 3, 4, &[])
        );
    }

    #[test]
    fn without_shuffle_items_come_in_id_order_bucket_by_bucket() {
        let b = Buckets::new([(0u32, 1u8), (1, 0), (2, 1), (3, 0), (4, 1)]);
        let o = OrderOptions {
            shuffle: false,
            ..opts(BucketTail::Keep, RankTail::Pad)
        };
        assert_eq!(
            epoch_plan(&b, &o, 0, 2, &[]).batches,
            vec![vec![1, 3], vec![0, 2], vec![4]]
        );
    }

    #[test]
    fn bucket_tails_fill_drop_or_keep() {
        // One bucket of 5 items, batch size 2.
        let b = Buckets::new((0..5u32).map(|i| (i, 0u8)));
        let o = OrderOptions {
            shuffle: false,
            ..opts(BucketTail::Fill, RankTail::Pad)
        };
        assert_eq!(
            epoch_plan(&b, &o, 0, 2, &[]).batches,
            vec![vec![0, 1], vec![2, 3], vec![4, 4]]
        );
        // Batches of 3: the short batch [3, 4] repeats its own first item.
        assert_eq!(
            epoch_plan(&b, &o, 0, 3, &[]).batches,
            vec![vec![0, 1, 2], vec![3, 4, 3]]
        );
        let o = OrderOptions {
            bucket_tail: BucketTail::Drop,
            ..o
        };
        assert_eq!(
            epoch_plan(&b, &o, 0, 2, &[]).batches,
            vec![vec![0, 1], vec![2, 3]]
        );
        let o = OrderOptions {
            bucket_tail: BucketTail::Keep,
            ..o
        };
        assert_eq!(
            epoch_plan(&b, &o, 0, 2, &[]).batches,
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
    }

    #[test]
    fn ranks_share_the_epoch_and_take_equal_steps() {
        let b = buckets(103, 4);
        for rank_tail in [RankTail::Pad, RankTail::Drop] {
            let o = opts(BucketTail::Keep, rank_tail);
            let plan = epoch_plan(&b, &o, 0, 4, &[]);
            let n = plan.batches.len();
            for world in 1..=8usize {
                let steps = plan.per_rank(world, rank_tail);
                let mut served: Vec<usize> = Vec::new();
                for rank in 0..world {
                    let mine: Vec<usize> = (0..)
                        .map_while(|s| plan.global_index(0, rank, world, s, rank_tail))
                        .collect();
                    assert_eq!(
                        mine.len(),
                        steps,
                        "world {world} rank {rank}: no rank has an extra step"
                    );
                    served.extend(mine);
                }
                served.sort_unstable();
                match rank_tail {
                    // Every batch once, plus copies of the first ones to even out the ranks.
                    RankTail::Pad => {
                        let mut expected: Vec<usize> = (0..n).chain(0..steps * world - n).collect();
                        expected.sort_unstable();
                        assert_eq!(served, expected, "world {world}");
                    }
                    RankTail::Drop => assert_eq!(
                        served,
                        (0..steps * world).collect::<Vec<_>>(),
                        "world {world}"
                    ),
                }
                if rank_tail == RankTail::Pad {
                    let distinct: std::collections::BTreeSet<usize> =
                        served.iter().copied().collect();
                    let items: Vec<u32> = flat(
                        &distinct
                            .iter()
                            .map(|&g| plan.batches[g].clone())
                            .collect::<Vec<_>>(),
                    );
                    assert_eq!(
                        items,
                        (0..103).collect::<Vec<_>>(),
                        "the union is the epoch's multiset"
                    );
                }
            }
        }
    }

    #[test]
    fn resuming_on_another_world_size_serves_each_item_once() {
        let b = buckets(200, 3);
        let o = opts(BucketTail::Keep, RankTail::Pad);
        let plan = epoch_plan(&b, &o, 2, 5, &[]);
        let plan = &plan;
        let n = plan.batches.len();
        // Four ranks take 6 steps, then the job resumes on three ranks.
        let mut seen: Vec<usize> = (0..6)
            .flat_map(|s| (0..4).filter_map(move |r| plan.global_index(0, r, 4, s, RankTail::Pad)))
            .collect();
        let consumed = 24;
        seen.extend(
            (0..)
                .map_while(|s| {
                    let batch: Vec<usize> = (0..3)
                        .filter_map(|r| plan.global_index(consumed, r, 3, s, RankTail::Pad))
                        .collect();
                    (!batch.is_empty()).then_some(batch)
                })
                .flatten(),
        );
        let distinct: std::collections::BTreeSet<usize> =
            seen.iter().copied().filter(|&g| g < n).collect();
        assert_eq!(distinct.len(), n, "every batch of the epoch is served");
        // Nothing is served twice but the padding, which is less than one batch per rank.
        assert!(seen.len() - n < 3, "{} served for {n} batches", seen.len());
    }

    #[test]
    fn a_batch_size_change_keeps_what_was_served_and_recuts_the_rest() {
        let b = buckets(120, 3);
        let o = opts(BucketTail::Keep, RankTail::Pad);
        let before = epoch_plan(&b, &o, 1, 4, &[]);
        let change = SizeChange {
            epoch: 1,
            at: 7,
            batch_size: 6,
        };
        let after = epoch_plan(&b, &o, 1, 4, &[change]);
        assert_eq!(&after.batches[..7], &before.batches[..7]);
        assert!(after.batches[7..].iter().all(|batch| batch.len() <= 6));
        assert!(
            after.batches[7..]
                .iter()
                .filter(|batch| batch.len() == 6)
                .count()
                >= 10
        );
        assert_eq!(
            flat(&after.batches),
            (0..120).collect::<Vec<_>>(),
            "each item once"
        );
        assert_eq!(after, epoch_plan(&b, &o, 1, 4, &[change]), "deterministic");
        // A change recorded for another epoch does not touch this one.
        let other = SizeChange { epoch: 5, ..change };
        assert_eq!(epoch_plan(&b, &o, 1, 4, &[other]), before);
    }

    #[test]
    fn a_bucket_with_its_own_batch_size_keeps_it_through_size_changes() {
        // Items 0..40 in dataset 0 (the loader's size), 40..70 in dataset 1 (its own size 3);
        // both datasets have images of the same size, which still never share a batch.
        let b = Buckets::with_sizes(
            (0..70u32).map(|i| (i, (u32::from(i >= 40), (64u32, 64u32)))),
            |&(dataset, _)| (dataset == 1).then_some(3),
        );
        let o = opts(BucketTail::Fill, RankTail::Pad);
        let dataset = |batch: &Vec<u32>| batch[0] >= 40;
        let plan = epoch_plan(&b, &o, 0, 4, &[]);
        for batch in &plan.batches {
            assert!(batch.iter().all(|&id| (id >= 40) == dataset(batch)));
            assert_eq!(batch.len(), if dataset(batch) { 3 } else { 4 });
        }
        assert_eq!(plan.batches.len(), 10 + 10);
        // The trainer's size grows; dataset 1 keeps its own.
        let change = SizeChange {
            epoch: 0,
            at: 5,
            batch_size: 8,
        };
        let after = epoch_plan(&b, &o, 0, 4, &[change]);
        assert_eq!(&after.batches[..5], &plan.batches[..5]);
        for batch in &after.batches[5..] {
            assert!(batch.len() == 3 && dataset(batch) || batch.len() == 8 && !dataset(batch));
        }
        // It shrinks below dataset 1's size (the tuner after an out-of-memory error): both shrink.
        let shrink = SizeChange {
            batch_size: 2,
            ..change
        };
        let after = epoch_plan(&b, &o, 0, 4, &[shrink]);
        assert!(after.batches[5..].iter().all(|batch| batch.len() == 2));
    }

    proptest! {
        #[test]
        fn batches_hold_one_bucket_and_the_epoch_exactly_once(
            n in 1u32..300, nb in 1u32..6, size in 1u32..9, seed in any::<u64>(), epoch in 0u64..4,
            change_at in 0u64..40, new_size in 1u32..9,
        ) {
            let b = buckets(n, nb);
            let o = OrderOptions { seed, ..opts(BucketTail::Keep, RankTail::Pad) };
            let history = [SizeChange { epoch, at: change_at, batch_size: new_size }];
            let plan = epoch_plan(&b, &o, epoch, size, &history);
            prop_assert_eq!(flat(&plan.batches), (0..n).collect::<Vec<_>>());
            for batch in &plan.batches {
                prop_assert!(!batch.is_empty());
                let bucket = bucket_of(&b, batch[0]);
                prop_assert!(batch.iter().all(|&id| bucket_of(&b, id) == bucket));
            }
            let filled = epoch_plan(&b, &OrderOptions { bucket_tail: BucketTail::Fill, ..o }, epoch, size, &[]);
            prop_assert!(filled.batches.iter().all(|batch| batch.len() == size as usize));
        }
    }
}
