//! Content-addressed feature store.
//!
//! Layout (DVC-style, sharded by the key's first two hex digits):
//!
//! ```text
//! <cache>/features/ab/<key>.npy          finished stage: rows in image order
//! <cache>/features/ab/<key>.json         what produced it (arch, view, rows)
//! <cache>/features/ab/<key>.npy.b3       its BLAKE3 checksum
//! <cache>/features/ab/<key>.partial/     chunks of an unfinished stage
//! <cache>/features/ab/<key>.lock         held while a process computes it
//! <cache>/memo/<hash>.json               weights fingerprints, image-set hashes
//! ```
//!
//! Every write goes to a temporary file that is renamed into place, so an
//! interrupted run leaves either a whole file or none. Every `.npy` has a
//! BLAKE3 checksum beside it (`<file>.npy.b3`), verified on each read: a
//! corrupt entry or chunk is reported, removed and recomputed. Processes
//! sharing a cache take a stage's lock before computing it
//! ([`crate::lock`]); the others wait and then read the finished entry.
//!
//! A cache in S3-compatible object storage (`--cache s3://bucket/prefix`,
//! [`remote`]) holds the same entries and chunks as objects under the
//! prefix; the local folder is then its read-through copy (and holds the
//! locks, which are per machine). Every entry, chunk and memo is written
//! to both and read from the local copy first.
//!
//! `files` writes and reads the files (atomic writes, checksums, temporary
//! files of dead writers), `memo` remembers values computed from files,
//! `maintenance` is `runner cache verify` and `runner cache gc`.

mod files;
mod maintenance;
mod memo;
mod remote;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::lock::{Attempt, LockFile};
use crate::npy::Matrix;
use files::{read_verified, remove_dead_writers_temp_files, remove_verified, write_verified};
pub use files::{remove_stale_temp_files, write_atomic, STALE_TEMP_AGE};
pub use maintenance::{Collection, Verification};
pub use remote::{Remote, RemoteError};

/// Where a cached `.npy` was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    LocalCopy,
    /// Just fetched from the remote store.
    Store,
}

#[derive(Debug, Clone)]
pub struct FeatureCache {
    /// The cache folder, or the local copy of a remote cache.
    root: PathBuf,
    remote: Option<Arc<Remote>>,
}

impl FeatureCache {
    pub fn new(root: impl Into<PathBuf>) -> FeatureCache {
        FeatureCache {
            root: root.into(),
            remote: None,
        }
    }

    /// A cache in object storage, read through a local copy under
    /// `copies/<bucket>/<prefix>`.
    pub fn with_remote(remote: Remote, copies: &Path) -> FeatureCache {
        let root = copies.join(remote.bucket()).join(remote.prefix());
        FeatureCache {
            root,
            remote: Some(Arc::new(remote)),
        }
    }

