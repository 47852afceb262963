//! How a remote store is reached and cached: defaults, environment variables, and the cache
//! folder each process uses.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// Settings for stores in object storage. [`RemoteOptions::from_env`] reads the `LARDER_*`
/// variables below; credentials and endpoints come from each service's standard variables
/// (`AWS_*`, `GOOGLE_*`, `AZURE_*`; see docs/remote.md).
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Folder of the local cache (`LARDER_CACHE_DIR`); by default `$XDG_CACHE_HOME/larder`, else
    /// `~/.cache/larder`. Each store and each local rank get their own subfolder.
    pub cache_dir: Option<PathBuf>,
    /// Bytes the cache may hold (`LARDER_CACHE_LIMIT`, e.g. `50GiB`). Least-recently-used data
    /// is evicted, never data a queued batch still needs; a limit smaller than one batch only
    /// makes the cache hold that batch while it is read.
    pub cache_limit: u64,
    /// Bytes of upcoming batches fetched ahead of the reader (`LARDER_PREFETCH`, e.g. `512MiB`).
    pub prefetch_bytes: u64,
    /// Requests in flight at once (`LARDER_REMOTE_CONCURRENCY`).
    pub concurrency: usize,
    /// Tries of one request after the first (`LARDER_REMOTE_RETRIES`), with exponential backoff.
    pub retries: usize,
    /// Time after which a request is no longer retried (`LARDER_REMOTE_RETRY_TIMEOUT`, seconds).
    pub retry_timeout: Duration,
    /// Time one request may take (`LARDER_REMOTE_TIMEOUT`, seconds).
    pub request_timeout: Duration,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Further settings passed to the object store's builder by name, such as
    /// `("aws_endpoint", "http://127.0.0.1:9000")` or `("aws_region", "eu-west-1")`; the
    /// names are object_store's configuration keys.
    pub config: Vec<(String, String)>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            cache_dir: None,
            cache_limit: 50 << 30,
            prefetch_bytes: 512 << 20,
            concurrency: 8,
            retries: 10,
            retry_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            config: Vec::new(),
        }
    }
}

impl RemoteOptions {
    /// The defaults, overridden by the `LARDER_*` environment variables that are set.
    pub fn from_env() -> Result<RemoteOptions> {
        RemoteOptions::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables looked up through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<RemoteOptions> {
        let mut options = RemoteOptions::default();
        let seconds = |name: &'static str, text: &str| -> Result<Duration> {
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| Error::InvalidArgument {
                    name,
                    message: format!("{text:?} is not a number of seconds"),
                })
        };
        let count = |name: &'static str, text: &str| -> Result<usize> {
            text.trim().parse().map_err(|_| Error::InvalidArgument {
                name,
                message: format!("{text:?} is not a whole number"),
            })
        };
        if let Some(dir) = lookup("LARDER_CACHE_DIR").filter(|d| !d.is_empty()) {
            options.cache_dir = Some(PathBuf::from(dir));
        }
        if let Some(v) = lookup("LARDER_CACHE_LIMIT") {
            options.cache_limit = crate::parse_size(&v)?;
        }
        if let Some(v) = lookup("LARDER_PREFETCH") {
            options.prefetch_bytes = crate::parse_size(&v)?;
        }
        if let Some(v) = lookup("LARDER_REMOTE_CONCURRENCY") {
            options.concurrency = count("LARDER_REMOTE_CONCURRENCY", &v)?.max(1);
        }
        if let Some(v) = lookup("LARDER_REMOTE_RETRIES") {
            options.retries = count("LARDER_REMOTE_RETRIES", &v)?;
        }
        if let Some(v) = lookup("LARDER_REMOTE_RETRY_TIMEOUT") {
            options.retry_timeout = seconds("LARDER_REMOTE_RETRY_TIMEOUT", &v)?;
        }
        if let Some(v) = lookup("LARDER_REMOTE_TIMEOUT") {
            options.request_timeout = seconds("LARDER_REMOTE_TIMEOUT", &v)?;
        }
        Ok(options)
    }

    /// The cache folder for the store at `url`: one per store (a hash of its URL) and, under
    /// torchrun, one per local rank, so that no two processes share one.
    pub(crate) fn cache_folder(&self, url: &str) -> PathBuf {
        let base = self.cache_dir.clone().unwrap_or_else(default_cache_base);
        let id = blake3::hash(url.trim_end_matches('/').as_bytes()).to_hex();
        let rank = std::env::var("LOCAL_RANK").unwrap_or_else(|_| "0".into());
        base.join("stores")
            .join(&id.as_str()[..24])
            .join(format!("rank-{rank}"))
    }
}

fn default_cache_base() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("larder");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(home).join(".cache").join("larder");
    }
    std::env::temp_dir().join("larder-cache")
}

#[cfg(test)]
mod tests {
    use super::RemoteOptions;

    #[test]
    fn environment_overrides_defaults_and_nonsense_is_refused() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let o = RemoteOptions::from_lookup(env(&[
            ("LARDER_CACHE_LIMIT", "2GiB"),
            ("LARDER_PREFETCH", "64M"),
            ("LARDER_REMOTE_RETRIES", "3"),
            ("LARDER_REMOTE_RETRY_TIMEOUT", "1.5"),
        ]))
        .expect("valid settings");
        assert_eq!(o.cache_limit, 2 << 30);
        assert_eq!(o.prefetch_bytes, 64 << 20);
        assert_eq!(o.retries, 3);
        assert_eq!(o.retry_timeout.as_millis(), 1500);
        assert_eq!(o.concurrency, RemoteOptions::default().concurrency);
        for bad in [
            &[("LARDER_CACHE_LIMIT", "lots")][..],
            &[("LARDER_REMOTE_RETRY_TIMEOUT", "-1")][..],
            &[("LARDER_REMOTE_RETRIES", "many")][..],
        ] {
            let err = RemoteOptions::from_lookup(env(bad)).expect_err("refused");
            assert!(err.to_string().contains(bad[0].1), "{err}");
        }
    }
}
