//! Sharded extraction: N `runner extract --shard I/N` processes at once into
//! one cache (a folder, or an S3-compatible store), one of them killed with
//! kill -9 and run again, then the full run: the features and tables of one
//! process, byte for byte.
//!
//! The S3 case needs a store: CI starts moto's server on 127.0.0.1 and
//! runs the ignored test with
//! `RUNNER_S3_TEST_URL=s3://BUCKET/PREFIX AWS_ENDPOINT_URL=http://127.0.0.1:PORT
//! AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... cargo test --test main shards -- --ignored`.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::process::{Command, Stdio};

use super::interrupt::{same_tables, walk};
use super::run_dirs;
use crate::common::{model, runner, stderr, woof_subset};

/// 200 training and 80 test images: chunks of 64 give 4 + 2 per stage.
fn sharded_spec(dir: &Path) {
    woof_subset(&dir.join("data"), 10, 20, 8);
    let spec = format!(
        r#"
name = "sharded"
seed = 7
views = ["original", "hflip"]
[data]
layout = "kaggle"
root = "data"
[[backbone]]
arch = "efficientnet_lite0"
weights = "{weights}"
input_size = 128
[extract]
batch_size = 8
[cv]
folds = 3
[head]
epochs = 10
patience = 2
batch_size = 32
"#,
        weights = model("efficientnet_lite0_imagenet.safetensors").display()
    );
    std::fs::write(dir.join("s.toml"), spec).unwrap();
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = runner(dir, args);
    assert!(out.status.success(), "runner {args:?}: {}", stderr(&out));
    stderr(&out)
}

/// Every file `runner extract --out` wrote to `a`, equal in `b`.
fn same_files(a: &Path, b: &Path) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert_eq!(names.len(), 6, "ids and 4 feature files: {names:?}");
    for path in names {
        let name = path.file_name().unwrap();
        assert!(
            std::fs::read(&path).unwrap() == std::fs::read(b.join(name)).unwrap(),
            "{} differs from the single-process run's",
            name.to_string_lossy()
        );
    }
}

/// How the shard processes learn which shard they are.
#[derive(Clone, Copy)]
enum Launch {
    /// deploy/slurm/extract.sbatch as an array task (SLURM_ARRAY_TASK_ID
    /// and SLURM_ARRAY_TASK_COUNT).
    SlurmArray,
    /// deploy/kubernetes/extract-job.yaml's command in an Indexed Job's pod
    /// (JOB_COMPLETION_INDEX and RUNNER_SHARD_COUNT).
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    IndexedJob,
}

/// Shard `i` of `count` into `cache`, as `launch` starts it, in a runs
/// folder of its own (as on separate machines: a remote cache's local copy
/// is per folder), on one core.
fn shard(dir: &Path, launch: Launch, cache: &str, i: usize, count: usize) -> Command {
    let machine = dir.join(format!("machine{i}"));
    let mut command = match launch {
        Launch::SlurmArray => {
            let mut c = Command::new("bash");
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/extract.sbatch"))
                .env("RUNNER", env!("CARGO_BIN_EXE_runner"))
                .env("RUNNER_SPEC", "s.toml")
                .env("RUNNER_CACHE", cache)
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .env("SLURM_ARRAY_TASK_COUNT", count.to_string())
                .env("SLURM_CPUS_PER_TASK", "1")
                .env("SLURM_TMPDIR", &machine);
            c
        }
        Launch::IndexedJob => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
            c.args(["--quiet", "--threads=1"])
                .arg(format!("--runs={}", machine.display()))
                .arg(format!("--cache={cache}"))
                .args(["extract", "s.toml"])
                .env("JOB_COMPLETION_INDEX", i.to_string())
                .env("RUNNER_SHARD_COUNT", count.to_string());
            c
        }
    };
    command.current_dir(dir).env_remove("RUNNER_SHARD");
    command
}