    /// The local folder: the cache itself, or a remote cache's local copy.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the cache is, for messages: its folder or its `s3://` URL.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(r) => r.describe("").trim_end_matches('/').to_string(),
            None => self.root.display().to_string(),
        }
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    fn stem(&self, key: &str) -> PathBuf {
        self.root.join("features").join(&key[..2]).join(key)
    }

    /// A stage's object names under the remote prefix: `features/ab/<key>`.
    fn remote_stem(key: &str) -> String {
        format!("features/{}/{key}", &key[..2])
    }

    /// Fetches remote object `rel` into local file `path` (with its
    /// checksum beside it) unless the local copy has it; `Ok(None)` where
    /// neither has it. A damaged remote object is deleted and reported.
    fn fetch(&self, rel: &str, path: &Path) -> Result<Option<Source>, String> {
        if path.is_file() {
            return Ok(Some(Source::LocalCopy));
        }
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        match remote.get_verified(rel)? {
            None => Ok(None),
            Some(bytes) => {
                write_verified(path, &bytes)
                    .map_err(|e| format!("cannot keep a local copy of {rel}: {e}"))?;
                Ok(Some(Source::Store))
            }
        }
    }

    /// Reads `.npy` `path` (object `rel` of a remote cache) and checks it
    /// with `check` (`Err`: why it is unusable). A local copy that fails is
    /// replaced by the store's object and checked again (damage on this
    /// disk must not cost every machine the entry); what still fails is
    /// removed from both. `Ok(None)`: neither has it.
    fn read_checked(
        &self,
        rel: &str,
        path: &Path,
        check: impl Fn(Matrix) -> Result<Matrix, String>,
    ) -> Result<Option<Matrix>, String> {
        for attempt in 0..2 {
            let source = match self.fetch(rel, path)? {
                None => return Ok(None),
                Some(source) => source,
            };
            let why = match read_verified(path).and_then(&check) {
                Ok(m) => return Ok(Some(m)),
                Err(why) => why,
            };
            if attempt == 0 && source == Source::LocalCopy && self.remote.is_some() {
                remove_verified(path);
                continue;
            }
            self.discard(path, rel);
            return Err(why);
        }
        unreachable!("the loop returns")
    }

    /// Removes a damaged `.npy` from the local copy and the remote store.
    fn discard(&self, path: &Path, rel: &str) {
        remove_verified(path);
        if let Some(remote) = &self.remote {
            remote.delete(rel);
        }
    }

    /// Path of a finished stage's features.
    pub fn path(&self, key: &str) -> PathBuf {
        self.stem(key).with_extension("npy")
    }

    /// Whether the cache holds finished stage `key` (the local copy or the
    /// remote store; not checked against its checksum).
    pub fn contains(&self, key: &str) -> bool {
        if self.path(key).is_file() {
            return true;
        }
        let Some(remote) = &self.remote else {
            return false;
        };
        let name = format!("{key}.npy");
        remote
            .list(&format!("features/{}", &key[..2]))
            .is_ok_and(|names| names.contains(&name))
    }

    /// Loads a finished stage; `Ok(None)` on a miss. A corrupt file (bytes
    /// that do not match the checksum stored beside it, a bad header, a
    /// wrong row count, values that are not finite) is removed and reported
    /// as a miss with the reason, so the stage is recomputed.
    pub fn get(&self, key: &str, rows: usize) -> Result<Option<Matrix>, String> {
        let path = self.path(key);
        let rel = format!("{}.npy", Self::remote_stem(key));
        let check = |m: Matrix| match m {
            m if m.rows == rows && m.data.iter().all(|v| v.is_finite()) => Ok(m),
            m if m.rows == rows => Err(format!(
                "{} holds NaN or infinite values (damaged on disk?)",
                path.display()
            )),
            m => Err(format!(
                "{} holds {} rows, expected {rows}",
                path.display(),
                m.rows
            )),
        };
        self.read_checked(&rel, &path, check)
            .map_err(|why| match &self.remote {
                Some(remote) => format!(
                    "{why} (a copy of {}); removed, recomputing",
                    remote.describe(&rel)
                ),
                None => format!("{why}; removed, recomputing"),
            })
    }

    /// Stores a finished stage and its provenance, then drops its chunks.
    pub fn put(&self, key: &str, m: &Matrix, meta: &serde_json::Value) -> std::io::Result<()> {
        let meta = serde_json::to_vec_pretty(meta).expect("json serialises");
        let bytes = crate::npy::to_bytes(m);
        // The store first: what the local copy holds, the store has (a
        // kill in between leaves the copy short, never the store).
        if let Some(remote) = &self.remote {
            let stem = Self::remote_stem(key);
            remote.put(&format!("{stem}.json"), &meta)?;
            remote.put_verified(&format!("{stem}.npy"), &bytes)?;
            remote.delete_folder(&format!("{stem}.partial"));
        }
        write_atomic(&self.stem(key).with_extension("json"), &meta)?;
        write_verified(&self.path(key), &bytes)?;
        // The stage is safely stored; leftover chunks only cost disk space,
        // so failing to remove them must not fail the run.
        let _ = std::fs::remove_dir_all(self.partial_dir(key));
        Ok(())
    }

    fn partial_dir(&self, key: &str) -> PathBuf {
        self.stem(key).with_extension("partial")
    }

    /// Chunks are named by their first row and row count, so a chunk is
    /// only ever reused for exactly the rows it holds.
    fn chunk_path(&self, key: &str, first_row: usize, rows: usize) -> PathBuf {
        self.partial_dir(key)
            .join(Self::chunk_name(first_row, rows))
    }

    fn chunk_name(first_row: usize, rows: usize) -> String {
        format!("{first_row:09}-{rows}.npy")
    }

    fn remote_chunk(key: &str, first_row: usize, rows: usize) -> String {
        format!(
            "{}.partial/{}",
            Self::remote_stem(key),
            Self::chunk_name(first_row, rows)
        )
    }

    /// Rows `first_row..first_row + rows` of an unfinished stage, if an
    /// earlier (interrupted) run or another shard wrote them with `cols`
    /// columns.
    pub fn chunk(&self, key: &str, first_row: usize, rows: usize, cols: usize) -> Option<Matrix> {
        let path = self.chunk_path(key, first_row, rows);
        let rel = Self::remote_chunk(key, first_row, rows);
        let check = |m: Matrix| match m {
            m if m.rows == rows && m.cols == cols => Ok(m),
            _ => Err(String::new()),
        };
        // A chunk that fails is recomputed, never built into the entry.
        self.read_checked(&rel, &path, check).ok().flatten()
    }

    pub fn put_chunk(&self, key: &str, first_row: usize, m: &Matrix) -> std::io::Result<()> {
        let bytes = crate::npy::to_bytes(m);
        // The store first, as for a finished stage.
        if let Some(remote) = &self.remote {
            remote.put_verified(&Self::remote_chunk(key, first_row, m.rows), &bytes)?;
        }
        write_verified(&self.chunk_path(key, first_row, m.rows), &bytes)
    }

    /// The chunks of unfinished stage `key` that the local copy or the
    /// remote store holds, as (first row, rows), sorted: one listing each,
    /// so that only chunks that exist are fetched.
    pub fn chunks_present(&self, key: &str) -> std::io::Result<Vec<(usize, usize)>> {
        let mut names: Vec<String> = std::fs::read_dir(self.partial_dir(key))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(remote) = &self.remote {
            names.extend(remote.list(&format!("{}.partial", Self::remote_stem(key)))?);
        }
        let mut chunks: Vec<(usize, usize)> = names
            .iter()
            .filter_map(|n| {
                let (first, rows) = n.strip_suffix(".npy")?.split_once('-')?;
                Some((first.parse().ok()?, rows.parse().ok()?))
            })
            .filter(|&(_, rows)| rows > 0)
            .collect();
        chunks.sort_unstable();
        chunks.dedup();
        Ok(chunks)
    }

    /// Where the chunk holding rows `first_row..first_row + rows` goes.
    pub fn chunk_file(&self, key: &str, first_row: usize, rows: usize) -> PathBuf {
        self.chunk_path(key, first_row, rows)
    }

    /// Takes stage `key`'s lock to compute it, unless a live process holds
    /// it, and removes the temporary files that dead writers (a killed
    /// holder) left in the stage's folders. Shard processes write a
    /// stage's chunks without its lock, so live writers' files stay.
    ///
    /// The lock is a file in the local folder: with a remote cache it keeps
    /// the processes of one machine from computing a stage twice, not those
    /// of several (their duplicate work is harmless: same objects).
    pub fn lock_stage(&self, key: &str) -> std::io::Result<Attempt> {
        let attempt = LockFile::try_acquire(&self.stem(key).with_extension("lock"))?;
        if let Attempt::Acquired(_) = &attempt {
            remove_dead_writers_temp_files(&self.partial_dir(key), "");
            if let Some(dir) = self.stem(key).parent() {
                remove_dead_writers_temp_files(dir, key);
            }
        }
        Ok(attempt)
    }

    /// Whether a live process is computing stage `key`.
    pub fn stage_locked(&self, key: &str) -> bool {
        crate::lock::is_held(&self.stem(key).with_extension("lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::files::checksum_path;
    use super::*;

    #[test]
    fn a_byte_changed_inside_an_entry_or_a_chunk_is_caught_by_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path());
        let key = "abcdef0123";
        // Still a well-formed .npy of finite values after the change: only
        // the checksum can tell.
        let m = Matrix::new(4, 8, (0..32).map(|i| i as f32 + 1.0).collect());
        let flip = |path: &Path| {
            let mut bytes = std::fs::read(path).unwrap();
            let at = bytes.len() - 40;
            bytes[at] ^= 0x01;
            std::fs::write(path, bytes).unwrap();
        };
        cache.put(key, &m, &serde_json::json!({})).unwrap();
        flip(&cache.path(key));
        let err = cache.get(key, 4).unwrap_err();
        assert!(err.contains("do not match their checksum"), "{err}");
        assert!(!cache.contains(key));

        cache.put_chunk(key, 0, &m).unwrap();
        assert_eq!(cache.chunk(key, 0, 4, 8), Some(m.clone()));
        flip(&cache.chunk_path(key, 0, 4));
        assert_eq!(cache.chunk(key, 0, 4, 8), None);
        assert!(!cache.chunk_path(key, 0, 4).exists());
        assert!(!checksum_path(&cache.chunk_path(key, 0, 4)).exists());
    }

    #[test]
    fn corrupt_entry_is_removed_and_reported_as_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path());
        let key = "abcdef0123";
        let m = Matrix::new(2, 3, vec![1.0; 6]);
        cache.put(key, &m, &serde_json::json!({})).unwrap();
        assert_eq!(cache.get(key, 2).unwrap(), Some(m));
        std::fs::write(cache.path(key), b"garbage").unwrap();
        assert!(cache.get(key, 2).is_err());
        assert!(!cache.contains(key));
        assert_eq!(cache.get(key, 2).unwrap(), None);
    }

    #[test]
    fn entry_with_nan_is_removed_and_reported_as_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path());
        let key = "abcdef0124";
        let m = Matrix::new(2, 3, vec![1.0, 2.0, f32::NAN, 4.0, 5.0, 6.0]);
        cache.put(key, &m, &serde_json::json!({})).unwrap();
        let why = cache.get(key, 2).unwrap_err();
        assert!(why.contains("NaN"), "{why}");
        assert!(!cache.contains(key));
    }

    #[test]
    fn finishing_a_stage_drops_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path());
        let key = "ff00";
        let m = Matrix::new(1, 2, vec![1.0, 2.0]);
        cache.put_chunk(key, 0, &m).unwrap();
        assert_eq!(cache.chunk(key, 0, 1, 2), Some(m.clone()));
        assert_eq!(cache.chunk(key, 0, 1, 3), None, "wrong width is a miss");
        cache.put_chunk(key, 0, &m).unwrap();
        cache.put(key, &m, &serde_json::json!({})).unwrap();
        assert_eq!(cache.chunk(key, 0, 1, 2), None);
    }
}
