//! The guarantees under stress: runs killed with SIGKILL at many points and
//! run again give the tables of a run never interrupted; runs started
//! together on one cache compute each stage once and agree; the thread
//! count does not change a result.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::interrupt::{same_tables, spawn, walk};
use super::{json, run_dirs, write_spec};
use crate::common::{runner, stderr, woof_subset};

/// A spec whose heads train long enough (epochs without early stopping)
/// for a kill to land while they train.
fn long_heads_spec(dir: &Path) -> PathBuf {
    let path = write_spec(dir, "long", 2, 0.5);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("epochs = 20\npatience = 3", "epochs = 200\npatience = 200");
    std::fs::write(&path, text).unwrap();
    path
}

/// Where a run is killed.
#[derive(Debug, Clone, Copy)]
enum Point {
    /// Once this many feature chunks are published (train split: 3 chunks
    /// x 2 views).
    Chunks(usize),
    /// Once the training split's entries are finished (the test split is
    /// being extracted).
    TestSplit,
    /// This long after the run entered its heads stage.
    Heads(Duration),
    /// As soon as the run is writing its outputs.
    Outputs,
    /// This long after the start.
    After(Duration),
}

/// The stage `run.json` names (`None` before the run directory exists).
fn stage_of(runs: &Path) -> Option<String> {
    let run = runs.is_dir().then(|| run_dirs(runs))?.into_iter().next()?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).ok()?).ok()?;
    manifest["stage"].as_str().map(String::from)
}

fn count_files(cache: &Path, partial: bool) -> usize {
    walk(&cache.join("features"))
        .iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.ends_with(".npy") && s.contains(".partial/") == partial
        })
        .count()
}

