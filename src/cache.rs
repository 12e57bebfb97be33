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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::lock::{Attempt, LockFile};
use crate::npy::{self, Matrix};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// flushed, then renamed over the target. The error names `path` and, for
/// a full disk, the bytes needed ([`crate::disk::write_error`]); no
/// temporary file is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    // Unique per process and write: threads of one process may write the
    // same file (two sweep members' memo entries) at once.
    let tmp = dir.join(format!(
        ".{file_name}{TEMP_MARK}{}-{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        crate::disk::write_error(path, bytes.len(), e)
    })
}

/// What marks [`write_atomic`]'s temporary files: `.<name>.tmp-<pid>-<n>`.
const TEMP_MARK: &str = ".tmp-";

/// Where the BLAKE3 checksum of a cached `.npy` is kept: `<file>.npy.b3`.
fn checksum_path(npy: &Path) -> PathBuf {
    let mut name = npy.file_name().unwrap_or_default().to_os_string();
    name.push(".b3");
    npy.with_file_name(name)
}

/// Writes a matrix as `.npy` with its checksum beside it (the checksum
/// first: a `.npy` never exists without the sum that vouches for it).
fn write_verified(path: &Path, m: &Matrix) -> std::io::Result<()> {
    let bytes = npy::to_bytes(m);
    write_atomic(
        &checksum_path(path),
        blake3::hash(&bytes).to_hex().as_bytes(),
    )?;
    write_atomic(path, &bytes)
}

/// Reads a cached `.npy` whose bytes match its stored checksum: a byte
/// changed on disk (or a file without a checksum) is an error, not data.
fn read_verified(path: &Path) -> Result<Matrix, String> {
    let sum_path = checksum_path(path);
    let want = std::fs::read_to_string(&sum_path).map_err(|_| {
        format!(
            "{} has no checksum ({} is missing)",
            path.display(),
            sum_path.display()
        )
    })?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if blake3::hash(&bytes).to_hex().as_str() != want.trim() {
        return Err(format!(
            "{}: its bytes do not match their checksum (changed on disk)",
            path.display()
        ));
    }
    npy::from_bytes(&bytes, path).map_err(|e| e.to_string())
}

fn remove_verified(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(checksum_path(path));
}

/// Removes the temporary files [`write_atomic`] leaves in `dir` when its
/// process is killed mid-write, once they are older than `min_age`: zero
/// for a folder no live process writes (a dead run's directory), more for
/// a shared cache folder, where another machine may be writing one now.
/// Returns the bytes freed.
pub fn remove_stale_temp_files(dir: &Path, min_age: Duration) -> u64 {
    remove_temp_files(dir, "", min_age)
}

/// [`remove_stale_temp_files`] of the files whose name starts with
/// `.{prefix}`.
fn remove_temp_files(dir: &Path, prefix: &str, min_age: Duration) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut freed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name
            .strip_prefix('.')
            .is_some_and(|n| n.starts_with(prefix))
            && name.contains(TEMP_MARK))
        {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        if age >= min_age && std::fs::remove_file(entry.path()).is_ok() {
            freed += meta.len();
        }
    }
    freed
}

/// Temporary files in a shared cache folder older than this belong to no
/// write in progress (a write takes seconds).
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// What says a file is unchanged: its absolute path, size, modification
/// time (nanoseconds) and, on Unix, inode (a file replaced by a rename is
/// another file even with the same size and time).
struct FileStamp {
    path: String,
    size: u64,
    modified_ns: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let path = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        let modified = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            path: path.to_str()?.to_string(),
            size: meta.len(),
            modified_ns: u64::try_from(modified.as_nanos()).ok()?,
            inode,
        })
    }
}

/// A memo file: what was computed from which files in which state.
#[derive(serde::Serialize, serde::Deserialize)]
struct Memo {
    kind: String,
    /// The first file (for a reader of the cache folder).
    first: String,
    files: usize,
    /// BLAKE3 of every file's size, modification time and inode, in order.
    state: String,
    value: String,
}

