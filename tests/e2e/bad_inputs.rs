//! Bad inputs end to end: damaged images, datasets whose files disagree,
//! fold counts the data cannot fill. Each is named in the error (or a
//! warning) and, where it matters, caught before any work starts.

use std::path::{Path, PathBuf};

use super::{json, run_dirs, write_spec};
use crate::common::{runner, stderr, stdout, woof_subset};

/// Writes a small dataset (2 classes, 3 training and 1 test image each)
/// under `dir/data`; returns its training images, sorted.
fn small_dataset(dir: &Path) -> Vec<PathBuf> {
    woof_subset(&dir.join("data"), 2, 3, 1);
    let mut train: Vec<PathBuf> = std::fs::read_dir(dir.join("data/train"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    train.sort();
    train
}

/// Breaks the first training image of a small dataset with `damage`, runs
/// the spec and returns the image's file name and the run's stderr.
fn run_with_damaged_image(
    damage: impl FnOnce(&Path),
) -> (String, String, Option<PathBuf>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let train = small_dataset(dir);
    damage(&train[0]);
    write_spec(dir, "damaged", 2, 0.5);
    let out = runner(dir, &["--quiet", "damaged.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    let name = train[0].file_name().unwrap().to_string_lossy().into_owned();
    let run = dir
        .join("runs")
        .exists()
        .then(|| run_dirs(&dir.join("runs")).into_iter().next())
        .flatten();
    (name, err, run, tmp)
}

#[test]
fn missing_image_is_named_before_any_work_starts() {
    let (name, err, run, _tmp) = run_with_damaged_image(|p| std::fs::remove_file(p).unwrap());
    assert!(err.contains(&name), "{err}");
    assert!(
        run.is_none(),
        "the pre-flight check fails before a run directory exists"
    );
}

#[test]
fn corrupt_image_is_named_and_marks_the_run_failed() {
    let (name, err, run, _tmp) =
        run_with_damaged_image(|p| std::fs::write(p, b"not a jpeg").unwrap());
    assert!(err.contains(&name), "{err}");
    assert!(err.contains("cannot decode"), "{err}");
    assert_eq!(json(&run.unwrap().join("run.json"))["status"], "failed");
}

/// Runs a spec over a small dataset after `edit` changed it; returns the
/// exit code and stderr.
fn run_edited(folds: usize, edit: impl FnOnce(&Path, &Path)) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 2, 3, 1);
    let spec = write_spec(dir, "edited", folds, 0.5);
    edit(&dir.join("data"), &spec);
    let out = runner(dir, &["--quiet", "edited.toml"]);
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code(), err)
}

/// Runs a spec over a small dataset after `edit` changed it, and checks
/// that it fails (exit 1) with every one of `needles` in its error.
fn assert_refused(folds: usize, edit: impl FnOnce(&Path, &Path), needles: &[&str]) {
    let (code, err) = run_edited(folds, edit);
    assert_eq!(code, Some(1), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
}

#[test]
fn more_folds_than_images_fails_before_extracting() {
    assert_refused(10, |_, _| {}, &["cv.folds = 10", "6 training images"]);
}

#[test]
fn a_mistyped_test_dir_is_an_error_not_a_missing_submission() {
    let mistype = |_: &Path, spec: &Path| {
        let text = std::fs::read_to_string(spec).unwrap();
        let text = text.replace(
            "root = \"data\"",
            "root = \"data\"\ntest_dir = \"data/tset\"",
        );
        std::fs::write(spec, text).unwrap();
    };
    assert_refused(2, mistype, &["tset"]);
}

#[test]
fn duplicate_test_ids_are_named() {
    let repeat_last_row = |data: &Path, _: &Path| {
        let path = data.join("sample_submission.csv");
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap().to_string();
        std::fs::write(&path, format!("{text}{last}\n")).unwrap();
    };
    assert_refused(2, repeat_last_row, &["test id \"", "appears twice"]);
}

#[test]
fn a_label_missing_from_the_sample_submission_is_named_with_its_image() {
    let relabel_first = rewrite_labels(|i, id, label| {
        let label = if i == 1 { "wolf" } else { label };
        format!("{id},{label}")
    });
    assert_refused(2, relabel_first, &["wolf", "labels.csv"]);
}

/// Rewrites one CSV of the dataset line by line.
fn edit_lines(path: &Path, edit: impl Fn(usize, &str) -> Option<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| edit(i, l))
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// An edit of `labels.csv`: line `i` (`id,label`) becomes `row(i, id, label)`.
fn rewrite_labels(row: impl Fn(usize, &str, &str) -> String) -> impl FnOnce(&Path, &Path) {
    move |data, _| {
        edit_lines(&data.join("labels.csv"), |i, l| {
            let (id, label) = l.split_once(',').unwrap();
            Some(row(i, id, label))
        })
    }
}

#[test]
fn labels_without_a_header_are_refused_not_shortened() {
    let drop_header = |data: &Path, _: &Path| {
        edit_lines(&data.join("labels.csv"), |i, l| (i > 0).then(|| l.into()));
    };
    assert_refused(2, drop_header, &["labels.csv line 1", "add a header line"]);
}

#[test]
fn labels_with_a_third_column_are_refused() {
    let add_column = rewrite_labels(|i, id, label| {
        let split = if i == 0 { "split" } else { "val" };
        format!("{id},{split},{label}")
    });
    assert_refused(2, add_column, &["expected 2", "split"]);
}

#[test]
fn a_test_id_labelled_twice_is_refused() {
    let label_again = |data: &Path, _: &Path| {
        let path = data.join("test_labels.csv");
        let text = std::fs::read_to_string(&path).unwrap();
        let (id, _) = text.lines().nth(1).unwrap().split_once(',').unwrap();
        std::fs::write(&path, format!("{text}{id},samoyed\n")).unwrap();
    };
    assert_refused(2, label_again, &["test_labels.csv", "appears twice"]);
}

#[test]
fn a_sample_submission_class_without_training_images_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 2, 3, 1);
    write_spec(dir, "unseen", 2, 0.5);
    edit_lines(&dir.join("data/sample_submission.csv"), |i, l| {
        Some(format!("{l},{}", if i == 0 { "pug" } else { "0.3" }))
    });
    let out = runner(dir, &["--quiet", "unseen.toml"]);
    let log = stderr(&out) + &stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("warning: 1 of 3 classes have no training image (pug)"),
        "{log}"
    );
}

