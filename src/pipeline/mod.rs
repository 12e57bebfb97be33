//! One run, start to finish: checked spec -> plan -> features -> heads ->
//! scores -> run directory.
//!
//! `scores` computes the score propagation, `tables` writes the run's CSVs.

mod calibrate;
mod checks;
pub use calibrate::scaling as temperature_scaling;
mod scores;
mod tables;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::features::{self, Features, Loaded};
use crate::model::SavedHead;
use crate::npy::Matrix;
use crate::plan::{Plan, Split};
use crate::run::Run;
use crate::rundir::{RunDir, Status, SweepRecord};
use crate::spec::{Calibration, Spec, View};
use crate::train::dense::DenseWeights;
use crate::train::{CrossValidation, FoldPlan, HeadReport, Labels, ViewFeatures};

pub use scores::Score;
pub(crate) use tables::{csv_bytes, submission_csv};

pub use scores::{mean, propagation_table};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadRow {
    pub fold: usize,
    pub view: View,
    #[serde(flatten)]
    pub report: HeadReport,
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub name: String,
    pub classes: Vec<String>,
    // An ensemble's metrics.json (no images or heads of its own) reads too.
    #[serde(default)]
    pub train_images: usize,
    #[serde(default)]
    pub test_images: usize,
    pub propagation: Vec<Score>,
    #[serde(rename = "final")]
    pub final_score: Score,
    #[serde(default)]
    pub heads: Vec<HeadRow>,
    /// `1 / T` of `[head] calibrate = "temperature"`, fitted on every
    /// out-of-fold row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inverse_temperature: Option<f64>,
}

/// What a finished run hands back to the caller.
pub struct RunOutcome {
    pub dir: PathBuf,
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
    /// Every head's weights, in the order `test` flattens to.
    weights: Vec<(SavedHead, DenseWeights)>,
}

/// Runs a checked spec into a new run directory under `runs_root`. The
/// run directory records failure too: its `run.json` says `failed` with the
/// error, or stays `running` if the process dies.
pub fn run(run: &Run<'_>, runs_root: &Path) -> anyhow::Result<RunOutcome> {
    let prepared = prepare(run, runs_root, None, &Loaded::new())?;
    finish(run, prepared)
}

/// A run whose directory exists and whose features are in memory: what is
/// left is training the heads ([`finish`]). A sweep prepares its members one
/// by one (each feature stage is computed or read once) and finishes them
/// side by side.
pub struct Prepared {
    dir: RunDir,
    started: Instant,
    folds: FoldPlan,
    plan: Plan,
    feats: Features,
}

impl Prepared {
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    pub fn features(&self) -> &Features {
        &self.feats
    }
}

/// Creates the run directory, plans the folds and gets every feature stage
/// (from `loaded`, the cache, or the backbones).
pub fn prepare(
    run: &Run<'_>,
    runs_root: &Path,
    sweep: Option<SweepRecord>,
    loaded: &Loaded,
) -> anyhow::Result<Prepared> {
    let dir = RunDir::create(runs_root, run.spec, sweep)?;
    prepare_dir(run, dir, loaded)
}

/// Runs a spec again inside an unfinished run directory (`runner resume`):
/// every feature chunk the earlier attempt cached is reused.
pub fn resume(run: &Run<'_>, dir: &Path) -> anyhow::Result<RunOutcome> {
    let dir = RunDir::reopen(dir, run.spec)?;
    let prepared = prepare_dir(run, dir, &Loaded::new())?;
    finish(run, prepared)
}

fn prepare_dir(run: &Run<'_>, mut dir: RunDir, loaded: &Loaded) -> anyhow::Result<Prepared> {
    let started = Instant::now();
    run.log.attach_file(&dir.file("run.log"))?;
    run.log.info(format!("run {}", dir.path.display()));
    let result = prepare_in(run, &mut dir, loaded);
    match result {
        Ok((folds, plan, feats)) => {
            run.log.detach_file();
            Ok(Prepared {
                dir,
                started,
                folds,
                plan,
                feats,
            })
        }
        Err(e) => Err(fail(run, dir, started, e)),
    }
}

/// Trains the heads of a prepared run, scores them and writes the tables.
pub fn finish(run: &Run<'_>, prepared: Prepared) -> anyhow::Result<RunOutcome> {
    let Prepared {
        mut dir,
        started,
        folds,
        plan,
        feats,
    } = prepared;
    run.log.attach_file(&dir.file("run.log"))?;
    let result = finish_in(run, &mut dir, &folds, &plan, &feats);
    conclude(run, dir, started, result)
}

