//! One run, start to finish: spec -> plan -> features -> heads -> scores ->
//! run directory.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::cache::FeatureCache;
use crate::data::Dataset;
use crate::features::{self, Features};
use crate::log::Log;
use crate::metrics;
use crate::npy::Matrix;
use crate::plan::{Plan, Split};
use crate::rundir::{RunDir, Status};
use crate::spec::{Spec, View};
use crate::train::{train_fold_heads, FoldPlan, HeadReport, ViewFeatures};

/// Scores of one stage of the score propagation.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Score {
    pub stage: String,
    pub oof_rows: usize,
    pub oof_log_loss: f64,
    pub oof_accuracy: f64,
    pub test_log_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeadRow {
    pub fold: usize,
    pub view: View,
    #[serde(flatten)]
    pub report: HeadReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub name: String,
    pub classes: Vec<String>,
    pub train_images: usize,
    pub test_images: usize,
    pub propagation: Vec<Score>,
    #[serde(rename = "final")]
    pub final_score: Score,
    pub heads: Vec<HeadRow>,
}

/// What a finished run hands back to the caller.
pub struct RunOutcome {
    pub dir: std::path::PathBuf,
    pub metrics: Metrics,
}

/// Predictions of every head: out-of-fold per view, test per fold x view.
struct Predictions {
    /// `oof[view]`: a row per training image (rows outside every validation
    /// fold stay zero and are never scored).
    oof: Vec<Matrix>,
    /// `test[view][fold]`.
    test: Vec<Vec<Matrix>>,
    heads: Vec<HeadRow>,
}

/// Runs a spec into a new run directory under `runs_root`. The run
/// directory records failure too: its `run.json` says `failed` with the
/// error, or stays `running` if the process dies.
pub fn run(
    spec: &Spec,
    runs_root: &Path,
    cache: &FeatureCache,
    device: &Device,
    log: &Log,
) -> anyhow::Result<RunOutcome> {
    let started = Instant::now();
    let mut dir = RunDir::create(runs_root, spec)?;
    log.attach_file(&dir.file("run.log"))?;
    log.info(format!("run {}", dir.path.display()));
    let result = run_in(spec, &mut dir, cache, device, log);
    let seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(_) => dir.finish(Status::Complete, seconds, None)?,
        Err(e) => {
            let msg = format!("{e:#}");
            log.info(format!("run failed: {msg}"));
            dir.finish(Status::Failed, seconds, Some(msg))?;
        }
    }
    log.detach_file();
    result.map(|metrics| RunOutcome {
        dir: dir.path.clone(),
        metrics,
    })
}