/// A JPEG whose frame header claims 65,500 x 65,500 pixels (a few hundred
/// bytes on disk, 12.9 GB decoded).
fn claim_huge_dimensions(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let sof = (0..bytes.len() - 9)
        .find(|&i| bytes[i] == 0xFF && matches!(bytes[i + 1], 0xC0..=0xC2))
        .expect("a JPEG frame header");
    // Marker, length (2), precision (1), height (2), width (2).
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_image_claiming_huge_dimensions_fails_the_run_with_its_name() {
    let (name, err, run, _tmp) = run_with_damaged_image(claim_huge_dimensions);
    assert!(
        err.contains(&name) && err.contains("65500 x 65500"),
        "{err}"
    );
    assert_eq!(json(&run.unwrap().join("run.json"))["status"], "failed");
}

#[test]
fn classes_smaller_than_the_fold_count_are_warned_about() {
    // 3 training images per class, 5 folds.
    let (code, err) = run_edited(5, |_, _| {});
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: 2 class(es) have fewer training images than cv.folds = 5"),
        "{err}"
    );
}

#[test]
fn a_truncated_jpeg_is_warned_about_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let train = small_dataset(dir);
    let bytes = std::fs::read(&train[0]).unwrap();
    std::fs::write(&train[0], &bytes[..bytes.len() / 2]).unwrap();
    write_spec(dir, "truncated", 2, 0.5);
    let out = runner(dir, &["--quiet", "truncated.toml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let name = train[0].file_name().unwrap().to_string_lossy().into_owned();
    let warning = err.lines().find(|l| l.contains("no JPEG end marker"));
    assert!(warning.is_some_and(|w| w.contains(&name)), "{err}");
    assert_eq!(err.matches("no JPEG end marker").count(), 1, "{err}");
}