/// Marks the run complete, or failed, and hands back its outcome.
fn conclude(
    run: &Run<'_>,
    mut dir: RunDir,
    started: Instant,
    result: anyhow::Result<Metrics>,
) -> anyhow::Result<RunOutcome> {
    match result {
        Ok(metrics) => {
            dir.manifest.stage = None;
            dir.finish(Status::Complete, started.elapsed().as_secs_f64(), None)?;
            // The page is drawn from the files just written; a failure to
            // draw it costs the page, not the finished run.
            match crate::report::html::write_run_page(&dir.path) {
                Ok(page) => run.log.info(format!("report {}", page.display())),
                Err(e) => run.log.info(format!("warning: no report.html: {e:#}")),
            }
            run.log.detach_file();
            Ok(RunOutcome {
                dir: dir.path,
                metrics,
            })
        }
        Err(e) => Err(fail(run, dir, started, e)),
    }
}

/// Records a failed or interrupted run (status, error, time, the stage it
/// was in) and hands the error back.
fn fail(run: &Run<'_>, mut dir: RunDir, started: Instant, e: anyhow::Error) -> anyhow::Error {
    let msg = format!("{e:#}");
    let (status, word) = match crate::interrupt::cause(&e) {
        Some(_) => (Status::Interrupted, "interrupted"),
        None => (Status::Failed, "failed"),
    };
    let stage = dir.manifest.stage.clone().unwrap_or_else(|| "setup".into());
    run.log.info(format!("run {word} during {stage}: {msg}"));
    let recorded = dir.finish(status, started.elapsed().as_secs_f64(), Some(msg));
    run.log.detach_file();
    match recorded {
        Ok(()) => e,
        Err(w) => e.context(format!(
            "{} cannot record the failure: {w}",
            dir.path.display()
        )),
    }
}