fn run_in(
    spec: &Spec,
    dir: &mut RunDir,
    cache: &FeatureCache,
    device: &Device,
    log: &Log,
) -> anyhow::Result<Metrics> {
    let data = Dataset::load(&spec.data)?;
    log.info(format!(
        "data: {} training images in {} classes, {} test images{}",
        data.train.len(),
        data.classes.len(),
        data.test.len(),
        if data.test_labels.is_some() {
            " (answer key given)"
        } else {
            ""
        }
    ));

    warn_about_class_sizes(spec, &data, log);

    // Folds before features: a bad fold count fails in seconds, not after
    // an hour of extraction.
    let folds = FoldPlan::new(&data.labels, spec.cv.folds, spec.cv.stratified, spec.seed);
    if let Some(f) = folds
        .folds
        .iter()
        .position(|f| f.train.is_empty() || f.valid.is_empty())
    {
        let missing = if folds.folds[f].valid.is_empty() {
            "validation"
        } else {
            "training"
        };
        anyhow::bail!(
            "cv.folds = {} leaves fold {} without {missing} rows with {} training images; use fewer folds",
            spec.cv.folds,
            f + 1,
            data.train.len()
        );
    }

    let t = Instant::now();
    let plan = Plan::new(spec, &data, Some(cache))?;
    dir.manifest.timings.hash_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let feats = features::ensure(spec, &data, &plan, cache, device, log)?;
    dir.manifest.timings.features_seconds = t.elapsed().as_secs_f64();
    dir.manifest.timings.decode_seconds = feats.decode_seconds;
    dir.manifest.feature_stages_cached = feats.cached;
    dir.manifest.feature_stages_computed = feats.computed;
    dir.write_manifest()?;

    let t = Instant::now();
    let preds = train_heads(spec, &data, &plan, &feats, &folds, device, log)?;
    dir.manifest.timings.heads_seconds = t.elapsed().as_secs_f64();
    check_finite(&preds, &feats)?;

    let propagation = score_propagation(spec, &data, &folds, &preds);
    log.info(propagation_table(&propagation));
    let metrics = Metrics {
        name: spec.name.clone(),
        classes: data.classes.clone(),
        train_images: data.train.len(),
        test_images: data.test.len(),
        final_score: propagation.last().expect("at least one stage").clone(),
        propagation,
        heads: preds.heads.clone(),
    };

    dir.write("metrics.json", &serde_json::to_vec_pretty(&metrics)?)?;
    dir.write("folds.csv", folds_csv(&metrics.heads).as_bytes())?;
    dir.write(
        "oof.csv",
        oof_csv(&data, &folds, &mean(&preds.oof.iter().collect::<Vec<_>>())).as_bytes(),
    )?;
    if !data.test.is_empty() {
        let all: Vec<&Matrix> = preds.test.iter().flatten().collect();
        dir.write(
            "submission.csv",
            submission_csv(&data, &mean(&all)).as_bytes(),
        )?;
    }
    Ok(metrics)
}

/// Warns about classes a head cannot learn (no training image: their
/// probabilities stay near 0) or cannot score well (fewer images than folds:
/// an image alone in its class is scored by a head that never saw it).
fn warn_about_class_sizes(spec: &Spec, data: &Dataset, log: &Log) {
    let counts = data.class_counts();
    let classes_where = |keep: &dyn Fn(usize) -> bool| -> Vec<(&str, usize)> {
        data.classes
            .iter()
            .zip(&counts)
            .filter(|(_, &n)| keep(n))
            .map(|(c, &n)| (c.as_str(), n))
            .collect()
    };
    let first_few = |names: Vec<String>| {
        let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if names.len() > 5 {
            shown + ", ..."
        } else {
            shown
        }
    };
    let unseen = classes_where(&|n| n == 0);
    if !unseen.is_empty() {
        log.info(format!(
            "warning: {} of {} classes have no training image ({}); their probabilities will stay near 0: check labels.csv against the sample submission's columns",
            unseen.len(),
            data.classes.len(),
            first_few(unseen.iter().map(|(c, _)| c.to_string()).collect())
        ));
    }
    let small = classes_where(&|n| n > 0 && n < spec.cv.folds);
    if !small.is_empty() {
        log.info(format!(
            "warning: {} class(es) have fewer training images than cv.folds = {}: {}; their out-of-fold scores are noisy, and an image alone in its class is scored by a head that never saw the class",
            small.len(),
            spec.cv.folds,
            first_few(small.iter().map(|(c, n)| format!("{c} ({n})")).collect())
        ));
    }
}

/// No NaN or infinity reaches the scores or the submission: the run fails
/// and says which input is to blame.
fn check_finite(preds: &Predictions, feats: &features::Features) -> anyhow::Result<()> {
    let finite = |m: &Matrix| m.data.iter().all(|v| v.is_finite());
    if preds
        .oof
        .iter()
        .chain(preds.test.iter().flatten())
        .all(finite)
    {
        return Ok(());
    }
    let mut bad: Vec<&str> = feats
        .by_key
        .iter()
        .filter(|(_, m)| !finite(m))
        .map(|(key, _)| key.as_str())
        .collect();
    bad.sort();
    if bad.is_empty() {
        anyhow::bail!(
            "the heads diverged (NaN or infinite predictions) on finite features: lower [head] lr"
        );
    }
    anyhow::bail!(
        "features of stage(s) {} contain NaN or infinite values: check the backbone weights (`runner inspect`), then delete those stages from the cache to recompute",
        bad.join(", ")
    )
}

