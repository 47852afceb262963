//! Reading dataset configs: AI Toolkit job files, `datasets:` files and bare folders.
//!
//! ```no_run
//! let config = larder::Config::load("examples/sample/config.yaml")?;
//! for w in &config.warnings {
//!     eprintln!("warning: {w}");
//! }
//! println!("{} datasets, divisibility {}", config.datasets.len(), config.divisibility);
//! # Ok::<(), larder::Error>(())
//! ```

mod dataset;
mod extract;
mod keys;
mod model;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

pub use dataset::{
    AudioRule, BucketStrategy, CLIP_IMAGE, CacheOptions, ControlSize, DEFAULT_MAX_IMAGE_PIXELS,
    DataloaderKeys, DatasetConfig, FrameRule, RAW_CONTROL, Source,
};
use model::takes_raw_control_images;
pub use model::{DEFAULT_DIVISIBILITY, divisibility_for_arch};

use dataset::{LarderDefaults, max_image_pixels, parse_bucket_strategy, parse_dataset};
use extract::At;
use yaml::Node;

use crate::{Error, Result};

/// A config that larder can act on, with the warnings reading it produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    /// The config file, or the folder given in place of one.
    pub source: PathBuf,
    /// The datasets in file order.
    pub datasets: Vec<DatasetConfig>,
    /// Bucket sides are multiples of this (from the model, `larder.divisibility`, or the default).
    pub divisibility: u32,
    /// The model architecture the divisibility came from, when the config names one.
    pub arch: Option<String>,
    /// Keys that were ignored, one warning each.
    pub warnings: Vec<ConfigWarning>,
}

/// A key that was read but has no effect: unknown, or not implemented by larder yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigWarning {
    /// The config file.
    pub path: PathBuf,
    /// 1-based line of the key.
    pub line: u64,
    /// The dotted key path.
    pub key: String,
    /// Why it is ignored.
    pub message: String,
    /// Returns true if and only if the key asks AI Toolkit for data that larder does not serve
    /// yet (video frames, augmentations, …), as opposed to a misspelt key or a setting of AI
    /// Toolkit's worker processes: a trainer that hands its data path to larder must stop on
    /// these rather than train on something else than asked.
    pub not_served: bool,
}

impl ConfigWarning {
    fn new(at: &At<'_>, line: u64, message: String) -> Self {
        ConfigWarning {
            path: at.file.to_path_buf(),
            line,
            key: at.key.clone(),
            message,
            not_served: false,
        }
    }

    /// A warning for a key that asks for data larder does not serve yet.
    fn not_served(at: &At<'_>, line: u64, message: String) -> Self {
        ConfigWarning {
            not_served: true,
            ..ConfigWarning::new(at, line, message)
        }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: `{}`: {}",
            self.path.display(),
            self.line,
            self.key,
            self.message
        )
    }
}