/// Shards `0..count` of the spec at once into `cache`; shard 1 is killed
/// with SIGKILL once it has stored its first chunk, then run again. Then
/// the full run, with another batch size (chunks of 128 built from the
/// shards' chunks of 64), and `extract --out`: compared with one process's
/// run into a folder of its own.
fn shards_then_full_run_match_one_process(dir: &Path, cache: &str, count: usize, launch: Launch) {
    sharded_spec(dir);
    ok(
        dir,
        &["--quiet", "--runs", "one", "--cache", "one-cache", "s.toml"],
    );
    let args = ["--quiet", "--cache", "one-cache", "extract", "s.toml"];
    ok(dir, &[&args[..], &["--out", "one-features"]].concat());

    if let Launch::SlurmArray = launch {
        // The recipe's first job: stage keys hashed into the cache's memo.
        let status = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/status.sbatch"))
            .current_dir(dir)
            .env("RUNNER", env!("CARGO_BIN_EXE_runner"))
            .env("RUNNER_SPEC", "s.toml")
            .env("RUNNER_CACHE", cache)
            .env("SLURM_TMPDIR", dir.join("machine0"))
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&status.stdout);
        assert!(status.status.success(), "{}", stderr(&status));
        assert_eq!(table.matches("not started").count(), 4, "{table}");
    }
    let mut children: Vec<_> = (0..count)
        .map(|i| {
            shard(dir, launch, cache, i, count)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Shard 1's first chunk: training rows 64..128 (its local copy, or
    // the shared folder), written before the object is published.
    let started = Instant::now();
    let local = if cache.contains("://") {
        dir.join("machine1")
    } else {
        dir.join(cache)
    };
    while !walk(&local)
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".partial/000000064-64.npy"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "shard 1 never stored a chunk"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    children[1].kill().unwrap();
    let killed = children[1].wait().unwrap();
    assert_eq!(killed.signal(), Some(9), "shard 1 was killed mid-way");
    for (i, child) in children.iter_mut().enumerate().filter(|(i, _)| *i != 1) {
        assert!(child.wait().unwrap().success(), "shard {i}");
    }
    let rerun = shard(dir, launch, cache, 1, count).output().unwrap();
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let log = stderr(&rerun);
    assert!(
        log.contains("found") && log.contains(&format!("shard 1/{count} (from ")),
        "the rerun reuses the stored chunk: {log}"
    );

    let log = ok(
        dir,
        &[
            "--runs",
            "full",
            "--cache",
            cache,
            "s.toml",
            "--set",
            "extract.batch_size=100",
        ],
    );
    assert!(
        log.contains("found 4 stage chunk(s) of 128 images")
            && log.contains("found 2 stage chunk(s) of 128 images")
            && !log.contains("backbones"),
        "the full run computes no features: {log}"
    );
    same_tables(
        &run_dirs(&dir.join("one"))[0],
        &run_dirs(&dir.join("full"))[0],
    );
    let args = ["--quiet", "--runs", "full", "--cache", cache, "extract"];
    ok(dir, &[&args[..], &["s.toml", "--out", "features"]].concat());
    same_files(&dir.join("one-features"), &dir.join("features"));
}

#[test]
fn shards_into_a_folder_killed_and_rerun_give_one_process_features() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    shards_then_full_run_match_one_process(dir, "cache", 2, Launch::SlurmArray);
    // The recipe's training step, on the finished stages.
    let train = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/train.sbatch"))
        .current_dir(dir)
        .env("RUNNER", env!("CARGO_BIN_EXE_runner"))
        .env("RUNNER_SPEC", "s.toml")
        .env("RUNNER_CACHE", "cache")
        .env("RUNNER_RUNS", "trained")
        .output()
        .unwrap();
    assert!(train.status.success(), "{}", stderr(&train));
    same_tables(
        &run_dirs(&dir.join("one"))[0],
        &run_dirs(&dir.join("trained"))[0],
    );
}

#[test]
#[cfg(feature = "s3")]
#[ignore = "needs an S3-compatible store: RUNNER_S3_TEST_URL and AWS_* (CI starts moto)"]
fn shards_into_s3_killed_and_rerun_give_one_process_features() {
    let url = std::env::var("RUNNER_S3_TEST_URL").expect(
        "set RUNNER_S3_TEST_URL=s3://BUCKET/PREFIX and AWS_ENDPOINT_URL (an existing bucket)",
    );
    let tmp = tempfile::tempdir().unwrap();
    // A prefix of its own: reruns of the test start from an empty cache.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let cache = format!("{}/{stamp}", url.trim_end_matches('/'));
    let dir = tmp.path();
    shards_then_full_run_match_one_process(dir, &cache, 4, Launch::IndexedJob);

    // An object replaced by something else (no checksum) and another whose
    // bytes changed: both found by a machine without a local copy, deleted
    // and recomputed, with the same tables.
    let remote = runner::cache::Remote::open(&cache).unwrap();
    let mut entries: Vec<String> = walk(&dir.join("one-cache/features"))
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            name.strip_suffix(".npy")
                .map(|key| format!("features/{}/{key}.npy", &key[..2]))
        })
        .collect();
    entries.sort();
    remote.put(&entries[0], b"not an npy").unwrap();
    let mut damaged = std::fs::read(dir.join("one-cache").join(&entries[1])).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    remote.put_verified(&entries[1], &damaged[..last]).unwrap();
    let log = ok(dir, &["--runs", "machine9", "--cache", &cache, "s.toml"]);
    assert!(
        log.contains("has no checksum (not written by runner); deleted")
            && log.contains("truncated file?")
            && log.contains("features: 2 stage(s) from the cache, 2 to compute"),
        "{log}"
    );
    same_tables(
        &run_dirs(&dir.join("one"))[0],
        &run_dirs(&dir.join("machine9"))[0],
    );

    // A byte changed in one machine's local copy: that copy is fetched
    // again from the store, which keeps its object for everyone.
    let copy = walk(&dir.join("machine9/.cache-s3"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(&entries[0]))
        .expect("the local copy of the recomputed entry");
    let mut bytes = std::fs::read(&copy).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&copy, bytes).unwrap();
    let log = ok(dir, &["--runs", "machine9", "--cache", &cache, "s.toml"]);
    assert!(
        log.contains("features: all 4 stages served from the cache"),
        "{log}"
    );
    assert!(remote.get_verified(&entries[0]).unwrap().is_some());
}

#[test]
#[cfg(feature = "s3")]
fn an_unreachable_store_or_a_bad_shard_is_named_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    sharded_spec(dir);
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(dir)
        .args(["--runs", "runs", "--cache", "s3://bucket/prefix", "s.toml"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the feature cache s3://bucket/prefix: ")
            && err.contains("Connection refused")
            && err.contains("AWS_ENDPOINT_URL"),
        "{err}"
    );
    assert!(!dir.join("runs").exists(), "no run directory");

    for (args, env, want) in [
        (&["--shard", "2/2"][..], None, "shard 2 of 2 does not exist"),
        (
            &[],
            Some(("JOB_COMPLETION_INDEX", "0")),
            "RUNNER_SHARD_COUNT",
        ),
        (&[], Some(("RUNNER_SHARD", "1of2")), "RUNNER_SHARD=1of2"),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_runner"));
        command
            .current_dir(dir)
            .args(["--cache", "cache", "extract", "s.toml"])
            .args(args);
        if let Some((k, v)) = env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
        assert!(!dir.join("cache").exists(), "nothing computed");
    }
}
