//! Interruption: a signal stops a run at a safe point and records it; a
//! killed run is recognised as dead; either one continued gives the same
//! tables as a run never interrupted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{json, run_dirs, write_spec};
use crate::common::{runner, stderr, woof_subset};

pub(super) fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runner starts")
}

/// Waits until the only run under `runs` is extracting features and has
/// cached at least one complete chunk; returns its directory.
fn wait_for_extraction(runs: &Path, cache: &Path) -> PathBuf {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never got to its features"
        );
        std::thread::sleep(Duration::from_millis(20));
        let Some(run) = runs
            .is_dir()
            .then(|| run_dirs(runs))
            .and_then(|d| d.into_iter().next())
        else {
            continue;
        };
        let stage = std::fs::read(run.join("run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["stage"].as_str().map(String::from));
        // A chunk counts once its `.npy` is published: the checksum beside
        // it is written first, and temp files end in `.tmp-<pid>`.
        let chunk_cached = walk(cache).iter().any(|p| {
            let p = p.to_string_lossy();
            p.contains(".partial/") && p.ends_with(".npy")
        });
        if stage.as_deref() == Some("features") && chunk_cached {
            return run;
        }
    }
}

pub(super) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for p in entries.flatten().map(|e| e.path()) {
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

pub(super) fn same_tables(a: &Path, b: &Path) {
    for file in ["oof.csv", "submission.csv", "folds.csv"] {
        let (x, y) = (
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
        );
        assert!(
            x == y,
            "{file} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

fn report_statuses(dir: &Path, runs: &str) -> Vec<String> {
    let out = runner(dir, &["--runs", runs, "report", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn stopped_or_killed_runs_are_recorded_and_continue_to_identical_results() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 5, 26, 2);
    write_spec(dir, "long", 2, 0.5);

    // The reference: never interrupted.
    let out = runner(dir, &["--quiet", "--runs", "clean", "long.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let clean = run_dirs(&dir.join("clean")).remove(0);

    // SIGTERM during extraction: stops at a safe point, says where, exits 143.
    let mut child = spawn(dir, &["--quiet", "--runs", "term", "long.toml"]);
    let run = wait_for_extraction(&dir.join("term"), &dir.join("term/.cache"));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(143));
    let manifest = json(&run.join("run.json"));
    assert_eq!(manifest["status"], "interrupted", "{manifest}");
    assert_eq!(manifest["stage"], "features", "{manifest}");
    assert!(
        manifest["error"].as_str().unwrap().contains("SIGTERM"),
        "{manifest}"
    );
    let leftovers: Vec<PathBuf> = walk(&dir.join("term"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(report_statuses(dir, "term"), ["interrupted"]);

    // Resumed in place: complete, and the same tables as the clean run.
    let out = runner(
        dir,
        &["--quiet", "--runs", "term", "resume", run.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("stage chunk(s) of 64 images in the cache")
            || !err.contains("0 stage(s) from the cache"),
        "{err}"
    );
    assert_eq!(json(&run.join("run.json"))["status"], "complete");
    same_tables(&clean, &run);

    // kill -9: nothing recorded by the run itself, yet never shown running.
    let mut child = spawn(dir, &["--quiet", "--runs", "killed", "long.toml"]);
    let run = wait_for_extraction(&dir.join("killed"), &dir.join("killed/.cache"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(json(&run.join("run.json"))["status"], "running");
    assert_eq!(report_statuses(dir, "killed"), ["interrupted"]);
    assert_eq!(json(&run.join("run.json"))["status"], "interrupted");
    // Running the spec again continues from the cached chunks.
    let out = runner(dir, &["--runs", "killed", "long.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The kill landed after at least one chunk was cached: the rerun
    // resumes it (or, had the stage finished by then, takes the stage).
    let err = stderr(&out);
    assert!(
        err.contains("stage chunk(s) of 64 images in the cache")
            || !err.contains("0 stage(s) from the cache"),
        "{err}"
    );
    let again = run_dirs(&dir.join("killed")).pop().unwrap();
    same_tables(&clean, &again);
}
