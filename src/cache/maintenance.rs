//! `runner cache verify` (every file against its checksum) and `runner
//! cache gc` (stages no run reads).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::files::{read_verified, remove_verified};
use super::{remove_stale_temp_files, FeatureCache, STALE_TEMP_AGE};

impl FeatureCache {
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
