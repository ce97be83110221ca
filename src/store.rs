//! Object stores from URLs: the only module that builds an `ObjectStore`. Everything else
//! takes a [`Location`] (a store plus a prefix) and registers it with DataFusion from here.
//!
//! Supported URLs: `file:///abs/path` (and plain paths; read by mapping, see
//! [`mapped`]), `memory://name` (one in-process
//! store per name) and `s3://bucket/prefix`, configured from the usual `AWS_*` variables.

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};
use url::Url;

use crate::error::{Error, Result};

#[cfg(unix)]
mod mapped;

/// A place in an object store: the store, the URL of its root and a prefix inside it.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    /// `scheme://authority`, how DataFusion finds the store.
    pub root: ObjectStoreUrl,
    pub prefix: Path,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url())
    }
}

impl Location {
    /// The location's URL without a trailing slash.
    pub fn url(&self) -> String {
        // `file:///`, `s3://bucket/`: the root always ends with exactly one slash.
        let root = self.root.as_str();
        if self.prefix.as_ref().is_empty() {
            root.strip_suffix('/').unwrap_or(root).to_string()
        } else {
            format!("{root}{}", self.prefix)
        }
    }

    /// The file this location names, for a location on the local file system.
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        (self.root.as_str() == "file:///").then(|| FsPath::new("/").join(self.prefix.as_ref()))
    }

    /// A location below this one; `rel` is a `/`-separated relative path.
    pub fn child(&self, rel: &str) -> Location {
        let mut prefix = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.clone().join(part);
        }
        Location {
            store: Arc::clone(&self.store),
            root: self.root.clone(),
            prefix,
        }
    }

    /// Makes the store reachable from SQL run in `ctx`.
    pub fn register(&self, ctx: &SessionContext) {
        ctx.runtime_env()
            .register_object_store(self.root.as_ref(), Arc::clone(&self.store));
    }
}

/// Turns what a user wrote (a URL or a path) into an absolute URL. Relative paths are
/// resolved against `base` (the job file's folder, or the working directory on the CLI).
pub fn resolve_url(text: &str, base: &FsPath) -> Result<String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::Url {
            url: text.into(),
            message: "empty".into(),
        });
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return match scheme {
            "s3" | "memory" => Ok(text.trim_end_matches('/').to_string()),
            "file" => {
                let url = Url::parse(text).map_err(|e| Error::Url {
                    url: text.into(),
                    message: e.to_string(),
                })?;
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(Error::Url {
                        url: text.into(),
                        message: "file URLs must be absolute (file:///path); write a plain relative path instead".into(),
                    });
                }
                Ok(text.trim_end_matches('/').to_string())
            }
            other => Err(Error::Url {
                url: text.into(),
                message: format!("unsupported scheme `{other}` (expected s3, file or memory)"),
            }),
        };
    }
    let path = FsPath::new(text);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let base = if base.as_os_str().is_empty() {
            FsPath::new(".")
        } else {
            base
        };
        let base = std::path::absolute(base).map_err(|e| Error::Url {
            url: text.into(),
            message: e.to_string(),
        })?;
        base.join(path)
    };
    let abs = normalize(&abs);
    let url = Url::from_directory_path(&abs).map_err(|_| Error::Url {
        url: text.into(),
        message: "not an absolute path".into(),
    })?;
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(p: &FsPath) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn registry() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// Opens the location an absolute URL names. Stores are built once per scheme and
/// authority in a process, so two locations in one bucket share one client.
pub fn open(url: &str) -> Result<Location> {
    let bad = |message: String| Error::Url {
        url: url.to_string(),
        message,
    };
    let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let authority = parsed.host_str().unwrap_or("").to_string();
    let root_text = format!("{}://{}", parsed.scheme(), authority);
    let root = ObjectStoreUrl::parse(&root_text).map_err(|e| bad(e.to_string()))?;
    let mut stores = registry().lock().expect("store registry lock");
    let store = match stores.get(&root_text) {
        Some(s) => Arc::clone(s),
        None => {
            let store: Arc<dyn ObjectStore> = match parsed.scheme() {
                #[cfg(unix)]
                "file" if mapped::enabled() => Arc::new(mapped::MappedFiles::default()),
                "file" => Arc::new(LocalFileSystem::new()),
                "memory" => Arc::new(InMemory::new()),
                "s3" => {
                    if authority.is_empty() {
                        return Err(bad("an s3 URL needs a bucket: s3://bucket/prefix".into()));
                    }
                    if let Some(missing) = missing_credentials() {
                        return Err(Error::Usage(format!("{url}: {missing}")));
                    }
                    Arc::new(
                        s3_builder(&authority)
                            .build()
                            .map_err(|e| bad(e.to_string()))?,
                    )
                }
                other => return Err(bad(format!("unsupported scheme `{other}`"))),
            };
            stores.insert(root_text.clone(), Arc::clone(&store));
            store
        }
    };
    let prefix = Path::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
    Ok(Location {
        store,
        root,
        prefix,
    })
}