impl Config {
    /// Reads a config from a YAML file (an AI Toolkit job file or a file with a top-level
    /// `datasets:` list) or, when `path` is a folder, makes a one-dataset config with AI
    /// Toolkit's defaults for it.
    pub fn load(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        if path.is_dir() {
            return Ok(Config::for_folder(path));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Config::from_yaml(&text, path)
    }

    /// A config of one dataset: the images in `folder`, with every setting at its default.
    pub fn for_folder(folder: impl AsRef<Path>) -> Config {
        let folder = folder.as_ref();
        Config {
            source: folder.to_path_buf(),
            datasets: vec![DatasetConfig::new(Source::Folder(folder.to_path_buf()))],
            divisibility: DEFAULT_DIVISIBILITY,
            arch: None,
            warnings: Vec::new(),
        }
    }

    /// Reads a config from YAML text; `path` names it in messages and anchors relative paths.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config> {
        let root = yaml::parse(text).map_err(|e| Error::Yaml {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        let mut warnings = Vec::new();
        let file_at = At::root(path, "");
        let entries = file_at.map(&root)?;

        // Where the datasets and the model section are: an AI Toolkit job file keeps them in
        // config.process[*]; a plain file has them at the top.
        let mut dataset_lists: Vec<(At<'_>, &Node)> = Vec::new();
        let mut model: Option<(At<'_>, &Node)> = None;
        if let Some(config) = root.get("config") {
            job_file_keys(path, entries, &mut warnings)?;
            let at = At::root(path, "config");
            keys::warn_unknown(&at, config, keys::CONFIG, &mut warnings)?;
            let process = config.get("process").ok_or_else(|| {
                at.error(
                    config,
                    format!(
                        "an AI Toolkit job file needs `config.process`, a list of processes{}",
                        found_keys(config, "process", keys::CONFIG)
                    ),
                )
            })?;
            let pat = at.child("process");
            let processes = pat.seq(process)?;
            for (i, p) in processes.iter().enumerate() {
                let a = pat.index(i);
                keys::warn_unknown(&a, p, keys::PROCESS, &mut warnings)?;
                if let Some(d) = p.get("datasets") {
                    dataset_lists.push((a.child("datasets"), d));
                }
                if let Some(m) = p.get("model") {
                    let ma = a.child("model");
                    keys::warn_unknown(&ma, m, keys::MODEL, &mut warnings)?;
                    if model.is_none() {
                        model = Some((ma, m));
                    }
                }
            }
            if dataset_lists.is_empty() {
                return Err(no_datasets_in_processes(&pat, process, processes));
            }
        } else if let Some(d) = root.get("datasets") {
            for (key, _) in entries {
                let name = key.as_key().unwrap_or_default();
                if !keys::PLAIN_FILE.contains(&name) {
                    // A plain file's other keys are often YAML anchors (`common: &c ...`);
                    // `config` is the one a typo would matter for, so it is in the hint list.
                    let known = [keys::PLAIN_FILE, &["config"]].concat();
                    warnings.push(keys::unknown_in(&At::root(path, name), key, &known));
                }
            }
            dataset_lists.push((At::root(path, "datasets"), d));
            if let Some(m) = root.get("model") {
                let ma = At::root(path, "model");
                keys::warn_unknown(&ma, m, keys::MODEL, &mut warnings)?;
                model = Some((ma, m));
            }
        } else {
            let known = [keys::PLAIN_FILE, &["config"]].concat();
            return Err(file_at.child("datasets").error(
                &root,
                format!(
                    "no datasets found: expected a top-level `datasets:` list or an AI Toolkit job file with `config.process[].datasets`{}",
                    found_keys(&root, "datasets", &known)
                ),
            ));
        }

        let (mut larder, larder_divisibility, larder_raw) = match root.get("larder") {
            Some(node) => larder_section(&At::root(path, "larder"), node)?,
            None => (LarderDefaults::default(), None, None),
        };

        let arch = match &model {
            Some((at, node)) => Some(model::arch_of(at, node)?),
            None => None,
        };
        // `larder.raw_control_images` says it for a model the table does not know (a custom
        // class); otherwise the model's architecture does, as its AI Toolkit class would.
        larder.raw_control_images = larder_raw.unwrap_or_else(|| match (&arch, &model) {
            (Some((name, _)), Some((_, node))) => takes_raw_control_images(name, node),
            _ => false,
        });
        if let Some((name, _)) = &arch {
            larder.temporal_compression = larder
                .temporal_compression
                .or_else(|| model::temporal_compression(name));
            larder.own_frame_grid = model::own_frame_grid(name).then(|| name.clone());
        }
        let divisibility = match (&larder_divisibility, &arch) {
            (Some(d), _) => *d,
            (None, Some((name, line))) => divisibility_for_arch(name).ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                line: *line,
                key: "model.arch".into(),
                message: format!(
                    "unknown architecture {name:?}{}: its bucket divisibility is not known; set `larder.divisibility` (16 for SD/SDXL-like VAEs, 32 for Flux, SD3, Qwen-Image)",
                    model::arch_hint(name)
                ),
            })?,
            (None, None) => DEFAULT_DIVISIBILITY,
        };

        let mut datasets = Vec::new();
        for (at, list) in dataset_lists {
            for (i, node) in at.seq(list)?.iter().enumerate() {
                datasets.push(parse_dataset(&at.index(i), node, &larder, &mut warnings)?);
            }
        }
        // Without a model, a dataset's bucket_tolerance is the only statement of divisibility.
        let divisibility = match (&arch, larder_divisibility) {
            (None, None) => datasets
                .iter()
                .find_map(|d| d.bucket_tolerance)
                .unwrap_or(divisibility),
            _ => divisibility,
        };
        Ok(Config {
            source: path.to_path_buf(),
            datasets,
            divisibility,
            arch: arch.map(|(a, _)| a),
            warnings,
        })
    }
}

/// Checks the top level of a job file: its keys, and the value of `job`.
fn job_file_keys(
    path: &Path,
    entries: &[(Node, Node)],
    warnings: &mut Vec<ConfigWarning>,
) -> Result<()> {
    for (key, value) in entries {
        let name = key.as_key().unwrap_or_default();
        let at = At::root(path, name);
        match name {
            "job" => {
                // AI Toolkit refuses other job types; larder only reads the datasets, so a
                // warning is enough to point at the typo.
                let job = at.string(value)?;
                if !keys::JOB_TYPES.contains(&job.as_str()) {
                    warnings.push(ConfigWarning::new(
                        &at,
                        value.line,
                        format!(
                            "AI Toolkit knows no job type {job:?}{}",
                            keys::hint(&job, keys::JOB_TYPES)
                        ),
                    ));
                }
            }
            "datasets" | "model" => warnings.push(ConfigWarning::new(
                &at,
                key.line,
                format!(
                    "ignored in an AI Toolkit job file: larder reads `config.process[].{name}`"
                ),
            )),
            _ if !keys::JOB_FILE.contains(&name) => {
                warnings.push(keys::unknown_in(&at, key, keys::JOB_FILE));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The error for a job file none of whose processes has a `datasets` list. It names the process
/// most likely meant (one with a key close to `datasets`, else the first) and lists its keys.
fn no_datasets_in_processes(pat: &At<'_>, list: &Node, processes: &[Node]) -> Error {
    let near_miss = |p: &Node| match &p.value {
        yaml::Value::Map(entries) => entries.iter().any(|(k, _)| {
            keys::did_you_mean(k.as_key().unwrap_or_default(), &["datasets"]).is_some()
        }),
        _ => false,
    };
    let Some((i, p)) = processes
        .iter()
        .enumerate()
        .find(|(_, p)| near_miss(p))
        .or_else(|| processes.iter().enumerate().next())
    else {
        return pat.error(
            list,
            "is empty: a job file needs at least one process with `datasets`",
        );
    };
    pat.index(i).error(
        p,
        format!(
            "no `datasets` list in this process{}",
            found_keys(p, "datasets", keys::PROCESS)
        ),
    )
}

/// "; keys found: `a`, `b` (did you mean `wanted` for `b`?)", describing the mapping `node` that
/// lacks the key `wanted`. Other typos in it get their own warnings.
fn found_keys(node: &Node, wanted: &str, known: &[&str]) -> String {
    let yaml::Value::Map(entries) = &node.value else {
        return String::new();
    };
    let names: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_key()).collect();
    if names.is_empty() {
        return "; the mapping is empty".into();
    }
    let listed = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    // A key that is not valid here and is close to `wanted` is the likely typo.
    let typo = names
        .iter()
        .find(|n| !known.contains(n) && keys::did_you_mean(n, &[wanted]).is_some());
    match typo {
        Some(t) => format!("; keys found: {listed} (did you mean `{wanted}` for `{t}`?)"),
        None => format!("; keys found: {listed}"),
    }
}

/// Reads the `larder:` section: the dataset defaults it sets (`temporal_compression` among
/// them), and `divisibility` and `raw_control_images` when it states them (they override what the model implies).
fn larder_section(at: &At<'_>, node: &Node) -> Result<(LarderDefaults, Option<u32>, Option<bool>)> {
    let mut defaults = LarderDefaults::default();
    let mut divisibility = None;
    let mut raw_control_images = None;
    for (k, v) in at.map(node)? {
        let key = k.as_key().unwrap_or_default();
        let a = at.child(key);
        match key {
            "seed" => defaults.seed = a.int(v, 0, i64::MAX)? as u64,
            "divisibility" => divisibility = Some(a.uint(v, 1, 1024)?),
            "raw_control_images" => raw_control_images = Some(a.bool(v)?),
            "temporal_compression" => defaults.temporal_compression = Some(a.uint(v, 1, 64)?),
            "max_image_pixels" => defaults.max_image_pixels = max_image_pixels(&a, v)?,
            "bucket_strategy" | "kohya_buckets" | "bucket_list" => {}
            // Where `python -m larder.aitk` keeps the job's store (it reads the key itself);
            // checked here so that a wrong type is an error from every command alike.
            "store" => {
                a.string(v)?;
            }
            // larder's own section: an unknown key here is surely a mistake, so it is an error
            // rather than a warning.
            _ => {
                return Err(a.error(
                    k,
                    format!(
                        "unknown larder key{}; expected one of {}",
                        keys::hint(key, keys::LARDER),
                        keys::LARDER.join(", ")
                    ),
                ));
            }
        }
    }
    let strategy = parse_bucket_strategy(
        at,
        node.get("bucket_strategy"),
        node.get("kohya_buckets"),
        node.get("bucket_list"),
    )?;
    if let Some(strategy) = strategy {
        defaults.bucket_strategy = strategy;
    }
    Ok((defaults, divisibility, raw_control_images))
}

/// Resolves a path written in a config: absolute paths as they are; relative ones beside the
/// config file when something exists there, else relative to the current directory (where AI
/// Toolkit resolves them).
pub(crate) fn resolve_path(config_file: &Path, written: &str) -> PathBuf {
    let p = Path::new(written);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let base = if config_file.is_dir() {
        Some(config_file)
    } else {
        config_file.parent()
    };
    if let Some(beside) = base.map(|b| b.join(p))
        && beside.exists()
    {
        return beside;
    }
    p.to_path_buf()
}
