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
    // Unique per host, process and write: threads of one process may write
    // the same file (two sweep members' memo entries) at once, and the
    // writer's host and pid say whether it may still be writing.
    let tmp = dir.join(format!(
        ".{file_name}{TEMP_MARK}{}-{}-{}",
        crate::lock::hostname(),
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

/// What marks [`write_atomic`]'s temporary files:
/// `.<name>.tmp-<host>-<pid>-<n>`.
const TEMP_MARK: &str = ".tmp-";

/// Where the BLAKE3 checksum of a cached `.npy` is kept: `<file>.npy.b3`.
pub(super) fn checksum_path(npy: &Path) -> PathBuf {
    let mut name = npy.file_name().unwrap_or_default().to_os_string();
    name.push(".b3");
    npy.with_file_name(name)
}

/// Writes a matrix's `.npy` bytes with their checksum beside them (the
/// checksum first: a `.npy` never exists without the sum that vouches for
/// it).
pub(super) fn write_verified(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(
        &checksum_path(path),
        blake3::hash(bytes).to_hex().as_bytes(),
    )?;
    write_atomic(path, bytes)
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

/// The temporary files in `dir` whose name starts with `.{prefix}` and
/// whose writer is gone: a process of this host that no longer runs (a
/// killed writer), or any writer once the file is [`STALE_TEMP_AGE`] old
/// (another machine's, on a shared folder). A live writer's file is left
/// alone: shard processes write chunks of a stage side by side.
pub(super) fn remove_dead_writers_temp_files(dir: &Path, prefix: &str) -> u64 {
    remove_matching(dir, prefix, |name, age| {
        age >= STALE_TEMP_AGE
            || temp_writer(name).is_some_and(|(host, pid)| {
                host == crate::lock::hostname() && !crate::lock::process_alive(pid, None)
            })
    })
}

/// Who wrote temporary file `name` (`.<name>.tmp-<host>-<pid>-<n>`).
fn temp_writer(name: &str) -> Option<(&str, u32)> {
    let tail = &name[name.rfind(TEMP_MARK)? + TEMP_MARK.len()..];
    let mut parts = tail.rsplitn(3, '-');
    let (_n, pid, host) = (parts.next()?, parts.next()?, parts.next()?);
    Some((host, pid.parse().ok()?))
}

/// [`remove_stale_temp_files`] of the files whose name starts with
/// `.{prefix}`.
fn remove_temp_files(dir: &Path, prefix: &str, min_age: Duration) -> u64 {
    remove_matching(dir, prefix, |_, age| age >= min_age)
}

/// Removes the temporary files in `dir` whose name starts with `.{prefix}`
/// and that `remove(name, age)` picks; returns the bytes freed.
fn remove_matching(dir: &Path, prefix: &str, remove: impl Fn(&str, Duration) -> bool) -> u64 {
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
        if remove(&name, age) && std::fs::remove_file(entry.path()).is_ok() {
            freed += meta.len();
        }
    }
    freed
}

/// Temporary files in a shared cache folder older than this belong to no
/// write in progress (a write takes seconds).
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_files_of_dead_writers_go_and_those_of_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let host = crate::lock::hostname();
        let me = std::process::id();
        // A pid above Linux's pid_max: no such process.
        let live = format!(".0000-64.npy{TEMP_MARK}{host}-{me}-0");
        let dead = format!(".0000-64.npy{TEMP_MARK}{host}-4294967294-3");
        let elsewhere = format!(".0000-64.npy{TEMP_MARK}other-host-4294967294-1");
        for name in [&live, &dead, &elsewhere] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(temp_writer(&elsewhere), Some(("other-host", 4294967294)));
        assert_eq!(remove_dead_writers_temp_files(dir.path(), ""), 1);
        assert!(
            dir.path().join(&live).exists(),
            "a live writer's file stays"
        );
        assert!(
            !dir.path().join(&dead).exists(),
            "a killed writer's file goes"
        );
        assert!(
            dir.path().join(&elsewhere).exists(),
            "another host's young file stays"
        );
    }
}
