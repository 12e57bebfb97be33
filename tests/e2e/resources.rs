//! A full disk and read-only folders, for real: each case mounts a small
//! tmpfs in a private mount namespace (`unshare --user --map-root-user
//! --mount`, no privileges needed) and runs the binary inside it.
//!
//! Where user namespaces are not available (macOS, locked-down
//! containers) the tests say so and pass; CI sets
//! `RUNNER_REQUIRE_NAMESPACES=1`, which turns that into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{json, run_dirs, write_spec};
use crate::common::{runner, stderr, woof_subset};

/// Runs `script` (sh) in a fresh user + mount namespace with `args` as
/// `$1...`; `None` where the system refuses namespaces.
fn in_namespace(dir: &Path, script: &str, args: &[&str]) -> Option<std::process::Output> {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("RUNNER_REQUIRE_NAMESPACES").is_none(),
            "RUNNER_REQUIRE_NAMESPACES is set but `unshare --user --map-root-user --mount` fails"
        );
        eprintln!("skipped: this system gives no user namespaces (unshare), so no tmpfs");
        return None;
    }
    let out = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    Some(out)
}

fn runner_exe() -> &'static str {
    env!("CARGO_BIN_EXE_runner")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Files whose name marks an unfinished atomic write.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    super::interrupt::walk(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect()
}

/// A dataset, a spec, and a cache holding all of its features (from one
/// run on the ordinary disk).
fn setup(dir: &Path) {
    woof_subset(&dir.join("data"), 3, 10, 2);
    write_spec(dir, "s", 2, 0.5);
    let out = runner(
        dir,
        &[
            "--quiet",
            "--runs",
            "warm",
            "--cache",
            "full-cache",
            "s.toml",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_full_runs_folder_fails_naming_the_file_and_records_the_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    // The runs folder on a 64 kB tmpfs, filled up to leave 1 to 12 pages
    // of 4 kB: the run runs out of space at a different file each time.
    let script = r#"
        set -e
        mount -t tmpfs -o size=64k tmpfs runs
        dd if=/dev/zero of=runs/.filler bs=4096 count=$((16 - $2)) 2>/dev/null
        set +e
        "$1" --quiet --runs runs --cache full-cache s.toml 2> "out-$2/stderr"
        echo $? > "out-$2/code"
        "$1" --runs runs report --format json > "out-$2/report.json" 2>/dev/null
        rm -f runs/.filler
        cp -r runs/. "out-$2/runs/"
    "#;
    let mut failures = 0;
    for free_pages in 1..=12 {
        let out_dir = dir.join(format!("out-{free_pages}"));
        std::fs::create_dir_all(out_dir.join("runs")).unwrap();
        std::fs::create_dir_all(dir.join("runs")).unwrap();
        let Some(out) = in_namespace(dir, script, &[runner_exe(), &free_pages.to_string()]) else {
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let code = read(&out_dir.join("code")).trim().to_string();
        let err = read(&out_dir.join("stderr"));
        assert!(!err.contains("panicked"), "{free_pages} pages: {err}");
        let runs = run_dirs(&out_dir.join("runs"));
        if code == "0" {
            continue; // it fitted
        }
        failures += 1;
        eprintln!(
            "{free_pages} free page(s): {}",
            err.lines().last().unwrap_or("")
        );
        assert_eq!(code, "1", "{free_pages} pages: {err}");
        assert!(
            err.contains("disk is full") && err.contains("runs/"),
            "{free_pages} pages: the message names the file and the cause:\n{err}"
        );
        for run in &runs {
            if run.join("run.json").is_file() {
                let manifest = json(&run.join("run.json"));
                assert_ne!(
                    manifest["status"], "running",
                    "{free_pages} pages: {manifest}"
                );
            }
        }
        let report = read(&out_dir.join("report.json"));
        assert!(
            !report.contains("\"running\""),
            "{free_pages} pages: {report}"
        );
        assert!(
            temp_files(&out_dir).is_empty(),
            "{:?}",
            temp_files(&out_dir)
        );
    }
    assert!(failures >= 6, "most sizes must run out of space");
}

#[test]
fn a_cache_without_room_for_the_features_fails_before_extracting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 10, 2);
    write_spec(dir, "s", 2, 0.5);
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    // 30 + 6 images x 2 views x 1280 floats need ~0.5 MB; the cache has 128 kB.
    let script = r#"
        mount -t tmpfs -o size=128k tmpfs cache
        "$1" --quiet --runs runs --cache cache s.toml 2> stderr
        echo $? > code
        find cache -name '*.npy' > cached
        find cache -name '*.tmp-*' >> cached
    "#;
    let Some(out) = in_namespace(dir, script, &[runner_exe()]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = read(&dir.join("stderr"));
    assert_eq!(read(&dir.join("code")).trim(), "1", "{err}");
    for needle in ["feature cache", "cache", "needs about", "free", "--cache"] {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
    assert_eq!(
        read(&dir.join("cached")),
        "",
        "nothing cached, nothing partial"
    );
    let run = run_dirs(&dir.join("runs")).remove(0);
    let manifest = json(&run.join("run.json"));
    assert_eq!(manifest["status"], "failed", "{manifest}");
    assert_eq!(manifest["stage"], "features", "{manifest}");
}

#[test]
fn read_only_folders_are_named_and_a_complete_read_only_cache_still_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    for d in ["ro-cache", "ro-empty", "ro-runs"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    // A read-only copy of the complete cache, an empty read-only cache and
    // a read-only runs folder.
    let script = r#"
        set -e
        mount -t tmpfs tmpfs ro-cache && cp -r full-cache/. ro-cache/ && mount -o remount,ro ro-cache
        mount -t tmpfs -o ro tmpfs ro-empty
        mount -t tmpfs -o ro tmpfs ro-runs
        set +e
        "$1" --quiet --runs served --cache ro-cache s.toml 2> served.err; echo $? > served.code
        "$1" --quiet --runs missing --cache ro-empty s.toml 2> missing.err; echo $? > missing.code
        "$1" --quiet --runs ro-runs --cache full-cache s.toml 2> runs.err; echo $? > runs.code
    "#;
    let Some(out) = in_namespace(dir, script, &[runner_exe()]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = |name: &str| read(&dir.join(format!("{name}.code"))).trim().to_string();
    let err = |name: &str| read(&dir.join(format!("{name}.err")));

    // Every stage cached: nothing to write, the run completes.
    assert_eq!(code("served"), "0", "{}", err("served"));
    let warm = run_dirs(&dir.join("warm")).remove(0);
    super::interrupt::same_tables(&warm, &run_dirs(&dir.join("served")).remove(0));

    for (name, folder) in [("missing", "ro-empty"), ("runs", "ro-runs")] {
        let e = err(name);
        assert_eq!(code(name), "1", "{e}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(
            e.contains(folder) && e.contains("read-only"),
            "{name}: expected {folder} and read-only in:\n{e}"
        );
    }
    let run = run_dirs(&dir.join("missing")).remove(0);
    assert_eq!(json(&run.join("run.json"))["status"], "failed");
}