fn train_heads(
    spec: &Spec,
    data: &Dataset,
    plan: &Plan,
    feats: &Features,
    folds: &FoldPlan,
    device: &Device,
    log: &Log,
) -> anyhow::Result<Predictions> {
    let k = data.classes.len();
    let n_folds = folds.folds.len();
    let n_backbones = spec.backbones.len();
    let train: Vec<Matrix> = spec
        .views
        .iter()
        .map(|&view| feats.concat(plan, n_backbones, view, Split::Train))
        .collect();
    let test: Vec<Option<Matrix>> = spec
        .views
        .iter()
        .map(|&view| {
            (!data.test.is_empty()).then(|| feats.concat(plan, n_backbones, view, Split::Test))
        })
        .collect();
    let views: Vec<ViewFeatures<'_>> = train
        .iter()
        .zip(&test)
        .map(|(train, test)| ViewFeatures {
            train,
            test: test.as_ref(),
        })
        .collect();
    let progress =
        std::sync::Mutex::new(log.progress("heads", (n_folds * spec.views.len()) as u64, "heads"));
    let label = |f: usize, v: usize| format!("fold {}/{n_folds} {}", f + 1, spec.views[v].name());
    let heads = train_fold_heads(
        &views,
        &data.labels,
        k,
        folds,
        &spec.head,
        spec.seed,
        device,
        |f, v, epoch, loss| {
            let msg = format!("{} epoch {epoch} val_loss {loss:.4}", label(f, v));
            progress.lock().expect("not poisoned").set_message(msg);
        },
        |_| progress.lock().expect("not poisoned").inc(1),
    )?;
    progress.into_inner().expect("not poisoned").finish();

    let mut preds = Predictions {
        oof: vec![
            Matrix::new(data.train.len(), k, vec![0.0; data.train.len() * k]);
            spec.views.len()
        ],
        test: vec![Vec::new(); spec.views.len()],
        heads: Vec::new(),
    };
    for head in heads {
        let r = &head.report;
        log.info(format!(
            "{}: {} epochs, best {} val log loss {:.4} acc {:.3}",
            label(head.fold, head.view),
            r.epochs_run,
            r.best_epoch,
            r.valid_log_loss,
            r.valid_accuracy
        ));
        let oof = &mut preds.oof[head.view];
        for (row, &i) in folds.folds[head.fold].valid.iter().enumerate() {
            oof.data[i * k..(i + 1) * k].copy_from_slice(head.valid.row(row));
        }
        if let Some(t) = head.test {
            preds.test[head.view].push(t);
        }
        preds.heads.push(HeadRow {
            fold: head.fold + 1,
            view: spec.views[head.view],
            report: head.report,
        });
    }
    Ok(preds)
}

/// Element-wise mean of equally shaped matrices.
fn mean(parts: &[&Matrix]) -> Matrix {
    let first = parts[0];
    let mut out = Matrix::new(first.rows, first.cols, vec![0.0; first.data.len()]);
    for m in parts {
        for (o, &v) in out.data.iter_mut().zip(&m.data) {
            *o += v;
        }
    }
    let n = parts.len() as f32;
    out.data.iter_mut().for_each(|o| *o /= n);
    out
}

fn select_rows(m: &Matrix, rows: &[usize]) -> Matrix {
    Matrix::new(
        rows.len(),
        m.cols,
        rows.iter().flat_map(|&i| m.row(i).to_vec()).collect(),
    )
}

