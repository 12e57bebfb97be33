use std::path::{Path, PathBuf};

use super::*;

/// A hand-written run directory: `spec` is the body of its spec.toml
/// after `name`, `sweep` its sweep id, `oof` its out-of-fold log loss.
struct FakeRun<'a> {
    dir: &'a str,
    name: &'a str,
    spec: &'a str,
    sweep: Option<&'a str>,
    started: &'a str,
    oof: Option<f64>,
}

fn write(root: &Path, r: &FakeRun<'_>) -> PathBuf {
    let dir = root.join(r.dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("spec.toml"),
        format!("name = \"{}\"\n{}", r.name, r.spec),
    )
    .unwrap();
    let mut manifest = serde_json::json!({
        "status": "complete", "runner_version": "0", "started_utc": r.started,
        "finished_utc": r.started, "seconds": 1.5,
        "feature_stages_cached": 4, "feature_stages_computed": 0,
        "timings": {"hash_seconds": 0, "decode_seconds": 0, "features_seconds": 0, "heads_seconds": 0},
    });
    if let Some(id) = r.sweep {
        manifest["sweep"] = serde_json::json!({"id": id, "member": 0, "members": 2, "values": {}});
    }
    std::fs::write(dir.join("run.json"), manifest.to_string()).unwrap();
    if let Some(loss) = r.oof {
        let metrics = serde_json::json!({
            "final": {"stage": "s", "oof_log_loss": loss, "oof_accuracy": 0.9, "test_log_loss": null, "test_accuracy": null},
            "propagation": [
                {"stage": "fold 1 of 5, original", "oof_log_loss": loss + 0.1, "oof_accuracy": 0.8},
                {"stage": "5 folds, original", "oof_log_loss": loss, "oof_accuracy": 0.9},
            ],
        });
        std::fs::write(dir.join("metrics.json"), metrics.to_string()).unwrap();
    }
    dir
}

const SPEC: &str =
    "seed = 1\nviews = [\"original\"]\n[cv]\nfolds = 5\n[head]\ndropout = 0.5\nlr = 0.01\n";

fn spec(seed: u64, folds: usize, dropout: f64) -> String {
    SPEC.replace("seed = 1", &format!("seed = {seed}"))
        .replace("folds = 5", &format!("folds = {folds}"))
        .replace("dropout = 0.5", &format!("dropout = {dropout}"))
}

fn build(root: &Path, selection: &Selection, options: &Options) -> Report {
    Report::build(root, selection, options).unwrap().0
}

fn names(report: &Report) -> Vec<&str> {
    report.runs.iter().map(|r| r.run.as_str()).collect()
}

/// Four runs: a two-member sweep over folds, and two seeds of one setting.
fn four_runs(root: &Path) {
    let runs = [
        (
            "a",
            "abl-cv.folds=1",
            spec(1, 1, 0.5),
            Some("abl-1234abcd"),
            "2026-01-01T00:00:01Z",
            Some(0.30),
        ),
        (
            "b",
            "abl-cv.folds=5",
            spec(1, 5, 0.5),
            Some("abl-1234abcd"),
            "2026-01-01T00:00:02Z",
            Some(0.20),
        ),
        (
            "c",
            "recipe",
            spec(2, 5, 0.3),
            None,
            "2026-01-01T00:00:03Z",
            Some(0.25),
        ),
        (
            "d",
            "recipe",
            spec(3, 5, 0.3),
            None,
            "2026-01-01T00:00:04Z",
            None,
        ),
    ];
    for (dir, name, spec, sweep, started, oof) in &runs {
        write(
            root,
            &FakeRun {
                dir,
                name,
                spec,
                sweep: *sweep,
                started,
                oof: *oof,
            },
        );
    }
}

#[test]
fn the_default_table_shows_only_the_parameters_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    four_runs(tmp.path());
    let report = build(
        tmp.path(),
        &Selection::sweep("abl-1234abcd"),
        &Options::default(),
    );
    assert_eq!(names(&report), ["b", "a"]);
    assert_eq!(
        report.columns,
        [
            "run",
            "cv.folds",
            "oof_log_loss",
            "oof_accuracy",
            "test_log_loss",
            "test_accuracy",
            "features",
            "seconds",
            "status"
        ]
    );
    // Across all four, seed, folds, dropout and the sweep differ.
    let report = build(tmp.path(), &Selection::default(), &Options::default());
    assert_eq!(
        &report.columns[..5],
        ["run", "sweep", "seed", "cv.folds", "head.dropout"]
    );
    // Unscored runs last.
    assert_eq!(names(&report), ["b", "c", "a", "d"]);
    // Every column on request, in the spec's order.
    let all = build(
        tmp.path(),
        &Selection::default(),
        &Options {
            all_columns: true,
            ..Options::default()
        },
    );
    assert_eq!(
        &all.columns[..8],
        [
            "run",
            "name",
            "sweep",
            "seed",
            "views",
            "cv.folds",
            "head.dropout",
            "head.lr"
        ]
    );
}

