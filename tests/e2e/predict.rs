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
