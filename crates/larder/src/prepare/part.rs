//! Distributed prepare: which planned items one part of a prepare processes, and where it
//! writes them.
//!
//! A prepare split `N` ways runs as `N` processes (on one machine or many, under torchrun or
//! by hand), each writing a complete store of its own items to `<out>/parts/<i>-of-<N>/`;
//! `larder merge` then combines the parts into `<out>` (see docs/distributed.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::plan::Plan;
use crate::{Error, Result};

/// Folder, inside a store, of the parts of a distributed prepare.
pub const PARTS_DIR: &str = "parts";

/// Part `index` of `count` (0-based) of a distributed prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Part {
    /// Which part, `0..count`.
    pub index: u32,
    /// How many parts the prepare is split into.
    pub count: u32,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Part {
    /// Part `index` of `count`; an error unless `index < count`.
    pub fn new(index: u32, count: u32) -> Result<Part> {
        if index >= count {
            return Err(Error::InvalidArgument {
                name: "shard",
                message: format!(
                    "part {index}/{count}: the index is 0-based and must be below the count ({})",
                    if count == 0 {
                        "the count must be at least 1".to_owned()
                    } else {
                        format!("0..={}", count - 1)
                    }
                ),
            });
        }
        Ok(Part { index, count })
    }

    /// Reads `"i/N"`, e.g. `"0/4"` for the first of four parts.
    pub fn parse(text: &str) -> Result<Part> {
        let bad = || Error::InvalidArgument {
            name: "shard",
            message: format!(
                "{text:?} is not a part like 0/4 (index/count, the index 0-based and below the count)"
            ),
        };
        let (i, n) = text.trim().split_once('/').ok_or_else(bad)?;
        let i: u32 = i.trim().parse().map_err(|_| bad())?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        Part::new(i, n)
    }

    /// The part torchrun's `RANK` and `WORLD_SIZE` name: `None` when either is unset or the
    /// world is one process (then there is nothing to split); an error when they are not
    /// numbers or RANK is out of range.
    pub fn from_env() -> Result<Option<Part>> {
        Part::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Part>> {
        let (Some(rank), Some(world)) = (var("RANK"), var("WORLD_SIZE")) else {
            return Ok(None);
        };
        let number = |name: &'static str, text: &str| -> Result<u32> {
            text.trim().parse().map_err(|_| Error::InvalidArgument {
                name,
                message: format!("the environment sets {name}={text:?}, which is not a number"),
            })
        };
        let (rank, world) = (number("RANK", &rank)?, number("WORLD_SIZE", &world)?);
        if world <= 1 {
            return Ok(None);
        }
        Part::new(rank, world).map(Some)
    }

    /// Returns true if and only if this is the only part (`0/1`): the prepare is not split.
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// The part's folder name, `<i>-of-<N>`.
    pub fn dir_name(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }

    /// Reads a part folder name `<i>-of-<N>`.
    pub(crate) fn from_dir_name(name: &str) -> Option<Part> {
        let (i, n) = name.split_once("-of-")?;
        Part::new(i.parse().ok()?, n.parse().ok()?).ok()
    }

    /// [`dir`](Self::dir) for a store location given as text, a folder or a URL:
    /// `out/parts/<i>-of-<N>`, or `out` itself for the whole.
    pub fn location(&self, out: &str) -> String {
        if self.is_whole() {
            out.to_owned()
        } else {
            format!(
                "{}/{PARTS_DIR}/{}",
                out.trim_end_matches('/'),
                self.dir_name()
            )
        }
    }

    /// Where this part of a prepare into `out` writes its store: `out/parts/<i>-of-<N>`, or
    /// `out` itself for the whole (`0/1`).
    pub fn dir(&self, out: &Path) -> PathBuf {
        if self.is_whole() {
            out.to_path_buf()
        } else {
            out.join(PARTS_DIR).join(self.dir_name())
        }
    }

    /// The indices in `plan.items` of this part's items, in plan order.
    ///
    /// The unit of the split is a source image (a dataset's image), not a planned item: an
    /// image's repeats, flips and resolutions share entries (repeats cut alike have one key),
    /// so they all go to one part and are computed once. The k-th image in plan order goes to
    /// part k mod N, which balances the parts to within an image per dataset.
    pub(crate) fn select(&self, plan: &Plan) -> Vec<usize> {
        let mut unit_of: HashMap<(usize, usize), u64> = HashMap::new();
        let mut out = Vec::new();
        for (k, item) in plan.items.iter().enumerate() {
            let next = unit_of.len() as u64;
            let unit = *unit_of.entry((item.dataset, item.image)).or_insert(next);
            if unit % u64::from(self.count) == u64::from(self.index) {
                out.push(k);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Bucket, Flip, Placement, PlannedItem};

    #[test]
    fn parts_parse_and_bad_ones_are_refused_with_the_rule() {
        assert_eq!(
            Part::parse("1/3").expect("1/3"),
            Part { index: 1, count: 3 }
        );
        assert_eq!(Part::parse(" 0 / 1 ").expect("0/1").to_string(), "0/1");
        for bad in ["3/3", "x", "1", "-1/3", "1/0", "a/b", "1/3/4"] {
            let err = Part::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("shard"), "{bad}: {err}");
        }
        assert!(
            Part::parse("3/3")
                .expect_err("3/3")
                .to_string()
                .contains("0..=2")
        );
        assert_eq!(
            Part::from_dir_name("2-of-5"),
            Some(Part::new(2, 5).expect("2/5"))
        );
        assert_eq!(Part::from_dir_name("5-of-5"), None);
        assert_eq!(Part::from_dir_name("notes"), None);
    }

    #[test]
    fn torchrun_variables_name_the_part_and_one_process_is_no_split() {
        let vars = |rank: &'static str, world: &'static str| {
            move |name: &str| match name {
                "RANK" => Some(rank.to_owned()),
                "WORLD_SIZE" => Some(world.to_owned()),
                _ => None,
            }
        };
        assert_eq!(
            Part::from_vars(vars("2", "4")).expect("ok"),
            Some(Part { index: 2, count: 4 })
        );
        assert_eq!(Part::from_vars(vars("0", "1")).expect("ok"), None);
        assert_eq!(Part::from_vars(|_| None).expect("ok"), None);
        assert!(Part::from_vars(vars("4", "4")).is_err());
        let err = Part::from_vars(vars("one", "4")).expect_err("not a number");
        assert!(err.to_string().contains("RANK"), "{err}");
    }

    #[test]
    fn an_images_items_go_to_one_part_and_parts_are_balanced() {
        let item = |dataset, image, repeat| PlannedItem {
            dataset,
            image,
            resolution: 64,
            repeat,
            flip: Flip::None,
            placement: Placement {
                bucket: Bucket {
                    width: 64,
                    height: 64,
                },
                scale_to_width: 64,
                scale_to_height: 64,
                crop_x: 0,
                crop_y: 0,
            },
            clip: None,
        };
        // Two datasets: 5 images × 2 repeats, then 4 images × 1.
        let mut plan = Plan::default();
        for repeat in 0..2 {
            for image in 0..5 {
                plan.items.push(item(0, image, repeat));
            }
        }
        for image in 0..4 {
            plan.items.push(item(1, image, 0));
        }
        let parts: Vec<Vec<usize>> = (0..3)
            .map(|i| Part::new(i, 3).expect("part").select(&plan))
            .collect();
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..plan.items.len()).collect::<Vec<_>>());
        for (i, part) in parts.iter().enumerate() {
            for &k in part {
                let it = plan.items[k];
                assert!(
                    part.iter()
                        .filter(|&&j| (plan.items[j].dataset, plan.items[j].image)
                            == (it.dataset, it.image))
                        .count()
                        == plan
                            .items
                            .iter()
                            .filter(|p| (p.dataset, p.image) == (it.dataset, it.image))
                            .count(),
                    "part {i} lacks a repeat of {it:?}"
                );
            }
        }
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, [5, 5, 4], "{parts:?}");
    }
}