fn prepare_in(
    run: &Run<'_>,
    dir: &mut RunDir,
    loaded: &Loaded,
) -> anyhow::Result<(FoldPlan, Plan, Features)> {
    let (spec, data) = (run.spec, run.data);
    run.log.info(format!(
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
    for why in &data.skipped {
        run.log.info(format!(
            "warning: left out of training ([data] on_bad_image = \"skip\"): {why}"
        ));
    }
    checks::warn_about_class_sizes(run);

    // Folds before features: a bad fold count fails in seconds, not after
    // an hour of extraction.
    let folds = fold_plan(run.spec, run.data)?;

    dir.enter("hashing")?;
    let t = Instant::now();
    let plan = Plan::new(spec, data, Some(run.cache))?;
    dir.manifest.timings.hash_seconds = t.elapsed().as_secs_f64();
    dir.manifest.feature_stages = plan.stages.iter().map(|s| s.key.clone()).collect();

    dir.enter("features")?;
    let t = Instant::now();
    let feats = features::ensure_with(run, &plan, loaded)?;
    dir.manifest.timings.features_seconds = t.elapsed().as_secs_f64();
    dir.manifest.timings.decode_seconds = feats.decode_seconds;
    dir.manifest.timings.backbones = feats.seconds_by_backbone(spec);
    dir.manifest.feature_stages_cached = feats.cached;
    dir.manifest.feature_stages_computed = feats.computed;
    dir.write_manifest()?;
    Ok((folds, plan, feats))
}

fn finish_in(
    run: &Run<'_>,
    dir: &mut RunDir,
    folds: &FoldPlan,
    plan: &Plan,
    feats: &Features,
) -> anyhow::Result<Metrics> {
    let (spec, data) = (run.spec, run.data);
    crate::interrupt::check()?;
    dir.enter("heads")?;
    let t = Instant::now();
    let preds = train_heads(run, plan, feats, folds)?;
    crate::interrupt::check()?;
    dir.enter("outputs")?;
    dir.manifest.timings.heads_seconds = t.elapsed().as_secs_f64();
    checks::check_finite(&preds, feats)?;

    let mut propagation = scores::score_propagation(spec, data, folds, &preds);
    let oof = mean(&preds.oof.iter().collect::<Vec<_>>());
    let all_tests: Vec<&Matrix> = preds.test.iter().flatten().collect();
    let test = (!data.test.is_empty()).then(|| mean(&all_tests));
    // Calibration replaces the averaged probabilities everywhere after
    // this point: scores, tables, submission and the saved model.
    let (oof, test, inverse_temperature) = match spec.head.calibrate {
        Calibration::None => (oof, test, None),
        Calibration::Temperature => {
            let c = calibrate::temperature(folds, &data.labels, &oof, test.as_ref());
            let last = &propagation.last().expect("at least one stage").stage;
            propagation.push(scores::score(
                data,
                format!("{last} + temperature"),
                &c.oof,
                &folds.validated_rows(),
                &c.test.iter().collect::<Vec<_>>(),
            ));
            let t = 1.0 / c.inverse_temperature;
            let effect = if t < 1.0 {
                "below 1: sharpens, the averaged probabilities were too soft"
            } else {
                "above 1: softens, the averaged probabilities were too confident"
            };
            run.log.info(format!(
                "temperature {t:.4} ({effect}; fitted on every out-of-fold row, out-of-fold scores by nested cross-validation)"
            ));
            (c.oof, c.test, Some(c.inverse_temperature))
        }
    };
    run.log.info(scores::propagation_table(&propagation));
    let metrics = Metrics {
        name: spec.name.clone(),
        classes: data.classes.clone(),
        train_images: data.train.len(),
        test_images: data.test.len(),
        final_score: propagation.last().expect("at least one stage").clone(),
        propagation,
        heads: preds.heads.clone(),
        inverse_temperature,
    };

    dir.write("metrics.json", &serde_json::to_vec_pretty(&metrics)?)?;
    dir.write("folds.csv", &tables::folds_csv(&metrics.heads)?)?;
    dir.write("history.csv", &tables::history_csv(&metrics.heads)?)?;
    dir.write("oof.csv", &tables::oof_csv(data, folds, &oof)?)?;
    if let Some(test) = &test {
        dir.write("submission.csv", &tables::submission_csv(data, test)?)?;
    }
    write_class_tables(run, folds, &oof, test.as_ref(), dir)?;
    save_model(
        run,
        plan,
        feats,
        folds,
        preds,
        inverse_temperature,
        &dir.path,
    )?;
    Ok(metrics)
}

/// `per_class.csv` and `confusion.csv`: out-of-fold, and on the test set
/// when there is an answer key.
fn write_class_tables(
    run: &Run<'_>,
    folds: &FoldPlan,
    oof: &Matrix,
    test: Option<&Matrix>,
    dir: &RunDir,
) -> anyhow::Result<()> {
    let data = run.data;
    let rows = folds.validated_rows();
    let k = data.classes.len();
    let oof_rows = Matrix::new(
        rows.len(),
        k,
        rows.iter()
            .flat_map(|&r| oof.row(r).iter().copied())
            .collect(),
    );
    let oof_labels: Vec<usize> = rows.iter().map(|&r| data.labels[r]).collect();
    let mut sets = vec![tables::Scored {
        split: "oof",
        probs: &oof_rows,
        labels: &oof_labels,
    }];
    if let (Some(probs), Some(labels)) = (test, &data.test_labels) {
        sets.push(tables::Scored {
            split: "test",
            probs,
            labels,
        });
    }
    dir.write(
        "per_class.csv",
        &tables::per_class_csv(&data.classes, &sets)?,
    )?;
    dir.write(
        "confusion.csv",
        &tables::confusion_csv(&data.classes, &sets)?,
    )?;
    Ok(())
}

/// Writes `model/`: every head and what `runner predict` needs to feed it.
fn save_model(
    run: &Run<'_>,
    plan: &Plan,
    feats: &Features,
    folds: &FoldPlan,
    preds: Predictions,
    inverse_temperature: Option<f64>,
    dir: &Path,
) -> anyhow::Result<()> {
    let spec = run.spec;
    let fingerprints = spec
        .backbones
        .iter()
        .map(|b| crate::plan::checked_fingerprint(b, Some(run.cache)))
        .collect::<Result<Vec<_>, _>>()?;
    let widths: Vec<usize> = (0..spec.backbones.len())
        .map(|b| feats.get(plan.stage(b, spec.views[0], Split::Train)).cols)
        .collect();
    crate::model::Model::new(
        spec,
        &run.data.classes,
        folds.folds.len(),
        fingerprints,
        &widths,
        preds.weights,
        inverse_temperature,
    )
    .save(dir)
}

/// The spec's folds over the training images; an error when a fold would
/// have no training or no validation rows (checked before a run starts,
/// too, so a sweep member with too many folds stops the sweep early).
pub fn fold_plan(spec: &Spec, data: &Dataset) -> anyhow::Result<FoldPlan> {
    let cv = &spec.cv;
    let folds = FoldPlan::new(&data.labels, cv.folds, cv.stratified, spec.seed);
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
            cv.folds,
            f + 1,
            data.train.len()
        );
    }
    Ok(folds)
}

/// Trains every fold x view head on the features of `plan` and gathers
/// their predictions.
fn train_heads(
    run: &Run<'_>,
    plan: &Plan,
    feats: &Features,
    folds: &FoldPlan,
) -> anyhow::Result<Predictions> {
    let (spec, data, log) = (run.spec, run.data, run.log);
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
    let cv = CrossValidation {
        views: &views,
        labels: Labels {
            rows: &data.labels,
            classes: k,
        },
        folds,
        head: &spec.head,
        seed: spec.seed,
    };
    let heads = cv.train(
        run.device,
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
        weights: Vec::new(),
    };
    for head in heads {
        let r = &head.report;
        let fit = match r.l2 {
            Some(l2) => format!("l2 {l2}, {} L-BFGS iterations", r.epochs_run),
            None => format!("{} epochs, best {}", r.epochs_run, r.best_epoch),
        };
        log.info(format!(
            "{}: {fit} val log loss {:.4} acc {:.3}",
            label(head.fold, head.view),
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
        let saved = SavedHead {
            fold: head.fold + 1,
            view: spec.views[head.view],
        };
        preds.weights.push((saved, head.weights));
    }
    Ok(preds)
}
