//! Run directories: `runs/<UTC time>-<name>-<spec hash>/`.
//!
//! ```text
//! spec.toml        the resolved spec, every default filled in
//! run.json         status (running | complete | failed), times, cache use
//! metrics.json     the score propagation and per-head results
//! folds.csv        fold, view, epochs run, best epoch, validation scores
//! oof.csv          id, label, one probability column per class
//! submission.csv   the sample submission's header and id order
//! run.log          everything the run printed
//! run.lock         held while the run's process lives ([`crate::lock`])
//! ```
//!
//! `run.json` is written first with status `running` and rewritten at the
//! end (`complete`, `failed`, or `interrupted` with the stage a signal
//! stopped it in). A process that dies without a word (kill -9, power
//! cut) leaves `running`; its `run.lock` names a process that is gone,
//! which is how [`is_live`] tells a dead run from a live one.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cache::write_atomic;
use crate::lock::{Attempt, LockFile};
use crate::spec::Spec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Complete,
    Failed,
    /// Stopped by a signal, or found dead (`running` with no live
    /// process holding its lock).
    Interrupted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub status: Status,
    pub runner_version: String,
    pub started_utc: String,
    /// Absent while the run is running (its fields are written inline).
    #[serde(flatten)]
    pub finished: Option<Finished>,
    /// Feature stages served from the cache and computed by this run.
    pub feature_stages_cached: usize,
    pub feature_stages_computed: usize,
    /// Seconds per part of the run.
    pub timings: Timings,
    /// The part of the run in progress (`features`, `heads`, `outputs`):
    /// where an interrupted or failed run stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The sweep this run is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepRecord>,
    /// The cache keys of the feature stages the run reads (what
    /// `runner cache gc` keeps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_stages: Vec<String>,
}

/// Which sweep a run belongs to and what its member's values are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepRecord {
    /// Shared by every member of one invocation of the sweep
    /// (`runner report --sweep ID`).
    pub id: String,
    /// This run's position in the sweep (0-based) and the sweep's size.
    pub member: usize,
    pub members: usize,
    /// The swept keys and this member's values.
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// When and how a run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    pub finished_utc: String,
    pub seconds: f64,
    /// Why a failed run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub hash_seconds: f64,
    pub decode_seconds: f64,
    pub features_seconds: f64,
    pub heads_seconds: f64,
    /// Seconds in each backbone's forward passes (every view and split),
    /// in spec order; empty when every feature came from the cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backbones: Vec<BackboneSeconds>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackboneSeconds {
    /// The architecture, with `#2`, `#3`... when the spec lists it again.
    pub backbone: String,
    pub seconds: f64,
}

/// Bytes a run directory keeps aside while its run runs: room for a few
/// rewrites of `run.json` (about 2 kB each, and its temporary copy).
const RESERVE_BYTES: usize = 8 * 1024;

pub struct RunDir {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// `run.lock`, held for as long as this value lives.
    _lock: LockFile,
}

/// Takes `dir/run.lock` for this process ([`crate::lock`]); `None` when a
/// live process holds it.
fn lock(dir: &Path) -> std::io::Result<Option<LockFile>> {
    match LockFile::try_acquire(&dir.join("run.lock"))? {
        Attempt::Acquired(lock) => Ok(Some(lock)),
        Attempt::HeldBy(_) => Ok(None),
    }
}

/// Whether a live process holds the run's lock. A run directory without a
/// lock file counts as not live.
pub fn is_live(dir: &Path) -> bool {
    crate::lock::is_held(&dir.join("run.lock"))
}

/// Marks every run under `runs_root` that says `running` but whose process
/// is gone as `interrupted`, and removes the temporary files its writes
/// left; returns those runs.
pub fn mark_dead_runs(runs_root: &Path) -> Vec<PathBuf> {
    let mut dead = Vec::new();
    let Ok(entries) = std::fs::read_dir(runs_root) else {
        return dead;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let manifest_path = dir.join("run.json");
        let Some(mut manifest) = std::fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        else {
            continue;
        };
        if manifest.status != Status::Running || is_live(&dir) {
            continue;
        }
        // Take the lock while rewriting: a run starting on this folder
        // right now (a `resume`) wins, and this leaves it alone.
        let Ok(Some(_lock)) = lock(&dir) else {
            continue;
        };
        manifest.status = Status::Interrupted;
        if manifest.finished.is_none() {
            manifest.finished = Some(Finished {
                finished_utc: utc_stamp(Utc::now(), false),
                seconds: 0.0,
                error: Some(
                    "the process ended without finishing (killed, or the machine stopped)".into(),
                ),
            });
        }
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        if write_atomic(&manifest_path, &json).is_ok() {
            crate::cache::remove_stale_temp_files(&dir, std::time::Duration::ZERO);
            let _ = std::fs::remove_file(dir.join(".space-reserve"));
            dead.push(dir);
        }
    }
    dead
}