/// The reference's score propagation: first fold alone -> all folds (first
/// view) -> all folds, all views.
fn score_propagation(
    spec: &Spec,
    data: &Dataset,
    folds: &FoldPlan,
    preds: &Predictions,
) -> Vec<Score> {
    let score = |stage: String, oof: &Matrix, rows: &[usize], tests: &[&Matrix]| {
        let oof = select_rows(oof, rows);
        let y: Vec<usize> = rows.iter().map(|&i| data.labels[i]).collect();
        let (test_log_loss, test_accuracy) = match (&data.test_labels, tests.is_empty()) {
            (Some(yt), false) => {
                let p = mean(tests);
                (
                    Some(metrics::log_loss(&p, yt)),
                    Some(metrics::accuracy(&p, yt)),
                )
            }
            _ => (None, None),
        };
        Score {
            stage,
            oof_rows: rows.len(),
            oof_log_loss: metrics::log_loss(&oof, &y),
            oof_accuracy: metrics::accuracy(&oof, &y),
            test_log_loss,
            test_accuracy,
        }
    };
    let first_view = spec.views[0].name();
    let n_folds = folds.folds.len();
    let mut rows = vec![score(
        format!(
            "fold 1 of {}, {first_view}",
            if spec.cv.folds == 1 { 5 } else { n_folds }
        ),
        &preds.oof[0],
        &folds.folds[0].valid,
        &preds.test[0].iter().take(1).collect::<Vec<_>>(),
    )];
    let validated = folds.validated_rows();
    if n_folds > 1 {
        rows.push(score(
            format!("{n_folds} folds, {first_view}"),
            &preds.oof[0],
            &validated,
            &preds.test[0].iter().collect::<Vec<_>>(),
        ));
    }
    if spec.views.len() > 1 {
        let names: Vec<&str> = spec.views.iter().map(|v| v.name()).collect();
        rows.push(score(
            format!(
                "{n_folds} fold{}, {}",
                if n_folds == 1 { "" } else { "s" },
                names.join(" + ")
            ),
            &mean(&preds.oof.iter().collect::<Vec<_>>()),
            &validated,
            &preds.test.iter().flatten().collect::<Vec<_>>(),
        ));
    }
    rows
}

fn propagation_table(rows: &[Score]) -> String {
    let mut s = String::new();
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let _ = writeln!(
        s,
        "{:<36} {:>9} {:>8} {:>10} {:>9}",
        "stage", "oof loss", "oof acc", "test loss", "test acc"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<36} {:>9.4} {:>8.4} {:>10} {:>9}",
            r.stage,
            r.oof_log_loss,
            r.oof_accuracy,
            fmt(r.test_log_loss, 4),
            fmt(r.test_accuracy, 4)
        );
    }
    s.trim_end().to_string()
}

fn folds_csv(heads: &[HeadRow]) -> String {
    let mut s = String::from("fold,view,epochs_run,best_epoch,valid_log_loss,valid_accuracy\n");
    for h in heads {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{}",
            h.fold,
            h.view.name(),
            h.report.epochs_run,
            h.report.best_epoch,
            h.report.valid_log_loss,
            h.report.valid_accuracy
        );
    }
    s
}

/// Quotes a CSV field when it needs it.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Probabilities normalised to sum to 1, each written at full precision.
fn prob_fields(row: &[f32], out: &mut String) {
    let sum: f64 = row.iter().map(|&p| p as f64).sum();
    for &p in row {
        let _ = write!(out, ",{}", p as f64 / sum);
    }
}

fn oof_csv(data: &Dataset, folds: &FoldPlan, oof: &Matrix) -> String {
    let mut s = String::from("id,label");
    for c in &data.classes {
        s.push(',');
        s.push_str(&csv_field(c));
    }
    s.push('\n');
    for i in folds.validated_rows() {
        s.push_str(&csv_field(&data.train[i].id));
        s.push(',');
        s.push_str(&csv_field(&data.classes[data.labels[i]]));
        prob_fields(oof.row(i), &mut s);
        s.push('\n');
    }
    s
}

/// The submission: the sample submission's exact header and id order.
fn submission_csv(data: &Dataset, test: &Matrix) -> String {
    let header = data.submission_header.clone().unwrap_or_else(|| {
        std::iter::once("id".to_string())
            .chain(data.classes.iter().cloned())
            .collect()
    });
    let mut s = header
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",");
    s.push('\n');
    for (r, item) in data.test.iter().enumerate() {
        s.push_str(&csv_field(&item.id));
        prob_fields(test.row(r), &mut s);
        s.push('\n');
    }
    s
}