#[derive(Debug, Clone)]
pub struct FeatureCache {
    root: PathBuf,
}

impl FeatureCache {
    pub fn new(root: impl Into<PathBuf>) -> FeatureCache {
        FeatureCache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `compute()`'s value for the files at `paths`, remembered under
    /// `kind` while every file's size and modification time stay the same
    /// (what DVC's state database does for its hashes). A backbone's weights
    /// fingerprint reads and hashes every tensor (~0.25 s per file and run);
    /// hashing a Kaggle-sized image set reads ~1.5 GB. One memo file per
    /// kind and list of paths, overwritten when a file changes. A memo that
    /// cannot be read or written is ignored (recomputed).
    pub fn memoised<P: AsRef<Path> + Sync, E>(
        &self,
        kind: &str,
        paths: &[P],
        compute: impl FnOnce() -> Result<String, E>,
    ) -> Result<String, E> {
        use rayon::prelude::*;
        let Some(stamps) = paths
            .par_iter()
            .map(|p| FileStamp::of(p.as_ref()))
            .collect::<Option<Vec<FileStamp>>>()
        else {
            return compute();
        };
        let (mut names, mut states) = (blake3::Hasher::new(), blake3::Hasher::new());
        names.update(kind.as_bytes());
        for stamp in &stamps {
            names.update(b"\n").update(stamp.path.as_bytes());
            states.update(&stamp.size.to_le_bytes());
            states.update(&stamp.modified_ns.to_le_bytes());
            states.update(&stamp.inode.to_le_bytes());
        }
        let memo_path = self
            .root
            .join("memo")
            .join(format!("{}.json", &names.finalize().to_hex()[..32]));
        let state = states.finalize().to_hex().to_string();
        if let Some(value) = std::fs::read(&memo_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Memo>(&bytes).ok())
            .filter(|m| m.kind == kind && m.files == stamps.len() && m.state == state)
            .map(|m| m.value)
        {
            return Ok(value);
        }
        let value = compute()?;
        let memo = Memo {
            kind: kind.to_string(),
            first: stamps.first().map(|s| s.path.clone()).unwrap_or_default(),
            files: stamps.len(),
            state,
            value: value.clone(),
        };
        let _ = write_atomic(
            &memo_path,
            &serde_json::to_vec_pretty(&memo).expect("memo serialises"),
        );
        Ok(value)
    }

    fn stem(&self, key: &str) -> PathBuf {
        self.root.join("features").join(&key[..2]).join(key)
    }

    /// Path of a finished stage's features.
    pub fn path(&self, key: &str) -> PathBuf {
        self.stem(key).with_extension("npy")
    }

    pub fn contains(&self, key: &str) -> bool {
        self.path(key).is_file()
    }

    /// Loads a finished stage; `Ok(None)` on a miss. A corrupt file (bytes
    /// that do not match the checksum stored beside it, a bad header, a
    /// wrong row count, values that are not finite) is removed and reported
    /// as a miss with the reason, so the stage is recomputed.
    pub fn get(&self, key: &str, rows: usize) -> Result<Option<Matrix>, String> {
        let path = self.path(key);
        if !path.is_file() {
            return Ok(None);
        }
        match read_verified(&path) {
            Ok(m) if m.rows == rows && m.data.iter().all(|v| v.is_finite()) => Ok(Some(m)),
            Ok(m) if m.rows == rows => {
                remove_verified(&path);
                Err(format!(
                    "{} holds NaN or infinite values (damaged on disk?); removed, recomputing",
                    path.display()
                ))
            }
            Ok(m) => {
                remove_verified(&path);
                Err(format!(
                    "{} holds {} rows, expected {rows}; removed, recomputing",
                    path.display(),
                    m.rows
                ))
            }
            Err(e) => {
                remove_verified(&path);
                Err(format!("{e}; removed, recomputing"))
            }
        }
    }

    /// Stores a finished stage and its provenance, then drops its chunks.
    pub fn put(&self, key: &str, m: &Matrix, meta: &serde_json::Value) -> std::io::Result<()> {
        let meta = serde_json::to_vec_pretty(meta).expect("json serialises");
        write_atomic(&self.stem(key).with_extension("json"), &meta)?;
        write_verified(&self.path(key), m)?;
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
            .join(format!("{first_row:09}-{rows}.npy"))
    }

    /// Rows `first_row..first_row + rows` of an unfinished stage, if an
    /// earlier (interrupted) run wrote them with `cols` columns.
    pub fn chunk(&self, key: &str, first_row: usize, rows: usize, cols: usize) -> Option<Matrix> {
        let path = self.chunk_path(key, first_row, rows);
        if !path.is_file() {
            return None;
        }
        match read_verified(&path) {
            Ok(m) if m.rows == rows && m.cols == cols => Some(m),
            Ok(_) | Err(_) => {
                // Recomputed, never built into the finished entry.
                remove_verified(&path);
                None
            }
        }
    }

    pub fn put_chunk(&self, key: &str, first_row: usize, m: &Matrix) -> std::io::Result<()> {
        write_verified(&self.chunk_path(key, first_row, m.rows), m)
    }

    /// Where the chunk holding rows `first_row..first_row + rows` goes.
    pub fn chunk_file(&self, key: &str, first_row: usize, rows: usize) -> PathBuf {
        self.chunk_path(key, first_row, rows)
    }

    /// Takes stage `key`'s lock to compute it, unless a live process holds
    /// it. Once taken, nobody else writes the stage's files, so temporary
    /// files left there by a dead holder are removed.
    pub fn lock_stage(&self, key: &str) -> std::io::Result<Attempt> {
        let attempt = LockFile::try_acquire(&self.stem(key).with_extension("lock"))?;
        if let Attempt::Acquired(_) = &attempt {
            remove_temp_files(&self.partial_dir(key), "", Duration::ZERO);
            if let Some(dir) = self.stem(key).parent() {
                remove_temp_files(dir, key, Duration::ZERO);
            }
        }
        Ok(attempt)
    }

    /// Whether a live process is computing stage `key`.
    pub fn stage_locked(&self, key: &str) -> bool {
        crate::lock::is_held(&self.stem(key).with_extension("lock"))
    }

    /// Every stage the cache has files of (finished, partial or locked),
    /// by key, with its files.
    fn stages(&self) -> std::collections::BTreeMap<String, Vec<PathBuf>> {
        let mut stages = std::collections::BTreeMap::<String, Vec<PathBuf>>::new();
        let Ok(shards) = std::fs::read_dir(self.root.join("features")) else {
            return stages;
        };
        for shard in shards.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            let Ok(files) = std::fs::read_dir(&shard) else {
                continue;
            };
            for path in files.flatten().map(|e| e.path()) {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with('.') {
                    continue; // temporary files
                }
                let key = name.split('.').next().unwrap_or_default().to_string();
                stages.entry(key).or_default().push(path);
            }
        }
        stages
    }

