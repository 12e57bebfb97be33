//! The S3 client behind [`Remote`], through `object_store`.

use std::sync::Arc;

use super::RemoteError;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, WriteMultipart,
};

/// The user metadata key holding a `.npy` object's BLAKE3 checksum.
const CHECKSUM_KEY: &str = "b3";

/// Objects larger than this go up in parts (S3 takes at most 5 GB in one
/// PUT); a multipart upload is published whole on completion, like a PUT.
const SINGLE_PUT_MAX: usize = 1 << 30;
const PART_SIZE: usize = 64 << 20;

/// A cache prefix in an S3-compatible bucket, used from blocking code.
#[derive(Debug)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// `s3://bucket/prefix`, as given (for messages).
    url: String,
    bucket: String,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    /// Opens `s3://bucket/prefix` (or `s3a://`) and checks it answers with
    /// one listing, so a wrong bucket, endpoint or key fails before any work.
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        let bad = |why: &str| RemoteError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3a://"))
            .ok_or_else(|| bad("only s3:// URLs name an object store"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket: write s3://BUCKET/PREFIX"));
        }
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .map_err(|e| bad(&format!("the prefix is not a valid object path: {e}")))?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        builder = with_shared_config(builder, &|k| std::env::var(k).ok());
        let store = builder.build().map_err(|e| bad(&e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("object-store")
            .enable_all()
            .build()
            .map_err(RemoteError::Runtime)?;
        let remote = Remote {
            store: Arc::new(store),
            prefix,
            url: url.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            runtime,
        };
        remote
            .runtime
            .block_on(remote.store.list_with_delimiter(Some(&remote.prefix)))
            .map_err(|e| RemoteError::Unreachable {
                url: remote.url.clone(),
                why: root_cause(&e),
            })?;
        Ok(remote)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The prefix inside the bucket (`""` for the bucket's root).
    pub fn prefix(&self) -> &str {
        self.prefix.as_ref()
    }

    /// The object `rel` (a `/`-separated path under the prefix).
    fn path(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// `s3://bucket/prefix/rel`, for messages.
    pub fn describe(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    /// The bytes of `.npy` object `rel`, checked against the checksum it
    /// was stored with; `Ok(None)` if there is no such object. A mismatch
    /// (or an object without a checksum) deletes the object and says why.
    pub fn get_verified(&self, rel: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.path(rel);
        let got = self.runtime.block_on(async {
            let result = self.store.get(&path).await?;
            let sum = result
                .attributes
                .get(&Attribute::Metadata(CHECKSUM_KEY.into()))
                .map(|v| v.as_ref().to_string());
            Ok::<_, object_store::Error>((sum, result.bytes().await?))
        });
        let (sum, bytes) = match got {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.describe(rel))),
        };
        let why = match sum {
            None => "has no checksum (not written by runner)",
            Some(sum) if blake3::hash(&bytes).to_hex().as_str() != sum.trim() => {
                "its bytes do not match their checksum (damaged or overwritten)"
            }
            Some(_) => return Ok(Some(bytes.to_vec())),
        };
        self.delete(rel);
        Err(format!("{} {why}; deleted", self.describe(rel)))
    }

    /// The bytes of object `rel`, unchecked (a memo, whose reader checks
    /// what it says); `None` if it is missing or cannot be read.
    pub fn get(&self, rel: &str) -> Option<Vec<u8>> {
        let path = self.path(rel);
        self.runtime
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .ok()
            .map(|b| b.to_vec())
    }

    /// Stores `.npy` bytes as object `rel` with their checksum, published
    /// whole (a reader sees the old object, or none, until it completes).
    pub fn put_verified(&self, rel: &str, bytes: &[u8]) -> std::io::Result<()> {
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(CHECKSUM_KEY.into()),
            blake3::hash(bytes).to_hex().to_string().into(),
        );
        self.put_with(rel, bytes, attributes)
    }

    /// Stores `bytes` as object `rel` (provenance JSON: no checksum).
    pub fn put(&self, rel: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.put_with(rel, bytes, Attributes::new())
    }

    fn put_with(&self, rel: &str, bytes: &[u8], attributes: Attributes) -> std::io::Result<()> {
        let path = self.path(rel);
        let result = self.runtime.block_on(async {
            if bytes.len() <= SINGLE_PUT_MAX {
                let options = PutOptions {
                    attributes,
                    ..PutOptions::default()
                };
                let payload = PutPayload::from(bytes.to_vec());
                self.store.put_opts(&path, payload, options).await.map(drop)
            } else {
                let options = PutMultipartOptions {
                    attributes,
                    ..PutMultipartOptions::default()
                };
                let upload = self.store.put_multipart_opts(&path, options).await?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                writer.write(bytes);
                writer.finish().await.map(drop)
            }
        });
        result
            .map_err(|e| std::io::Error::other(format!("cannot write {}: {e}", self.describe(rel))))
    }

    /// The names of the objects directly under folder `rel`.
    pub fn list(&self, rel: &str) -> std::io::Result<Vec<String>> {
        let path = self.path(rel);
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&path)))
            .map_err(|e| {
                std::io::Error::other(format!("cannot list {}: {e}", self.describe(rel)))
            })?;
        Ok(listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect())
    }

    /// Deletes object `rel`; a failure only leaves it for the next reader.
    pub fn delete(&self, rel: &str) {
        let _ = self.runtime.block_on(self.store.delete(&self.path(rel)));
    }

    /// Deletes every object under folder `rel` (best effort), in the
    /// store's batched deletes (S3: up to 1,000 objects per request, where
    /// a finished stage may leave hundreds of chunks).
    pub fn delete_folder(&self, rel: &str) {
        use futures_util::{StreamExt, TryStreamExt};
        let listed = self
            .store
            .list(Some(&self.path(rel)))
            .map_ok(|meta| meta.location)
            .boxed();
        let _ = self.runtime.block_on(
            self.store
                .delete_stream(listed)
                .try_collect::<Vec<ObjectPath>>(),
        );
    }
}

