//! The cache's files: written whole or not at all, `.npy` matrices with
//! their checksums, and the temporary files a killed writer leaves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

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
pub(super) fn checksum_path(npy: &Path) -> PathBuf {
    let mut name = npy.file_name().unwrap_or_default().to_os_string();
    name.push(".b3");
    npy.with_file_name(name)
}

/// Writes a matrix as `.npy` with its checksum beside it (the checksum
/// first: a `.npy` never exists without the sum that vouches for it).
pub(super) fn write_verified(path: &Path, m: &Matrix) -> std::io::Result<()> {
    let bytes = npy::to_bytes(m);
    write_atomic(
        &checksum_path(path),
        blake3::hash(&bytes).to_hex().as_bytes(),
    )?;
    write_atomic(path, &bytes)
}

/// Reads a cached `.npy` whose bytes match its stored checksum: a byte
/// changed on disk (or a file without a checksum) is an error, not data.
pub(super) fn read_verified(path: &Path) -> Result<Matrix, String> {
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

pub(super) fn remove_verified(path: &Path) {
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
pub(super) fn remove_temp_files(dir: &Path, prefix: &str, min_age: Duration) -> u64 {
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
