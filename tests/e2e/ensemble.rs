//! `runner ensemble`: runs on the same images and folds blend into a run
//! directory of their own that `report` lists; runs on other folds are
//! refused.

use super::{json, run_dirs, write_spec};
use crate::common::{runner, stderr, woof_subset};

#[test]
fn an_ensemble_blends_runs_out_of_fold_and_is_listed_as_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 12, 2);
    write_spec(dir, "a", 3, 0.5);
    write_spec(dir, "b", 3, 0.2);
    write_spec(dir, "c", 2, 0.5);
    for spec in ["a.toml", "b.toml", "c.toml"] {
        let out = runner(dir, &["--quiet", "--runs", "runs", spec]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let runs = run_dirs(&dir.join("runs"));
    let find = |name: &str| {
        runs.iter()
            .find(|r| r.to_string_lossy().contains(&format!("-{name}-")))
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    let (a, b, c) = (find("a"), find("b"), find("c"));
    let out = runner(
        dir,
        &[
            "--runs",
            "ens",
            "ensemble",
            &a,
            &b,
            "--method",
            "weights",
            "--calibrate",
            "temperature",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("ensemble (weights + temperature, nested CV)"));
    let ens = run_dirs(&dir.join("ens")).remove(0);
    for f in [
        "spec.toml",
        "run.json",
        "metrics.json",
        "oof.csv",
        "submission.csv",
        "report.html",
    ] {
        assert!(ens.join(f).is_file(), "{f}");
    }
    // Its page compares the members with the blend; it has no heads of
    // its own to draw learning curves of.
    let page = std::fs::read_to_string(ens.join("report.html")).unwrap();
    assert!(page.contains("ensemble (weights + temperature, nested CV)"));
    assert!(page.contains("id=\"calibration\"") && !page.contains("id=\"curves\""));
    let metrics = json(&ens.join("metrics.json"));
    let weights: Vec<f64> = metrics["blend"]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    assert_eq!(weights.len(), 2);
    assert!(
        (weights.iter().sum::<f64>() - 1.0).abs() < 1e-9,
        "{weights:?}"
    );
    assert!(weights.iter().all(|&w| w >= 0.0));
    assert_eq!(metrics["final"]["oof_rows"], 36);
    let submission = std::fs::read_to_string(ens.join("submission.csv")).unwrap();
    let member = std::fs::read_to_string(std::path::Path::new(&a).join("submission.csv")).unwrap();
    assert_eq!(submission.lines().next(), member.lines().next());
    assert_eq!(submission.lines().count(), member.lines().count());

    let out = runner(
        dir,
        &[
            "--runs",
            "ens",
            "report",
            "--all-columns",
            "--format",
            "json",
        ],
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["status"], "complete", "{rows}");
    assert_eq!(rows[0]["ensemble.method"], "weights", "{rows}");

    // Other folds: refused, naming what differs.
    let out = runner(dir, &["--runs", "ens", "ensemble", &a, &c]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("[cv]"), "{}", stderr(&out));
}