    /// Checks every finished entry and every chunk against its checksum;
    /// with `remove`, corrupt ones are removed (the next run recomputes
    /// them).
    pub fn verify(&self, remove: bool) -> Verification {
        let mut report = Verification::default();
        for (_, files) in self.stages() {
            for path in files {
                let chunks: Vec<PathBuf> = if path.is_dir() {
                    std::fs::read_dir(&path)
                        .map(|d| d.flatten().map(|e| e.path()).collect())
                        .unwrap_or_default()
                } else {
                    vec![path]
                };
                for file in chunks {
                    let name = file.file_name().unwrap_or_default().to_string_lossy();
                    if name.starts_with('.') || !name.ends_with(".npy") {
                        continue;
                    }
                    let bytes = file.metadata().map_or(0, |m| m.len());
                    match read_verified(&file) {
                        Ok(_) => {
                            report.files += 1;
                            report.bytes += bytes;
                        }
                        Err(why) => {
                            if remove {
                                remove_verified(&file);
                            }
                            report.corrupt.push(why);
                        }
                    }
                }
            }
        }
        report
    }

    /// Removes the stages no run in `referenced` uses and nobody touched
    /// for `keep` (finished entries, chunks of abandoned stages), locks of
    /// dead processes and old temporary files; with `dry_run`, only counts
    /// them.
    pub fn gc(
        &self,
        referenced: &std::collections::HashSet<String>,
        keep: Duration,
        dry_run: bool,
    ) -> Collection {
        let mut out = Collection::default();
        for (key, mut files) in self.stages() {
            // A dead process's lock says nothing; a live one keeps its stage.
            let lock = self.stem(&key).with_extension("lock");
            if lock.exists() && !self.stage_locked(&key) && !dry_run {
                let _ = std::fs::remove_file(&lock);
                files.retain(|p| *p != lock);
            }
            let bytes: u64 = files.iter().map(|p| tree_size(p)).sum();
            let newest = files
                .iter()
                .filter_map(|p| p.metadata().and_then(|m| m.modified()).ok())
                .max()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            if referenced.contains(&key) || self.stage_locked(&key) || newest < keep {
                out.kept += 1;
                out.kept_bytes += bytes;
                continue;
            }
            out.removed += 1;
            out.removed_bytes += bytes;
            if dry_run {
                continue;
            }
            for path in files {
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        if !dry_run {
            let mut dirs = vec![self.root.join("memo")];
            if let Ok(shards) = std::fs::read_dir(self.root.join("features")) {
                for shard in shards.flatten().map(|e| e.path()) {
                    dirs.extend(
                        std::fs::read_dir(&shard)
                            .into_iter()
                            .flatten()
                            .flatten()
                            .map(|e| e.path())
                            .filter(|p| p.is_dir()),
                    );
                    dirs.push(shard);
                }
            }
            for dir in dirs {
                out.removed_bytes += remove_stale_temp_files(&dir, STALE_TEMP_AGE);
            }
        }
        out
    }
}

/// Bytes of a file, or of every file under a folder.
fn tree_size(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| tree_size(&e.path())).sum())
            .unwrap_or(0)
    } else {
        path.metadata().map_or(0, |m| m.len())
    }
}