/// What went wrong, in a few words: the S3 error code of a refusal
/// (`NoSuchBucket`, `AccessDenied`, `InvalidAccessKeyId`, ...), else the
/// innermost error (`tcp connect error: Connection refused`).
fn root_cause(e: &object_store::Error) -> String {
    let text = e.to_string();
    if let Some(code) = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code)
    {
        return format!("the store answered {code}");
    }
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// Fills in from the AWS shared files what the environment did not set:
/// keys from `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`), region
/// and endpoint from `~/.aws/config` (or `AWS_CONFIG_FILE`), for profile
/// `AWS_PROFILE` (else `default`); and the standard endpoint variables the
/// AWS SDKs read. An `http://` endpoint (a local MinIO) is allowed as such.
fn with_shared_config(
    mut builder: AmazonS3Builder,
    env: &dyn Fn(&str) -> Option<String>,
) -> AmazonS3Builder {
    let home = env("HOME").unwrap_or_default();
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let read = |var: &str, default: &str| {
        let path = env(var).unwrap_or_else(|| format!("{home}/.aws/{default}"));
        std::fs::read_to_string(path).unwrap_or_default()
    };
    let credentials = ini_section(
        &read("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
        &profile,
    );
    let config_section = match profile.as_str() {
        "default" => "default".to_string(),
        p => format!("profile {p}"),
    };
    let config = ini_section(&read("AWS_CONFIG_FILE", "config"), &config_section);
    let from_files = |key: &str| {
        credentials
            .iter()
            .chain(&config)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    if env("AWS_ACCESS_KEY_ID").is_none() {
        if let (Some(id), Some(secret)) = (
            from_files("aws_access_key_id"),
            from_files("aws_secret_access_key"),
        ) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = from_files("aws_session_token") {
                builder = builder.with_token(token);
            }
        }
    }
    if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
        if let Some(region) = from_files("region") {
            builder = builder.with_region(region);
        }
    }
    let endpoint = env("AWS_ENDPOINT_URL_S3")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("AWS_ENDPOINT"))
        .or_else(|| from_files("endpoint_url"));
    if let Some(endpoint) = endpoint {
        if endpoint.starts_with("http://") && env("AWS_ALLOW_HTTP").is_none() {
            builder = builder.with_allow_http(true);
        }
        builder = builder.with_config(AmazonS3ConfigKey::Endpoint, endpoint);
    }
    builder
}

/// The `key = value` lines of section `[name]` of an INI file (the AWS
/// shared files' format), keys lower-cased.
fn ini_section(text: &str, name: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
            continue;
        }
        if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_read_from_the_shared_credentials_file() {
        let text = "[default]\naws_access_key_id = AK1\n\n[ci]\n# comment\nAWS_ACCESS_KEY_ID=AK2\naws_secret_access_key = s2\n";
        assert_eq!(
            ini_section(text, "ci"),
            [
                ("aws_access_key_id".to_string(), "AK2".to_string()),
                ("aws_secret_access_key".to_string(), "s2".to_string())
            ]
        );
        assert_eq!(ini_section(text, "default").len(), 1);
        assert!(ini_section(text, "other").is_empty());
    }

    #[test]
    fn urls_other_than_s3_are_refused_with_the_form_to_use() {
        for url in ["gs://bucket/x", "s3://", "/tmp/cache"] {
            let err = Remote::open(url).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--cache {url}:")), "{err}");
        }
    }
}