/// Waits for `point`, polling every few milliseconds; false if the run
/// ended first.
fn wait_for(point: Point, child: &mut Child, runs: &Path, cache: &Path) -> bool {
    let started = Instant::now();
    let mut heads_since: Option<Instant> = None;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "{point:?}");
        let reached = match point {
            Point::Chunks(n) => count_files(cache, true) >= n,
            Point::TestSplit => count_files(cache, false) >= 2,
            Point::Heads(delay) => {
                if heads_since.is_none() && stage_of(runs).as_deref() == Some("heads") {
                    heads_since = Some(Instant::now());
                }
                heads_since.is_some_and(|t| t.elapsed() >= delay)
            }
            Point::Outputs => stage_of(runs).as_deref() == Some("outputs"),
            Point::After(delay) => started.elapsed() >= delay,
        };
        if reached {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A small deterministic generator for the random kill times.
fn lcg(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn killed_at_ten_points_and_continued_gives_the_uninterrupted_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 5, 26, 2);
    long_heads_spec(dir);

    let started = Instant::now();
    let out = runner(dir, &["--quiet", "--runs", "clean", "long.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let clean_seconds = started.elapsed().as_secs_f64();
    let clean = run_dirs(&dir.join("clean")).remove(0);

    let mut seed = 0x5eed_u64;
    let mut random = || Point::After(Duration::from_secs_f64(clean_seconds * lcg(&mut seed)));
    let points = [
        // A chunk's stages are stored back to back, then the next chunk
        // is computed: 1 lands between (or just after) the two stores of
        // the first chunk, 2 and 4 while the second and third compute.
        Point::Chunks(1),
        Point::Chunks(2),
        Point::Chunks(4),
        Point::TestSplit,
        random(),
        random(),
        random(),
        Point::Heads(Duration::ZERO),
        Point::Heads(Duration::from_millis(400)),
        Point::Outputs,
    ];
    let mut stages_hit = Vec::new();
    for (i, point) in points.iter().enumerate() {
        let runs = dir.join(format!("killed-{i}"));
        // Heads and outputs points start from the clean run's features;
        // the others extract from scratch.
        let cache = match point {
            Point::Heads(_) | Point::Outputs => dir.join("clean/.cache"),
            _ => runs.join(".cache"),
        };
        let (runs_arg, cache_arg) = (runs.to_str().unwrap(), cache.to_str().unwrap());
        let mut child = spawn(
            dir,
            &[
                "--quiet",
                "--runs",
                runs_arg,
                "--cache",
                cache_arg,
                "long.toml",
            ],
        );
        let landed = wait_for(*point, &mut child, &runs, &cache);
        child.kill().unwrap();
        child.wait().unwrap();
        let Some(run) = runs
            .is_dir()
            .then(|| run_dirs(&runs))
            .and_then(|d| d.into_iter().next())
        else {
            // Killed before its run directory existed: nothing to continue.
            stages_hit.push((*point, "before the run".to_string()));
            continue;
        };
        let manifest = json(&run.join("run.json"));
        stages_hit.push((
            *point,
            if landed && manifest["status"] == "running" {
                manifest["stage"].as_str().unwrap_or("setup").to_string()
            } else {
                format!("after the run ({})", manifest["status"])
            },
        ));
        // Continue it: half by `runner resume`, half by running the spec
        // again into a new run directory.
        let continued = if i % 2 == 0 && manifest["status"] != "complete" {
            let out = runner(
                dir,
                &[
                    "--quiet",
                    "--runs",
                    runs_arg,
                    "--cache",
                    cache_arg,
                    "resume",
                    run.to_str().unwrap(),
                ],
            );
            assert!(out.status.success(), "{point:?}: {}", stderr(&out));
            run.clone()
        } else {
            let out = runner(
                dir,
                &[
                    "--quiet",
                    "--runs",
                    runs_arg,
                    "--cache",
                    cache_arg,
                    "long.toml",
                ],
            );
            assert!(out.status.success(), "{point:?}: {}", stderr(&out));
            run_dirs(&runs).pop().unwrap()
        };
        assert_eq!(json(&continued.join("run.json"))["status"], "complete");
        same_tables(&clean, &continued);
        let leftovers: Vec<PathBuf> = walk(&runs)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".tmp-") && !p.starts_with(&cache))
            .collect();
        assert!(leftovers.is_empty(), "{point:?}: {leftovers:?}");
        // Nothing reports the killed run as running.
        let out = runner(dir, &["--runs", runs_arg, "report", "--format", "json"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for row in rows.as_array().unwrap() {
            assert_ne!(row["status"], "running", "{point:?}: {row}");
        }
    }
    eprintln!("kill points and the stages they landed in: {stages_hit:?}");
    let hit = |stage: &str| stages_hit.iter().any(|(_, s)| s == stage);
    assert!(hit("features") && hit("heads"), "{stages_hit:?}");
}

#[test]
fn four_runs_at_once_on_one_cache_compute_each_stage_once_and_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 30, 2);
    // Two specs that share every feature stage (only the head differs),
    // each started twice, all four at once.
    write_spec(dir, "a", 2, 0.5);
    write_spec(dir, "b", 2, 0.3);
    let children: Vec<Child> = ["a", "b", "a", "b"]
        .iter()
        .map(|name| spawn(dir, &["--quiet", "--runs", "runs", &format!("{name}.toml")]))
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let runs = run_dirs(&dir.join("runs"));
    assert_eq!(runs.len(), 4, "{runs:?}");
    let mut computed = 0;
    for run in &runs {
        let manifest = json(&run.join("run.json"));
        assert_eq!(manifest["status"], "complete", "{manifest}");
        computed += manifest["feature_stages_computed"].as_u64().unwrap();
        let log = std::fs::read_to_string(run.join("run.log")).unwrap();
        assert!(!log.contains("interrupted run"), "{log}");
    }
    // train + test x original + hflip: four stages, each computed by one
    // process while the others waited for it.
    assert_eq!(computed, 4, "{runs:?}");
    let by_name = |name: &str| -> Vec<&PathBuf> {
        runs.iter()
            .filter(|r| r.to_string_lossy().contains(&format!("-{name}-")))
            .collect()
    };
    for name in ["a", "b"] {
        let pair = by_name(name);
        assert_eq!(pair.len(), 2, "{runs:?}");
        same_tables(pair[0], pair[1]);
    }
    let cache = dir.join("runs/.cache");
    let leftovers: Vec<PathBuf> = walk(&cache)
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.contains(".tmp-") || s.ends_with(".lock") || s.contains(".partial")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 10, 2);
    write_spec(dir, "t", 2, 0.5);
    for threads in ["1", "2"] {
        let runs = format!("threads-{threads}");
        let out = runner(
            dir,
            &["--quiet", "--threads", threads, "--runs", &runs, "t.toml"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let one = run_dirs(&dir.join("threads-1")).remove(0);
    let two = run_dirs(&dir.join("threads-2")).remove(0);
    same_tables(&one, &two);
    // The cached features themselves, byte for byte.
    let features = |runs: &str| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = walk(&dir.join(runs).join(".cache/features"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "npy"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let (a, b) = (features("threads-1"), features("threads-2"));
    assert_eq!(a.len(), 4);
    assert!(a == b, "features differ between --threads 1 and 2");
}

#[test]
fn cache_verify_finds_a_changed_byte_and_gc_keeps_what_runs_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 10, 2);
    write_spec(dir, "v", 2, 0.5);
    let out = runner(dir, &["--quiet", "--runs", "runs", "v.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cache = dir.join("runs/.cache");
    let entries: Vec<PathBuf> = walk(&cache.join("features"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    assert_eq!(entries.len(), 4);

    let verify = |extra: &[&str]| {
        let mut args = vec!["--runs", "runs", "cache", "verify"];
        args.extend(extra);
        runner(dir, &args)
    };
    let out = verify(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = crate::common::stdout(&out);
    assert!(text.contains("4 file(s)") && text.contains("kB"), "{text}");

    // One byte changed in the middle of an entry.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&entries[0], bytes).unwrap();
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1));
    let text = crate::common::stdout(&out);
    assert!(
        text.contains("corrupt:") && text.contains("checksum"),
        "{text}"
    );
    assert!(entries[0].exists(), "verify alone changes nothing");
    let out = verify(&["--remove-corrupt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!entries[0].exists());
    assert!(verify(&[]).status.success());

    // gc: the run reads every stage, so nothing goes; once the run is
    // gone, everything older than the cut-off does.
    let gc = |days: &str| {
        let out = runner(dir, &["--runs", "runs", "cache", "gc", "--keep-days", days]);
        assert!(out.status.success(), "{}", stderr(&out));
        crate::common::stdout(&out)
    };
    let text = gc("0");
    assert!(text.starts_with("0 stage(s)"), "{text}");
    for run in run_dirs(&dir.join("runs")) {
        std::fs::remove_dir_all(run).unwrap();
    }
    let text = gc("1");
    assert!(
        text.starts_with("0 stage(s)"),
        "recent stages are kept: {text}"
    );
    // Four: the entry removed as corrupt left its provenance behind.
    let text = gc("0");
    assert!(text.starts_with("4 stage(s)"), "{text}");
    let left: Vec<PathBuf> = walk(&cache.join("features"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
