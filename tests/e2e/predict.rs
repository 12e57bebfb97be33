//! From a run to a prediction: the saved model classifies the run's own
//! test images exactly as its submission did, and refuses when the
//! backbone weights it was trained on are gone or changed.

use std::collections::HashMap;
use std::path::Path;

use super::run_dirs;
use crate::common::{model, runner, stderr, stdout, woof_subset};

/// `id -> the row's other fields` of a CSV with a header.
fn rows(path: &Path) -> (Vec<String>, HashMap<String, Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (
                r[0].to_string(),
                r.iter().skip(1).map(String::from).collect(),
            )
        })
        .collect();
    (header, rows)
}

#[test]
fn predict_on_the_runs_test_images_equals_its_submission_and_refuses_changed_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 10, 2);
    // The run reads a copy of the weights, to change it afterwards.
    std::fs::copy(
        model("efficientnet_lite0_imagenet.safetensors"),
        dir.join("w.safetensors"),
    )
    .unwrap();
    let path = super::write_spec(dir, "p", 2, 0.5);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        &format!(
            "{:?}",
            model("efficientnet_lite0_imagenet.safetensors")
                .display()
                .to_string()
        ),
        "\"w.safetensors\"",
    );
    std::fs::write(&path, text).unwrap();
    let out = runner(dir, &["--quiet", "--runs", "runs", "p.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = run_dirs(&dir.join("runs")).remove(0);
    for f in ["model/heads.safetensors", "model/manifest.json"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // Per class and confusion, out-of-fold and on the test set (an answer
    // key is given): every image counted once.
    let per_class = std::fs::read_to_string(run.join("per_class.csv")).unwrap();
    assert_eq!(per_class.lines().count(), 1 + 2 * 3, "{per_class}");
    assert!(per_class.starts_with("split,class,images,accuracy,log_loss\noof,"));
    let mut reader = csv::Reader::from_path(run.join("confusion.csv")).unwrap();
    let mut counted = HashMap::<String, usize>::new();
    for r in reader.records() {
        let r = r.unwrap();
        let n: usize = r.iter().skip(2).map(|c| c.parse::<usize>().unwrap()).sum();
        *counted.entry(r[0].to_string()).or_default() += n;
    }
    assert_eq!(counted["oof"], 30);
    assert_eq!(counted["test"], 6);
    let run_arg = run.to_str().unwrap();

    // Every test image, as a folder: the submission's probabilities, to
    // the last digit.
    let out = runner(
        dir,
        &[
            "--quiet",
            "predict",
            run_arg,
            "data/test",
            "--out",
            "pred.csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (sub_header, submission) = rows(&run.join("submission.csv"));
    let (pred_header, predicted) = rows(&dir.join("pred.csv"));
    assert_eq!(sub_header, pred_header);
    assert_eq!(submission.len(), 6);
    assert_eq!(submission, predicted);

    // One photo: its top class and probability as in its submission row.
    let (id, row) = submission.iter().next().unwrap();
    let out = runner(
        dir,
        &[
            "--quiet",
            "predict",
            run_arg,
            &format!("data/test/{id}.jpg"),
            "--top",
            "1",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let top = &json[0]["top"][0];
    let probs: Vec<f64> = row.iter().map(|p| p.parse().unwrap()).collect();
    let best = (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .unwrap();
    assert_eq!(top["class"], sub_header[best + 1], "{json}");
    assert_eq!(top["probability"].as_f64().unwrap(), probs[best]);
    let table = runner(dir, &["--quiet", "predict", run_arg, "data/test"]);
    assert!(stdout(&table).contains(id.as_str()));

    // Weights changed since the run: refused, saying so.
    let mut bytes = std::fs::read(dir.join("w.safetensors")).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    std::fs::write(dir.join("w.safetensors"), bytes).unwrap();
    let out = runner(dir, &["--quiet", "predict", run_arg, "data/test"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("w.safetensors") && err.contains("changed since the run"),
        "{err}"
    );
    // ... and gone: refused, naming the file.
    std::fs::remove_file(dir.join("w.safetensors")).unwrap();
    let out = runner(dir, &["--quiet", "predict", run_arg, "data/test"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("w.safetensors"), "{err}");
}

/// `[head] calibrate = "temperature"`: the temperature's own score row,
/// scored by nested cross-validation; the submission, `oof.csv` and the
/// saved model all calibrated, so `predict` still equals the submission.
#[test]
fn a_calibrated_run_scores_its_temperature_out_of_fold_and_predicts_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 10, 2);
    let path = super::write_spec(dir, "c", 3, 0.5);
    let text = std::fs::read_to_string(&path).unwrap() + "calibrate = \"temperature\"\n";
    std::fs::write(&path, text).unwrap();
    let out = runner(dir, &["--quiet", "--runs", "runs", "c.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = run_dirs(&dir.join("runs")).remove(0);
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    let stages = metrics["propagation"].as_array().unwrap();
    let (before, after) = (&stages[stages.len() - 2], &stages[stages.len() - 1]);
    assert_eq!(
        after["stage"].as_str().unwrap(),
        format!("{} + temperature", before["stage"].as_str().unwrap())
    );
    assert_eq!(metrics["final"], *after);
    assert_ne!(after["oof_log_loss"], before["oof_log_loss"]);
    let inverse = metrics["inverse_temperature"].as_f64().unwrap();
    assert!(inverse > 0.0 && inverse != 1.0, "{inverse}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("model/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["inverse_temperature"].as_f64(), Some(inverse));
    // The saved spec keeps the key, so a rerun calibrates too.
    let saved = std::fs::read_to_string(run.join("spec.toml")).unwrap();
    assert!(saved.contains("calibrate = \"temperature\""), "{saved}");

    // oof.csv holds the nested-calibrated rows its scores come from.
    let (_, oof) = rows(&run.join("oof.csv"));
    let loss: f64 = oof
        .values()
        .map(|r| {
            let label = &r[0];
            let classes: Vec<String> = metrics["classes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            let j = classes.iter().position(|c| c == label).unwrap();
            -r[1 + j].parse::<f64>().unwrap().clamp(1e-15, 1.0).ln()
        })
        .sum::<f64>()
        / oof.len() as f64;
    assert!(
        (loss - after["oof_log_loss"].as_f64().unwrap()).abs() < 1e-5,
        "{loss} vs {after}"
    );

    let out = runner(
        dir,
        &[
            "--quiet",
            "predict",
            run.to_str().unwrap(),
            "data/test",
            "--out",
            "pred.csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        rows(&run.join("submission.csv")),
        rows(&dir.join("pred.csv"))
    );

    // One fold has no out-of-fold rows to fit a temperature honestly on.
    let one_fold = std::fs::read_to_string(&path)
        .unwrap()
        .replace("folds = 3", "folds = 1");
    std::fs::write(dir.join("one.toml"), one_fold).unwrap();
    let out = runner(dir, &["--quiet", "--runs", "runs", "one.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("head.calibrate") && err.contains("cv.folds >= 2"),
        "{err}"
    );
}
