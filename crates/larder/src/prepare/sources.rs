//! Content hashes of source files, cached by (path, size, modification time).
//!
//! Keys are built from content, so every source must be hashed; re-reading every byte of a large
//! dataset on each run would dominate a prepare that has nothing to do. The catalog remembers
//! each file's hash with its size and mtime, as git's index does, and a file is read again only
//! when either changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rayon::prelude::*;
use rusqlite::params;

use crate::Result;
use crate::store::catalog::Catalog;
use crate::store::shard::hash_file;

/// What is known of one source file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    bytes: u64,
    mtime_ns: i64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let md = std::fs::metadata(path)?;
    let mtime_ns = md
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    Ok(Stamp {
        bytes: md.len(),
        mtime_ns,
    })
}

/// Content hashes of a prepare's source files.
#[derive(Debug, Default)]
pub(crate) struct SourceHashes {
    /// BLAKE3 (hex) of each readable file.
    pub hashes: HashMap<PathBuf, String>,
    /// Files that could not be read, with why.
    pub failures: Vec<(PathBuf, std::io::Error)>,
    /// How many files were read (the others were known by their stamp).
    pub hashed: usize,
}

/// A file's hash and whether it was computed now (rather than taken from the catalog).
struct Hashed {
    stamp: Stamp,
    hash: String,
    fresh: bool,
}

/// Hashes of the given files: from the catalog when the stamp matches, else by reading them
/// (in parallel). Files that cannot be read map to their error.
pub(crate) fn hash_sources(catalog: &Catalog, paths: &[PathBuf]) -> Result<SourceHashes> {
    let mut cached: HashMap<String, (Stamp, String)> = HashMap::new();
    {
        let mut stmt = catalog
            .conn
            .prepare("SELECT path, bytes, mtime_ns, blake3 FROM sources")
            .map_err(|e| catalog.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| catalog.err(e))?;
        for row in rows {
            let (path, bytes, mtime_ns, hash) = row.map_err(|e| catalog.err(e))?;
            cached.insert(
                path,
                (
                    Stamp {
                        bytes: bytes as u64,
                        mtime_ns,
                    },
                    hash,
                ),
            );
        }
    }
    let results: Vec<(PathBuf, std::io::Result<Hashed>)> = paths
        .par_iter()
        .map(|p| {
            let r = stamp(p).and_then(|s| {
                let key = p.to_string_lossy();
                match cached.get(key.as_ref()) {
                    Some((old, hash)) if *old == s => Ok(Hashed {
                        stamp: s,
                        hash: hash.clone(),
                        fresh: false,
                    }),
                    _ => hash_file(p).map(|(_, hash)| Hashed {
                        stamp: s,
                        hash,
                        fresh: true,
                    }),
                }
            });
            (p.clone(), r)
        })
        .collect();
    let mut out = SourceHashes::default();
    let tx = catalog
        .conn
        .unchecked_transaction()
        .map_err(|e| catalog.err(e))?;
    {
        let mut upsert = tx
            .prepare(
                "INSERT INTO sources(path, bytes, mtime_ns, blake3) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(path) DO UPDATE SET bytes = excluded.bytes, mtime_ns = excluded.mtime_ns, blake3 = excluded.blake3",
            )
            .map_err(|e| catalog.err(e))?;
        for (path, r) in results {
            match r {
                Ok(Hashed {
                    stamp: s,
                    hash,
                    fresh,
                }) => {
                    if fresh {
                        out.hashed += 1;
                        upsert
                            .execute(params![
                                path.to_string_lossy(),
                                s.bytes as i64,
                                s.mtime_ns,
                                hash
                            ])
                            .map_err(|e| catalog.err(e))?;
                    }
                    out.hashes.insert(path, hash);
                }
                Err(e) => out.failures.push((path, e)),
            }
        }
    }
    tx.commit().map_err(|e| catalog.err(e))?;
    Ok(out)
}
