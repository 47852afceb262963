//! The parts to merge: each finished, all of one split, one config, one plan, one set of
//! encoders.

use std::path::{Path, PathBuf};

use super::{META_PART, META_PLAN_ITEMS, store_error};
use crate::prepare::Part;
use crate::store::catalog::Catalog;
use crate::{Error, Result};

/// One checked part catalog.
#[derive(Debug, Clone)]
pub(crate) struct PartCatalog {
    pub part: Part,
    /// The part's catalog file.
    pub path: PathBuf,
}

/// The complete, consistent catalogs of all parts of one distributed prepare.
#[derive(Debug, Clone)]
pub(crate) struct PartSet {
    /// One per part, in part order (`parts[i].part.index == i`).
    pub parts: Vec<PartCatalog>,
    /// The config digest every part was prepared from.
    pub digest: String,
}

/// What one part's catalog says of itself.
struct PartMeta {
    part: Part,
    digest: String,
    plan_items: String,
    encoders: Vec<(String, String, String)>,
}

impl PartMeta {
    fn read(path: &Path) -> Result<PartMeta> {
        let unfinished = || {
            store_error(
                path,
                "this part has not finished (no completed `larder prepare --shard` wrote it): run its prepare again, then merge"
                    .into(),
            )
        };
        if !path.is_file() {
            return Err(unfinished());
        }
        let cat = Catalog::open(path, false)?;
        let part = cat.meta(META_PART)?.ok_or_else(unfinished)?;
        let part = Part::parse(&part).map_err(|e| store_error(path, format!("meta part: {e}")))?;
        let digest = cat.meta("config_digest")?.ok_or_else(unfinished)?;
        let plan_items = cat.meta(META_PLAN_ITEMS)?.ok_or_else(unfinished)?;
        let encoders = cat.rows(
            "SELECT field, identity, params FROM encoders ORDER BY field",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(PartMeta {
            part,
            digest,
            plan_items,
            encoders,
        })
    }
}

impl PartSet {
    /// Reads and checks the catalogs of a distributed prepare's parts: each finished, all of
    /// one split (same N, each index once, none missing), one config digest, one plan, and the
    /// same encoders. The errors name the part and what differs.
    pub(crate) fn read(catalogs: &[PathBuf]) -> Result<PartSet> {
        let Some(first) = catalogs.first() else {
            return Err(Error::InvalidArgument {
                name: "parts",
                message: "no parts to merge".into(),
            });
        };
        let metas = catalogs
            .iter()
            .map(|p| PartMeta::read(p))
            .collect::<Result<Vec<_>>>()?;
        let count = metas[0].part.count;
        let mut by_index: Vec<Option<usize>> = vec![None; count as usize];
        for (k, m) in metas.iter().enumerate() {
            let path = &catalogs[k];
            if m.part.count != count {
                return Err(store_error(
                    path,
                    format!(
                        "this part is {}, but {} is {}: the parts come from prepares split differently; merge parts of one split",
                        m.part,
                        first.display(),
                        metas[0].part
                    ),
                ));
            }
            // A part folder named `i-of-N` holds part i/N: a mismatch means folders were
            // copied or renamed by hand.
            let folder = path
                .parent()
                .and_then(|d| d.file_name())
                .and_then(|n| n.to_str())
                .and_then(Part::from_dir_name);
            if let Some(named) = folder
                && named != m.part
            {
                return Err(store_error(
                    path,
                    format!(
                        "the folder is named for part {named}, but its catalog is part {}",
                        m.part
                    ),
                ));
            }
            if let Some(other) = by_index[m.part.index as usize].replace(k) {
                return Err(store_error(
                    path,
                    format!(
                        "part {} is given twice: here and in {}",
                        m.part,
                        catalogs[other].display()
                    ),
                ));
            }
            for (what, mine, theirs) in [
                ("config digest", &m.digest, &metas[0].digest),
                ("planned item count", &m.plan_items, &metas[0].plan_items),
            ] {
                if mine != theirs {
                    return Err(store_error(
                        path,
                        format!(
                            "part {} has {what} {mine}, part {} ({}) has {theirs}: the parts were prepared from different configs or saw different files; prepare every part from the same config and data",
                            m.part,
                            metas[0].part,
                            first.display()
                        ),
                    ));
                }
            }
            if m.encoders != metas[0].encoders {
                let names = |e: &[(String, String, String)]| -> Vec<String> {
                    e.iter().map(|(f, i, _)| format!("{f}={i}")).collect()
                };
                let differing: Vec<String> = m
                    .encoders
                    .iter()
                    .filter(|e| !metas[0].encoders.contains(e))
                    .map(|(f, i, p)| format!("{f} (identity {i}, settings {p})"))
                    .collect();
                return Err(store_error(
                    path,
                    format!(
                        "part {} was prepared with encoders {:?}, part {} with {:?} (differing: {}); prepare every part with the same encoders and codecs",
                        m.part,
                        names(&m.encoders),
                        metas[0].part,
                        names(&metas[0].encoders),
                        differing.join(", ")
                    ),
                ));
            }
        }
        let missing: Vec<Part> = by_index
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_none())
            .map(|(i, _)| Part {
                index: i as u32,
                count,
            })
            .collect();
        if !missing.is_empty() {
            // Named where the parts lie: the folder holding the part folders.
            let parts_dir = first.parent().and_then(Path::parent).unwrap_or(first);
            return Err(store_error(
                parts_dir,
                format!(
                    "part(s) {} missing (folders {}): {} of {count} parts found; run `larder prepare CONFIG --out STORE --shard i/{count}` for each missing part, then merge",
                    missing
                        .iter()
                        .map(Part::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    missing
                        .iter()
                        .map(Part::dir_name)
                        .collect::<Vec<_>>()
                        .join(", "),
                    catalogs.len()
                ),
            ));
        }
        Ok(PartSet {
            parts: by_index
                .into_iter()
                .flatten()
                .map(|k| PartCatalog {
                    part: metas[k].part,
                    path: catalogs[k].clone(),
                })
                .collect(),
            digest: metas[0].digest.clone(),
        })
    }
}
