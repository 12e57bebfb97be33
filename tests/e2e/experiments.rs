//! Experiments end to end: a sweep extends a spec and shares its features,
//! a saved spec runs again bit for bit, the command line's overrides are
//! checked like the file.

use std::path::Path;

use super::{json, run_dirs, write_spec};
use crate::common::{runner, stderr, woof_subset};

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_sweep_extracts_each_stage_once_and_matches_its_members_run_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 2, 4, 1);
    write_spec(dir, "base", 2, 0.5);
    std::fs::create_dir(dir.join("sweeps")).unwrap();
    std::fs::write(
        dir.join("sweeps/ablate.toml"),
        "extends = \"../base.toml\"\nname = \"ablate\"\n[sweep]\n\"cv.folds\" = [1, 2]\nviews = [[\"original\"], [\"original\", \"hflip\"]]\n",
    )
    .unwrap();
    let out = runner(dir, &["--quiet", "sweeps/ablate.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let runs = run_dirs(&dir.join("runs"));
    let names: Vec<String> = runs
        .iter()
        .map(|r| {
            json(&r.join("metrics.json"))["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "ablate-cv.folds=1-views=original",
            "ablate-cv.folds=1-views=original+hflip",
            "ablate-cv.folds=2-views=original",
            "ablate-cv.folds=2-views=original+hflip",
        ]
    );
    let manifests: Vec<serde_json::Value> =
        runs.iter().map(|r| json(&r.join("run.json"))).collect();
    let id = manifests[0]["sweep"]["id"].as_str().unwrap();
    assert!(id.starts_with("ablate-"), "{id}");
    let mut members = Vec::new();
    let mut computed = 0;
    for m in &manifests {
        assert_eq!(m["status"], "complete");
        assert_eq!(m["sweep"]["id"], id);
        assert_eq!(m["sweep"]["members"], 4);
        members.push(m["sweep"]["member"].as_u64().unwrap());
        computed += m["feature_stages_computed"].as_u64().unwrap();
    }
    members.sort();
    assert_eq!(members, [0, 1, 2, 3]);
    // 2 views x 2 splits, each computed by exactly one member.
    assert_eq!(computed, 4);

    // The member trained beside the others equals the same spec run alone
    // (which also finds every stage in the cache).
    let member = runs
        .iter()
        .find(|r| {
            r.to_string_lossy()
                .contains("cv.folds=2-views=original+hflip")
        })
        .unwrap();
    let out = runner(
        dir,
        &[
            "--quiet",
            "--runs",
            "alone",
            "--cache",
            "runs/.cache",
            "base.toml",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let alone = run_dirs(&dir.join("alone")).remove(0);
    assert_eq!(json(&alone.join("run.json"))["feature_stages_computed"], 0);
    for file in ["oof.csv", "submission.csv", "folds.csv"] {
        assert!(
            read(&member.join(file)) == read(&alone.join(file)),
            "{file}"
        );
    }
}

#[test]
fn a_saved_spec_reruns_bit_for_bit_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 2, 3, 1);
    write_spec(dir, "base", 2, 0.5);
    std::fs::create_dir(dir.join("child")).unwrap();
    std::fs::write(
        dir.join("child/child.toml"),
        "extends = \"../base.toml\"\nname = \"child\"\n[head]\nepochs = 5\n",
    )
    .unwrap();
    let out = runner(
        dir,
        &[
            "--quiet",
            "child/child.toml",
            "--set",
            "head.dropout=0.25",
            "--set",
            "views=[\"hflip\"]",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let first = run_dirs(&dir.join("runs")).remove(0);
    let saved: toml::Table =
        toml::from_str(&String::from_utf8(read(&first.join("spec.toml"))).unwrap()).unwrap();
    // Merged: the base's data (its path absolute), the child's epochs, the
    // command line's dropout and views.
    assert_eq!(saved["head"]["epochs"].as_integer(), Some(5));
    assert_eq!(saved["head"]["dropout"].as_float(), Some(0.25));
    assert_eq!(saved["head"]["patience"].as_integer(), Some(3));
    assert_eq!(saved["views"].as_array().unwrap().len(), 1);
    let labels = saved["data"]["labels"].as_str().unwrap();
    assert!(
        Path::new(labels).is_absolute() && Path::new(labels).is_file(),
        "{labels}"
    );

    // From another working directory, by the saved spec's path.
    let elsewhere = tempfile::tempdir().unwrap();
    let runs = dir.join("again");
    let out = runner(
        elsewhere.path(),
        &[
            "--quiet",
            "--runs",
            runs.to_str().unwrap(),
            first.join("spec.toml").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let again = run_dirs(&runs).remove(0);
    assert!(read(&first.join("spec.toml")) == read(&again.join("spec.toml")));
    for file in ["oof.csv", "submission.csv"] {
        assert!(read(&first.join(file)) == read(&again.join(file)), "{file}");
    }

    // `runner rerun` says so.
    let out = runner(dir, &["--quiet", "rerun", first.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("oof.csv: identical to the original run"),
        "{err}"
    );
    assert!(
        err.contains("submission.csv: identical to the original run"),
        "{err}"
    );
}

#[test]
fn overrides_and_sweeps_are_checked_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 2, 3, 1);
    write_spec(dir, "base", 2, 0.5);
    std::fs::write(dir.join("loop_a.toml"), "extends = \"loop_b.toml\"\n").unwrap();
    std::fs::write(dir.join("loop_b.toml"), "extends = \"loop_a.toml\"\n").unwrap();
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["base.toml", "--set", "head.lrr=0.1"],
            &[
                "--set head.lrr=0.1",
                "unknown field `lrr`",
                "`lr`",
                "in `head`",
            ],
        ),
        (
            &["base.toml", "--set", "cv.folds=many"],
            &["--set cv.folds=many", "expected usize", "`cv.folds`"],
        ),
        (
            &["base.toml", "--set", "head.lr"],
            &["--set head.lr", "is not KEY=VALUE"],
        ),
        (
            &["base.toml", "--sweep", "head.dropout=0.3,1.5"],
            &[
                "sweep member head.dropout=1.5",
                "`head.dropout` = 1.5 is out of range",
            ],
        ),
        (
            &["base.toml", "--sweep", "cv.folds=2,50"],
            &["sweep member cv.folds=50", "cv.folds = 50 leaves fold"],
        ),
        (
            &["loop_a.toml"],
            &["cycle", "loop_a.toml -> ", "loop_b.toml -> "],
        ),
    ];
    for (args, wanted) in cases {
        let mut all = vec!["--quiet"];
        all.extend(args);
        let out = runner(dir, &all);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for w in wanted {
            assert!(err.contains(w), "{args:?}: missing {w:?} in {err}");
        }
        // Nothing ran: no run directory, not even a failed one.
        assert!(crate::common::no_run_dirs(&dir.join("runs")), "{args:?}");
    }
}

/// `kind = "logistic"` end to end: the usual files, each head's chosen
/// penalty in `metrics.json` and `folds.csv`, a saved spec with the
/// logistic keys only, which runs again to the same tables.
#[test]
fn a_logistic_head_run_writes_the_usual_files_and_reruns_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 6, 1);
    std::fs::write(
        dir.join("logistic.toml"),
        format!(
            r#"
name = "logistic"
seed = 7
[data]
layout = "kaggle"
root = "data"
[[backbone]]
arch = "efficientnet_lite0"
weights = "{weights}"
[extract]
batch_size = 8
[cv]
folds = 2
[head]
kind = "logistic"
l2 = [0.01, 0.1, 1.0]
inner_folds = 2
"#,
            weights = crate::common::model("efficientnet_lite0_imagenet.safetensors").display()
        ),
    )
    .unwrap();
    let out = runner(dir, &["--quiet", "logistic.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = run_dirs(&dir.join("runs")).remove(0);
    for file in [
        "spec.toml",
        "run.json",
        "metrics.json",
        "folds.csv",
        "oof.csv",
        "submission.csv",
        "run.log",
    ] {
        assert!(run.join(file).is_file(), "{file}");
    }
    assert_eq!(json(&run.join("run.json"))["status"], "complete");
    let metrics = json(&run.join("metrics.json"));
    let heads = metrics["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 2);
    for h in heads {
        let l2 = h["l2"].as_f64().unwrap();
        assert!([0.01, 0.1, 1.0].contains(&l2), "{h}");
    }
    assert!(metrics["final"]["test_log_loss"]
        .as_f64()
        .unwrap()
        .is_finite());
    let folds = String::from_utf8(read(&run.join("folds.csv"))).unwrap();
    assert!(folds.lines().next().unwrap().ends_with(",l2"), "{folds}");
    let submission = String::from_utf8(read(&run.join("submission.csv"))).unwrap();
    assert_eq!(submission.lines().count(), 1 + 3);

    let saved: toml::Table =
        toml::from_str(&String::from_utf8(read(&run.join("spec.toml"))).unwrap()).unwrap();
    let head = saved["head"].as_table().unwrap();
    let mut keys: Vec<&str> = head.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["inner_folds", "kind", "l2"]);

    let out = runner(dir, &["--quiet", "rerun", run.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for file in ["oof.csv", "submission.csv"] {
        assert!(
            err.contains(&format!("{file}: identical to the original run")),
            "{err}"
        );
    }
}