/// The feature stages the runs under some folders read.
#[derive(Debug, Default)]
pub struct StageReferences {
    pub keys: std::collections::HashSet<String>,
    /// Runs found, and those among them that do not list their stages.
    pub runs: usize,
    pub unrecorded: usize,
}

/// Every feature stage a run under `roots` reads (`runner cache gc`).
pub fn referenced_stages(roots: &[PathBuf]) -> StageReferences {
    let mut refs = StageReferences::default();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for dir in entries.flatten().map(|e| e.path()) {
            let Some(manifest) = std::fs::read(dir.join("run.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
            else {
                continue;
            };
            refs.runs += 1;
            if manifest.feature_stages.is_empty() {
                refs.unrecorded += 1;
            }
            refs.keys.extend(manifest.feature_stages);
        }
    }
    refs
}

/// A UTC time as `2026-12-04T18:00:57Z`, or `20261204T180057Z` when
/// `compact` (run directory names).
pub fn utc_stamp(time: DateTime<Utc>, compact: bool) -> String {
    let format = if compact {
        "%Y%m%dT%H%M%SZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    time.format(format).to_string()
}

impl RunDir {
    /// Creates a fresh run directory holding the resolved spec and a
    /// `running` manifest.
    pub fn create(
        runs_root: &Path,
        spec: &Spec,
        sweep: Option<SweepRecord>,
    ) -> std::io::Result<RunDir> {
        // The caller's message names the spec; this one names the folder.
        let named = |e: std::io::Error, what: &Path| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot create the run directory {}: {e} ({})",
                    what.display(),
                    if crate::disk::is_read_only(&e) {
                        "the folder is read-only for this user: choose a writable one with --runs"
                    } else {
                        "check --runs"
                    }
                ),
            )
        };
        std::fs::create_dir_all(runs_root).map_err(|e| named(e, runs_root))?;
        let now = Utc::now();
        let base = format!(
            "{}-{}-{}",
            utc_stamp(now, true),
            spec.name,
            spec.short_hash()
        );
        let mut path = runs_root.join(&base);
        let mut n = 2;
        // Two runs of one spec in the same second get distinct folders.
        while let Err(e) = std::fs::create_dir(&path) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(named(e, &path));
            }
            path = runs_root.join(format!("{base}.{n}"));
            n += 1;
        }
        let lock = lock(&path)?.ok_or_else(|| {
            std::io::Error::other(format!("{} is locked by another process", path.display()))
        })?;
        let run = RunDir {
            _lock: lock,
            path,
            manifest: Manifest {
                status: Status::Running,
                runner_version: env!("CARGO_PKG_VERSION").to_string(),
                started_utc: utc_stamp(now, false),
                finished: None,
                feature_stages_cached: 0,
                feature_stages_computed: 0,
                timings: Timings::default(),
                stage: None,
                sweep,
                feature_stages: Vec::new(),
            },
        };
        run.make_reserve();
        let written = run
            .write("spec.toml", spec.to_toml().as_bytes())
            .and_then(|()| run.write_manifest());
        if let Err(e) = written {
            // A folder without its spec and status is no run: gone, not
            // left for `report` to puzzle over.
            let _ = std::fs::remove_dir_all(&run.path);
            return Err(e);
        }
        Ok(run)
    }

    /// Opens an existing, unfinished run directory to run it again in
    /// place (`runner resume`): its sweep record is kept, its status set
    /// back to `running`.
    pub fn reopen(path: &Path, spec: &Spec) -> anyhow::Result<RunDir> {
        let old: Manifest = serde_json::from_slice(&std::fs::read(path.join("run.json"))?)
            .map_err(|e| {
                anyhow::anyhow!("{}: cannot parse ({e})", path.join("run.json").display())
            })?;
        let Some(lock) = lock(path)? else {
            anyhow::bail!("{} is still running in another process", path.display());
        };
        if old.status == Status::Complete {
            anyhow::bail!(
                "{} is complete; `runner rerun` runs its spec again into a new run directory",
                path.display()
            );
        }
        let run = RunDir {
            _lock: lock,
            path: path.to_path_buf(),
            manifest: Manifest {
                status: Status::Running,
                runner_version: env!("CARGO_PKG_VERSION").to_string(),
                started_utc: utc_stamp(Utc::now(), false),
                finished: None,
                feature_stages_cached: 0,
                feature_stages_computed: 0,
                timings: Timings::default(),
                stage: None,
                sweep: old.sweep,
                feature_stages: Vec::new(),
            },
        };
        run.make_reserve();
        run.write("spec.toml", spec.to_toml().as_bytes())?;
        run.write_manifest()?;
        Ok(run)
    }

    /// Records the part of the run now in progress.
    pub fn enter(&mut self, stage: &str) -> std::io::Result<()> {
        self.manifest.stage = Some(stage.to_string());
        self.write_manifest()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a file of the run atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.file(name), bytes)
    }

    pub fn write_manifest(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.manifest).expect("manifest serialises");
        self.write("run.json", &json)
    }

    /// Space kept aside so that a run on a disk that fills up can still
    /// record that it failed (a hidden file of [`RESERVE_BYTES`]).
    fn reserve_path(&self) -> PathBuf {
        self.file(".space-reserve")
    }

    fn make_reserve(&self) {
        // Best effort: without it, a full disk may leave `running`, which
        // the next start corrects to `interrupted`.
        let _ = std::fs::write(self.reserve_path(), vec![0u8; RESERVE_BYTES]);
    }

    fn release_reserve(&self) {
        let _ = std::fs::remove_file(self.reserve_path());
    }

    /// Marks the run finished (complete or failed) after `seconds`, and
    /// frees its space reserve.
    pub fn finish(
        &mut self,
        status: Status,
        seconds: f64,
        error: Option<String>,
    ) -> std::io::Result<()> {
        self.manifest.status = status;
        self.manifest.finished = Some(Finished {
            finished_utc: utc_stamp(Utc::now(), false),
            seconds,
            error,
        });
        // On a full disk the reserve is the room for this last word.
        self.release_reserve();
        self.write_manifest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("in range")
    }

    #[test]
    fn utc_stamps_are_calendar_correct() {
        assert_eq!(utc_stamp(at(0), false), "1970-01-01T00:00:00Z");
        assert_eq!(utc_stamp(at(951_782_400), true), "20000229T000000Z");
        assert_eq!(utc_stamp(at(1_796_000_000), false), "2026-11-30T00:53:20Z");
    }

    #[test]
    fn a_manifest_reads_back_running_or_finished() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::spec::test_spec(dir.path(), "");
        let mut run = RunDir::create(dir.path(), &spec, None).unwrap();
        let read = |run: &RunDir| -> (String, Manifest) {
            let text = std::fs::read_to_string(run.file("run.json")).unwrap();
            let manifest = serde_json::from_str(&text).unwrap();
            (text, manifest)
        };
        let (text, running) = read(&run);
        assert!(running.finished.is_none());
        assert!(
            !text.contains("finished_utc") && !text.contains("error"),
            "{text}"
        );
        run.finish(Status::Failed, 1.5, Some("boom".into()))
            .unwrap();
        let (text, failed) = read(&run);
        let finished = failed.finished.unwrap();
        assert_eq!(
            (finished.seconds, finished.error.as_deref()),
            (1.5, Some("boom"))
        );
        // The end fields stand between the start and the stage counts.
        let at = |key: &str| text.find(key).unwrap();
        assert!(at("started_utc") < at("finished_utc"));
        assert!(at("error") < at("feature_stages_cached"), "{text}");
    }

    #[test]
    fn fractional_seconds_are_not_shown() {
        let t = DateTime::from_timestamp(1_796_000_000, 999_999_999).expect("in range");
        assert_eq!(utc_stamp(t, true), "20261130T005320Z");
    }
}
