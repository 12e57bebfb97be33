//! The HTML reports: every run writes its page, `runner report --html`
//! writes one across runs that links to them, and both are self-contained.

use super::{run_dirs, write_spec};
use crate::common::{runner, stderr, woof_subset};

/// The `id`s of the page's plots, in order.
fn plot_ids(html: &str) -> Vec<String> {
    html.split("<figure class=\"plot\" id=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect()
}

/// Every plot holds an SVG with something drawn in it.
fn assert_plots_drawn(html: &str) {
    for part in html.split("<figure class=\"plot\"").skip(1) {
        let figure = &part[..part.find("</figure>").unwrap()];
        assert!(figure.contains("<svg"), "{figure}");
        assert!(
            figure.contains("<rect") || figure.contains("<polyline") || figure.contains("<path"),
            "{figure}"
        );
    }
}

#[test]
fn every_run_writes_a_report_page_and_report_html_compares_the_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 10, 2);
    write_spec(dir, "r", 2, 0.5);
    let out = runner(
        dir,
        &[
            "--quiet",
            "--runs",
            "runs",
            "r.toml",
            "--sweep",
            "head.lr=0.01,0.02",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = run_dirs(&dir.join("runs"));
    assert_eq!(runs.len(), 2);

    let run = &runs[0];
    let history = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert!(history.starts_with("fold,view,epoch,split,metric,value\n1,original,1,train,log_loss,"));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    let head = &metrics["heads"][0];
    let epochs = head["history"].as_array().unwrap();
    assert_eq!(epochs.len() as u64, head["epochs_run"].as_u64().unwrap());
    // A row per fold x view x epoch x split x metric.
    let rows: usize = metrics["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["history"].as_array().unwrap().len() * 4)
        .sum();
    assert_eq!(history.lines().count(), 1 + rows);
    let backbones =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(run.join("run.json")).unwrap())
            .unwrap()["timings"]["backbones"]
            .clone();
    assert_eq!(
        backbones[0]["backbone"], "efficientnet_lite0",
        "{backbones}"
    );

    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    let ids = plot_ids(&page);
    for want in [
        "propagation",
        "curve-1-original",
        "curve-2-hflip",
        "fold-scores",
        "confusion-oof",
        "confusion-test",
        "class-accuracy",
        "class-log-loss",
        "reliability",
        "time",
    ] {
        assert!(ids.iter().any(|i| i == want), "{want} not in {ids:?}");
    }
    assert_plots_drawn(&page);
    assert!(page.contains("Expected calibration error"));
    assert!(
        !page.contains("<script src") && !page.contains("<link"),
        "nothing fetched"
    );

    let out = runner(dir, &["--runs", "runs", "report", "--html", "all.html"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = std::fs::read_to_string(dir.join("all.html")).unwrap();
    assert!(
        plot_ids(&all).contains(&"by-head-lr".to_string()),
        "{:?}",
        plot_ids(&all)
    );
    assert_plots_drawn(&all);
    // Links relative to the page, one per run.
    for run in &runs {
        let name = run.file_name().unwrap().to_str().unwrap();
        assert!(
            all.contains(&format!("href=\"runs/{name}/report.html\"")),
            "{name}"
        );
    }
    // Without a file: the runs folder's report.html.
    let out = runner(dir, &["--runs", "runs", "report", "--html"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("runs/report.html").is_file());
}