/// What `runner cache verify` found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Entries and chunks whose bytes match their checksums, and their size.
    pub files: usize,
    pub bytes: u64,
    /// Why each corrupt file failed.
    pub corrupt: Vec<String>,
}

/// What `runner cache gc` removed and kept (stages, bytes).
#[derive(Debug, Default)]
pub struct Collection {
    pub removed: usize,
    pub removed_bytes: u64,
    pub kept: usize,
    pub kept_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_is_reused_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path().join("cache"));
        let file = dir.path().join("weights.bin");
        std::fs::write(&file, b"first").unwrap();
        let calls = std::cell::Cell::new(0);
        let fingerprint = |kind: &str| {
            cache
                .memoised::<_, ()>(kind, &[&file], || {
                    calls.set(calls.get() + 1);
                    Ok(format!("{}", std::fs::read(&file).unwrap().len()))
                })
                .unwrap()
        };
        assert_eq!(fingerprint("a"), "5");
        assert_eq!(fingerprint("a"), "5");
        assert_eq!(calls.get(), 1, "second call served from the memo");
        assert_eq!(fingerprint("b"), "5");
        assert_eq!(calls.get(), 2, "another kind is another memo");
        std::fs::write(&file, b"second!").unwrap();
        assert_eq!(fingerprint("a"), "7");
        assert_eq!(calls.get(), 3, "a changed file is fingerprinted again");
        // A corrupt memo is ignored.
        for entry in std::fs::read_dir(dir.path().join("cache/memo")).unwrap() {
            std::fs::write(entry.unwrap().path(), b"{not json").unwrap();
        }
        assert_eq!(fingerprint("a"), "7");
        assert_eq!(calls.get(), 4);
    }

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
