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
mod model;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

pub use dataset::{BucketStrategy, CacheOptions, DatasetConfig, LoaderOptions, Source};
pub use model::{DEFAULT_DIVISIBILITY, divisibility_for_arch};

use dataset::{LarderDefaults, parse_bucket_strategy, parse_dataset};
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
}

impl ConfigWarning {
    fn new(at: &At<'_>, line: u64, message: String) -> Self {
        ConfigWarning {
            path: at.file.to_path_buf(),
            line,
            key: at.key.clone(),
            message,
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
            message: e.to_string(),
        })?;
        let mut warnings = Vec::new();
        let file_at = At::root(path, "");
        let entries = file_at.map(&root)?;

        // Where the datasets and the model section are: an AI Toolkit job file keeps them in
        // config.process[*]; a plain file has them at the top.
        let mut dataset_lists: Vec<(At<'_>, &Node)> = Vec::new();
        let mut model: Option<(At<'_>, &Node)> = None;
        if let Some(config) = root.get("config") {
            let at = At::root(path, "config");
            let process = config.get("process").ok_or_else(|| {
                at.error(
                    config,
                    "an AI Toolkit job file needs `config.process`, a list of processes",
                )
            })?;
            let pat = at.child("process");
            for (i, p) in pat.seq(process)?.iter().enumerate() {
                let a = pat.index(i);
                if let Some(d) = p.get("datasets") {
                    dataset_lists.push((a.child("datasets"), d));
                }
                if model.is_none()
                    && let Some(m) = p.get("model")
                {
                    model = Some((a.child("model"), m));
                }
            }
        } else if let Some(d) = root.get("datasets") {
            dataset_lists.push((At::root(path, "datasets"), d));
            if let Some(m) = root.get("model") {
                model = Some((At::root(path, "model"), m));
            }
        }
        if dataset_lists.is_empty() {
            return Err(file_at.error(
                &root,
                "no datasets found: expected a top-level `datasets:` list or an AI Toolkit job file with `config.process[].datasets`",
            ));
        }
        for (key, _) in entries {
            let name = key.as_key().unwrap_or_default();
            if !matches!(
                name,
                "config" | "datasets" | "model" | "larder" | "job" | "meta"
            ) {
                warnings.push(ConfigWarning::new(
                    &At::root(path, name),
                    key.line,
                    "unknown top-level key, ignored".into(),
                ));
            }
        }

        let (larder, larder_divisibility) = match root.get("larder") {
            Some(node) => larder_section(&At::root(path, "larder"), node)?,
            None => (LarderDefaults::default(), None),
        };

        let arch = match &model {
            Some((at, node)) => Some(model::arch_of(at, node)?),
            None => None,
        };
        let divisibility = match (&larder_divisibility, &arch) {
            (Some(d), _) => *d,
            (None, Some((name, line))) => divisibility_for_arch(name).ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                line: *line,
                key: "model.arch".into(),
                message: format!(
                    "unknown architecture {name:?}: its bucket divisibility is not known; set `larder.divisibility` (16 for SD/SDXL-like VAEs, 32 for Flux, SD3, Qwen-Image)"
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

fn larder_section(at: &At<'_>, node: &Node) -> Result<(LarderDefaults, Option<u32>)> {
    let mut defaults = LarderDefaults::default();
    let mut divisibility = None;
    for (k, v) in at.map(node)? {
        let key = k.as_key().unwrap_or_default();
        let a = at.child(key);
        match key {
            "seed" => defaults.seed = a.int(v, 0, i64::MAX)? as u64,
            "divisibility" => divisibility = Some(a.uint(v, 1, 1024)?),
            "bucket_strategy" | "kohya_buckets" | "bucket_list" => {}
            _ => {
                return Err(a.error(
                    k,
                    "expected one of seed, divisibility, bucket_strategy, kohya_buckets, bucket_list",
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
    Ok((defaults, divisibility))
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