/// An S3 client configured from the environment: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`
/// (or `AWS_ENDPOINT`), `AWS_ALLOW_HTTP`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` (path style
/// is the default, as MinIO needs), with bounded retries and timeouts.
fn s3_builder(bucket: &str) -> AmazonS3Builder {
    let retry = RetryConfig {
        max_retries: env_u64("RECON_S3_MAX_RETRIES", 5) as usize,
        retry_timeout: Duration::from_secs(env_u64("RECON_S3_RETRY_TIMEOUT_SECS", 120)),
        ..Default::default()
    };
    // Timeouts go through the config keys so that the client options read from the
    // environment (AWS_ALLOW_HTTP and friends) are kept.
    let connect = env_u64("RECON_S3_CONNECT_TIMEOUT_SECS", 10);
    let timeout = env_u64("RECON_S3_TIMEOUT_SECS", 60);
    let builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            format!("{connect}s"),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            format!("{timeout}s"),
        );
    // Lock takeover needs If-Match; AWS_CONDITIONAL_PUT, when set, decides instead.
    if std::env::var_os("AWS_CONDITIONAL_PUT").is_some() {
        builder
    } else {
        builder.with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
    }
}

/// Credentials for an S3-compatible server of its own endpoint (MinIO, say) come from
/// the environment; without them the client would ask the cloud's metadata endpoint,
/// which such a server never has, and fail with an error about it. Say what to set
/// instead. (On AWS itself, without an endpoint, the instance or task role is used.)
fn missing_credentials() -> Option<String> {
    let set = |v: &str| std::env::var_os(v).is_some_and(|v| !v.is_empty());
    let endpoint = set("AWS_ENDPOINT_URL") || set("AWS_ENDPOINT");
    let other_source = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|v| set(v));
    if !endpoint || other_source {
        return None;
    }
    match (set("AWS_ACCESS_KEY_ID"), set("AWS_SECRET_ACCESS_KEY")) {
        (true, true) => None,
        (key, _) => Some(format!(
            "no S3 credentials for the endpoint in AWS_ENDPOINT_URL: set {} in the environment",
            if key {
                "AWS_SECRET_ACCESS_KEY"
            } else {
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials)"
            }
        )),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_base() {
        let u = resolve_url("../lake/", FsPath::new("/srv/jobs")).unwrap();
        assert_eq!(u, "file:///srv/lake");
        assert_eq!(
            resolve_url("s3://b/p/", FsPath::new("/x")).unwrap(),
            "s3://b/p"
        );
        assert!(resolve_url("file://rel/path", FsPath::new("/x")).is_err());
        assert!(resolve_url("gs://b", FsPath::new("/x")).is_err());
    }

    #[test]
    fn memory_locations_share_one_store() {
        let a = open("memory://shared-test/a").unwrap();
        let b = open("memory://shared-test/b").unwrap();
        assert!(Arc::ptr_eq(&a.store, &b.store));
        assert_eq!(a.child("x/y").url(), "memory://shared-test/a/x/y");
    }
}
