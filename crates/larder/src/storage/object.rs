//! [`Storage`] over the `object_store` crate: S3 and S3-compatible servers, Google Cloud
//! Storage, Azure Blob Storage, and read-only HTTP(S).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart};

use super::{RemoteOptions, Storage};
use crate::{Error, Result};

/// Files above this size are uploaded in parts, several at once.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Size of one uploaded part (S3 needs at least 5 MiB for every part but the last).
const PART_BYTES: usize = 16 << 20;
/// Parts in flight at once during one upload.
const PARTS_IN_FLIGHT: usize = 4;

/// Objects under a URL such as `s3://bucket/prefix`, `gs://bucket/prefix`,
/// `az://container/prefix` or `https://host/prefix`.
///
/// Requests retry with exponential backoff (connection failures, timeouts, 5xx answers) until
/// [`RemoteOptions::retries`] or [`RemoteOptions::retry_timeout`] runs out; the error then names
/// the object's URL.
#[derive(Debug)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    /// Dropped only in the process that made it (see `Drop`).
    runtime: std::mem::ManuallyDrop<tokio::runtime::Runtime>,
    /// The process that made the runtime: its threads do not exist in a forked child.
    pid: u32,
}

impl ObjectStorage {
    /// Connects to the store at `url` (nothing is requested until the first call).
    pub fn new(url: &str, options: &RemoteOptions) -> Result<ObjectStorage> {
        let invalid = |message: String| Error::InvalidArgument {
            name: "url",
            message: format!("{url}: {message}"),
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let retry = RetryConfig {
            max_retries: options.retries,
            retry_timeout: options.retry_timeout,
            ..RetryConfig::default()
        };
        let client = |endpoint: Option<&str>| {
            let mut c = ClientOptions::new()
                .with_timeout(options.request_timeout)
                .with_connect_timeout(options.connect_timeout);
            // An endpoint given as http:// (a server on the local network or loopback) is
            // meant to be used as such.
            if endpoint.is_some_and(|e| e.starts_with("http://")) || parsed.scheme() == "http" {
                c = c.with_allow_http(true);
            }
            c
        };
        let config = |key: &str| -> Option<String> {
            options
                .config
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        let build_error = |e: object_store::Error| invalid(e.to_string());
        // Each cloud's builder takes its own configuration keys, parsed from their names, and
        // the same retry and client settings.
        macro_rules! cloud {
            ($builder:expr, $endpoint:expr) => {{
                let mut b = $builder.with_url(url);
                for (k, v) in &options.config {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
                let built = b
                    .with_retry(retry.clone())
                    .with_client_options(client($endpoint))
                    .build()
                    .map_err(build_error)?;
                Arc::new(built) as Arc<dyn ObjectStore>
            }};
        }
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => {
                let endpoint = config("aws_endpoint")
                    .or_else(|| config("aws_endpoint_url"))
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                    .or_else(|| std::env::var("AWS_ENDPOINT").ok());
                cloud!(
                    object_store::aws::AmazonS3Builder::from_env(),
                    endpoint.as_deref()
                )
            }
            "gs" => cloud!(
                object_store::gcp::GoogleCloudStorageBuilder::from_env(),
                None
            ),
            "az" | "azure" | "abfs" | "abfss" => {
                cloud!(object_store::azure::MicrosoftAzureBuilder::from_env(), None)
            }
            "http" | "https" => {
                // The origin is the store; the URL's path is the prefix of its objects.
                let origin = parsed[..url::Position::BeforePath].to_string();
                Arc::new(
                    object_store::http::HttpBuilder::new()
                        .with_url(origin)
                        .with_retry(retry.clone())
                        .with_client_options(client(None))
                        .build()
                        .map_err(build_error)?,
                )
            }
            other => {
                return Err(invalid(format!(
                    "unsupported scheme {other:?}: use s3://, gs://, az://, http:// or https://"
                )));
            }
        };
        // For the cloud schemes the host is the bucket (or container), for http(s) the origin:
        // either way the URL's path is the prefix of the store's objects.
        let prefix = ObjectPath::parse(parsed.path().trim_matches('/'))
            .map_err(|e| invalid(format!("bad path: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("larder-remote")
            .enable_all()
            .build()
            .map_err(|e| invalid(format!("cannot start the I/O runtime: {e}")))?;
        Ok(ObjectStorage {
            store,
            prefix,
            url: url.trim_end_matches('/').to_owned(),
            runtime: std::mem::ManuallyDrop::new(runtime),
            pid: std::process::id(),
        })
    }

    /// Refuses to work in a process forked after the I/O runtime was made: its threads are the
    /// parent's, and waiting on them would hang.
    fn checked(&self, key: &str) -> Result<()> {
        if std::process::id() != self.pid {
            return Err(Error::remote(
                self.url(key),
                "this store was opened in another process (before a fork): open it again in this process",
            ));
        }
        Ok(())
    }

    /// Runs the request `work` on `key` on the I/O runtime.
    fn run<T>(
        &self,
        key: &str,
        work: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        self.checked(key)?;
        self.runtime.block_on(work).map_err(|e| self.error(key, e))
    }

    fn path(&self, key: &str) -> ObjectPath {
        key.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }

    /// The error for a failed request on `key`.
    fn error(&self, key: &str, e: object_store::Error) -> Error {
        if matches!(e, object_store::Error::NotFound { .. }) {
            return super::backend::not_found(self.url(key));
        }
        Error::Remote {
            url: self.url(key),
            message: format!(
                "{e}; check the endpoint and credentials (docs/remote.md), or raise LARDER_REMOTE_RETRY_TIMEOUT when the service is slow to return"
            ),
            source: Some(Box::new(e)),
        }
    }
}

impl Drop for ObjectStorage {
    fn drop(&mut self) {
        // In a forked child the runtime's threads are the parent's: dropping it would wait for
        // them forever, so the child leaves it (its memory goes with the process).
        if std::process::id() == self.pid {
            // SAFETY: dropped once, here, and never used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.runtime) };
        }
    }
}

impl Storage for ObjectStorage {
    fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        self.run(key, async {
            let got = self.store.get(&path).await?;
            got.bytes().await
        })
        .map(|b| b.to_vec())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.path(key);
        let want = range.end.saturating_sub(range.start);
        let bytes = self.run(key, self.store.get_range(&path, range.clone()))?;
        // A server may answer a range past the end with what it has: a short answer means the
        // object is not what the catalog describes.
        if bytes.len() as u64 != want {
            return Err(Error::remote(
                self.url(key),
                format!(
                    "asked for bytes {}..{}, got {} bytes: the object is shorter than the catalog says (altered or truncated)",
                    range.start,
                    range.end,
                    bytes.len()
                ),
            ));
        }
        Ok(bytes.to_vec())
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.run(key, self.store.head(&self.path(key))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if super::is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let payload = object_store::PutPayload::from(bytes.to_vec());
        self.run(key, self.store.put(&self.path(key), payload))
            .map(drop)
    }

    fn put_file(&self, key: &str, source: &Path) -> Result<()> {
        let len = std::fs::metadata(source)
            .map_err(|e| Error::io(source, e))?
            .len();
        if len <= MULTIPART_THRESHOLD {
            let bytes = std::fs::read(source).map_err(|e| Error::io(source, e))?;
            return self.put(key, &bytes);
        }
        let path = self.path(key);
        self.checked(key)?;
        self.runtime.block_on(async {
            let upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| self.error(key, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut file = std::fs::File::open(source).map_err(|e| Error::io(source, e))?;
            let mut buf = vec![0u8; PART_BYTES];
            loop {
                let n = std::io::Read::read(&mut file, &mut buf).map_err(|e| Error::io(source, e));
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(e);
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = writer.abort().await;
                    return Err(self.error(key, e));
                }
                writer.write(&buf[..n]);
            }
            // An upload that fails is aborted by WriteMultipart, so no parts are left billed.
            writer
                .finish()
                .await
                .map(drop)
                .map_err(|e| self.error(key, e))
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        // Listing works by folder: list the prefix's folder, keep keys that start with it.
        let (folder, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let base = self.path(folder);
        let root = self.prefix.clone();
        let mut out = self.run(prefix, async {
            let mut stream = self.store.list(Some(&base));
            let mut out = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                let key: Vec<_> = meta
                    .location
                    .prefix_match(&root)
                    .map(|parts| parts.map(|p| p.as_ref().to_owned()).collect())
                    .unwrap_or_default();
                out.push((key.join("/"), meta.size));
            }
            Ok::<_, object_store::Error>(out)
        })?;
        out.retain(|(k, _)| k.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.run(key, self.store.delete(&self.path(key))) {
            Err(e) if !super::is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    fn copy(&self, from: &str, to: &str) -> Result<()> {
        self.run(from, self.store.copy(&self.path(from), &self.path(to)))
    }
}