#[test]
fn filters_select_by_sweep_prefix_name_glob_last_and_where() {
    let tmp = tempfile::tempdir().unwrap();
    four_runs(tmp.path());
    let select = |s: Selection| names(&build(tmp.path(), &s, &Options::default())).join(",");
    assert_eq!(select(Selection::sweep("abl-12")), "b,a");
    assert_eq!(
        select(Selection {
            name: Some("rec*".into()),
            ..Selection::default()
        }),
        "c,d"
    );
    assert_eq!(
        select(Selection {
            last: Some(2),
            ..Selection::default()
        }),
        "c,d"
    );
    let wheres = |w: &[&str]| Selection {
        wheres: w.iter().map(|s| s.to_string()).collect(),
        ..Selection::default()
    };
    assert_eq!(select(wheres(&["cv.folds=5"])), "b,c,d");
    assert_eq!(select(wheres(&["cv.folds=5", "head.dropout<0.5"])), "c,d");
    assert_eq!(select(wheres(&["oof_log_loss>=0.25"])), "c,a");
    assert_eq!(select(wheres(&["views=original"])), "b,c,a,d");

    let err = |s: Selection| {
        Report::build(tmp.path(), &s, &Options::default())
            .err()
            .unwrap()
            .to_string()
    };
    let e = err(wheres(&["cv.fold=5"]));
    assert!(
        e.contains("no run has a column `cv.fold`") && e.contains("cv.folds"),
        "{e}"
    );
    assert!(err(Selection::sweep("zzz")).contains("no run belongs to a sweep"));
}

#[test]
fn sort_takes_any_column_either_way() {
    let tmp = tempfile::tempdir().unwrap();
    four_runs(tmp.path());
    let sorted = |key: &str| {
        let options = Options {
            sort: Some(key.into()),
            ..Options::default()
        };
        names(&build(tmp.path(), &Selection::default(), &options)).join(",")
    };
    assert_eq!(sorted("seed"), "a,b,c,d");
    assert_eq!(sorted("-seed"), "d,c,a,b");
    assert_eq!(sorted("-oof_log_loss"), "a,c,b,d");
    let options = Options {
        sort: Some("nope".into()),
        ..Options::default()
    };
    assert!(Report::build(tmp.path(), &Selection::default(), &options).is_err());
}

#[test]
fn group_by_gives_each_settings_mean_and_sample_deviation() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (dropout, loss)) in [(0.3, 0.2), (0.3, 0.4), (0.5, 0.1), (0.3, 0.3)]
        .iter()
        .enumerate()
    {
        let dir = format!("r{i}");
        let spec = spec(i as u64, 5, *dropout);
        write(
            tmp.path(),
            &FakeRun {
                dir: &dir,
                name: "x",
                spec: &spec,
                sweep: None,
                started: "t",
                oof: Some(*loss),
            },
        );
    }
    let options = Options {
        group_by: vec!["head.dropout".into()],
        ..Options::default()
    };
    let report = build(tmp.path(), &Selection::default(), &options);
    let json: serde_json::Value =
        serde_json::from_str(&report.render(Format::Json).unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["head.dropout"], 0.3);
    assert_eq!(rows[0]["runs"], 3);
    let mean = rows[0]["oof_log_loss_mean"].as_f64().unwrap();
    let std = rows[0]["oof_log_loss_std"].as_f64().unwrap();
    assert!(
        (mean - 0.3).abs() < 1e-12 && (std - 0.1).abs() < 1e-12,
        "{mean} {std}"
    );
    assert_eq!(rows[1]["runs"], 1);
    assert!(rows[1]["oof_log_loss_std"].is_null());
    // The table renders too.
    assert!(report
        .render(Format::Table)
        .unwrap()
        .contains("oof_log_loss_mean"));
}

#[test]
fn json_rows_keep_the_column_order_and_types() {
    let tmp = tempfile::tempdir().unwrap();
    four_runs(tmp.path());
    let report = build(tmp.path(), &Selection::default(), &Options::default());
    let json = report.render(Format::Json).unwrap();
    let first = &json[..json.find('}').unwrap()];
    let at: Vec<usize> = report
        .columns
        .iter()
        .map(|c| first.find(&format!("\"{c}\":")).expect(c))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["cv.folds"], 5);
    assert_eq!(rows[0]["seed"], 1);
    assert_eq!(rows[0]["oof_log_loss"], 0.2);
    assert!(rows[0]["test_log_loss"].is_null());
    // CSV and Markdown through the same frame.
    assert!(report
        .render(Format::Csv)
        .unwrap()
        .starts_with("run,sweep,seed,cv.folds"));
    assert!(report.render(Format::Markdown).unwrap().contains("| run"));
}

#[test]
fn diff_lists_differing_parameters_and_every_score_with_its_change() {
    let tmp = tempfile::tempdir().unwrap();
    four_runs(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let text = diff(&a, &b, Format::Csv).unwrap();
    assert!(
        text.contains("name,abl-cv.folds=1,abl-cv.folds=5"),
        "{text}"
    );
    assert!(text.contains("cv.folds,1,5"), "{text}");
    assert!(!text.contains("head.dropout"), "{text}");
    assert!(text.contains("oof_log_loss,0.3,0.2,-0.09999"), "{text}");
    assert!(
        text.contains("\"fold 1 of 5, original: oof_log_loss\",0.4,0.30000000000000004,"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&diff(&a, &b, Format::Json).unwrap()).unwrap();
    assert_eq!(json["parameters"][1]["parameter"], "cv.folds");
    assert_eq!(json["metrics"][0]["metric"], "oof_log_loss");
    let err = diff(&a, &tmp.path().join("nope"), Format::Table)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope is not a run directory"), "{err}");
}

#[test]
fn runs_without_a_readable_spec_still_get_a_row() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("run.json"), "{}").unwrap();
    std::fs::write(run.join("spec.toml"), "not toml [").unwrap();
    let (report, warnings) =
        Report::build(tmp.path(), &Selection::default(), &Options::default()).unwrap();
    assert_eq!(report.runs[0].status, "unreadable");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}
