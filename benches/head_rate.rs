//! Training the 2017 recipe's heads on a Kaggle-sized feature matrix: 5
//! folds x 2 views of dropout + dense softmax on 10,222 x 4096 features
//! (Xception + InceptionV3), a fixed number of epochs (no early stop), on
//! synthetic class-structured features. Prints one JSON line per mode:
//! the heads one after another (a one-thread pool) and in parallel (what
//! `runner` does), so the ratio is measured side by side.
//!
//! `cargo bench --bench head_rate -- [--rows 10222] [--classes 10]
//! [--epochs 3] [--device cpu|cuda] [--modes sequential,parallel]`

use std::time::Instant;

use candle_core::Device;
use runner::npy::Matrix;
use runner::spec::{HeadSpec, Optimizer};
use runner::train::{CrossValidation, FoldPlan, Labels, ViewFeatures};
use runner_kernels::rng::Rng;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    runner::alloc::keep_freed_memory();
    let (mut rows, mut classes, mut epochs) = (10_222usize, 10usize, 3usize);
    let mut device = "cpu".to_string();
    let mut modes = "sequential,parallel".to_string();
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--rows" => rows = v.parse().expect("--rows N"),
            "--classes" => classes = v.parse().expect("--classes N"),
            "--epochs" => epochs = v.parse().expect("--epochs N"),
            "--device" => device = v,
            "--modes" => modes = v,
            _ => panic!("unknown option {a}"),
        }
    }
    let dev = match device.as_str() {
        "cpu" => Device::Cpu,
        _ => Device::new_cuda(0).expect("cuda:0"),
    };
    let d = 4096;
    // Class-structured features: a class-dependent mean on 64 columns plus
    // uniform noise everywhere, so the heads learn something.
    let mut rng = Rng::new(7);
    let labels: Vec<usize> = (0..rows).map(|_| rng.below(classes)).collect();
    let data: Vec<f32> = (0..rows * d)
        .map(|j| {
            let (r, c) = (j / d, j % d);
            let signal = if c % 64 == labels[r] { 1.0 } else { 0.0 };
            rng.next_f32() + signal
        })
        .collect();
    let views = [
        Matrix::new(rows, d, data.clone()),
        Matrix::new(rows, d, data),
    ];
    let views: Vec<ViewFeatures<'_>> = views
        .iter()
        .map(|train| ViewFeatures { train, test: None })
        .collect();
    let folds = FoldPlan::new(&labels, 5, true, 2017);
    let cfg = HeadSpec {
        dropout: 0.5,
        epochs,
        patience: epochs + 1,
        restore_best: true,
        optimizer: Optimizer::Adagrad,
        lr: 0.01,
        batch_size: 128,
        ..HeadSpec::default()
    };
    let cv = CrossValidation {
        views: &views,
        labels: Labels {
            rows: &labels,
            classes,
        },
        folds: &folds,
        head: &cfg,
        seed: 2017,
    };
    for mode in modes.split(',') {
        let threads = match mode {
            "sequential" => 1,
            "parallel" => std::thread::available_parallelism().map_or(1, |n| n.get()),
            m => panic!("mode {m}: sequential or parallel"),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let started = Instant::now();
        let heads = pool
            .install(|| cv.train(&dev, |_, _, _, _| {}, |_| {}))
            .expect("training");
        let secs = started.elapsed().as_secs_f64();
        let loss: f64 =
            heads.iter().map(|h| h.report.valid_log_loss).sum::<f64>() / heads.len() as f64;
        println!(
            "{{\"mode\":\"{mode}\",\"device\":\"{device}\",\"threads\":{threads},\"rows\":{rows},\"epochs\":{epochs},\"heads\":{},\"seconds\":{secs:.3},\"seconds_per_head_epoch\":{:.4},\"mean_valid_log_loss\":{loss:.5}}}",
            heads.len(),
            secs / (heads.len() * epochs) as f64
        );
    }
}
