//! The cache's objects in S3-compatible storage (`--cache s3://bucket/prefix`):
//! AWS S3, MinIO, Ceph, R2, through `object_store`.
//!
//! Objects mirror the local layout under the prefix (`features/ab/<key>.npy`,
//! `features/ab/<key>.partial/<first>-<rows>.npy`, ...). A `.npy` object
//! carries its BLAKE3 checksum as user metadata (`x-amz-meta-b3`) rather
//! than in a second object: a PUT is atomic, so an object and the sum that
//! vouches for it appear together or not at all, and two writers of the
//! same chunk (a shard run twice) each leave a consistent object, the last
//! one winning. An object whose bytes do not match its sum (damaged, or
//! written by something else) is deleted and recomputed.
//!
//! Credentials and endpoint come from the standard places: `AWS_*`
//! environment variables (`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for
//! MinIO and the like), the shared credentials and config files
//! (`~/.aws/credentials`, `~/.aws/config`, `AWS_PROFILE`), then the
//! instance, container or web-identity (IRSA) credentials `object_store`
//! finds itself.
//!
//! The client is the `s3` feature (on by default); a build without it
//! refuses `s3://` caches, saying how to get one (`absent`).

#[cfg(not(feature = "s3"))]
mod absent;
#[cfg(feature = "s3")]
mod s3;

#[cfg(not(feature = "s3"))]
pub use absent::Remote;
#[cfg(feature = "s3")]
pub use s3::Remote;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("--cache {url}: {why}")]
    Url { url: String, why: String },
    #[error("cannot reach the feature cache {url}: {why}; check the bucket, AWS_ENDPOINT_URL and the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE)")]
    Unreachable { url: String, why: String },
    #[error("cannot start the object store's I/O threads: {0}")]
    Runtime(std::io::Error),
    #[error("--cache {url}: this runner was built without S3 support; build it with the default features (`cargo build --release`), or use a cache folder")]
    NotBuilt { url: String },
}
