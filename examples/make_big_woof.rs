//! A Kaggle-sized dataset from the woof-dev photos, for the GPU check
//! (`bench/gpu-check.sh`, issue 5): Dog Breed Identification had 10,222
//! training and 10,357 test images (20,579 in all); this writes as many
//! JPEGs in the same layout, each a random crop (72-100% of each side) of a
//! woof-dev photo, sometimes mirrored, re-encoded at quality 90, so decoding
//! costs what real photos cost. Labels come from the source photo
//! (`labels.csv`, `test_labels.csv`), so the run is scored too.
//!
//! `cargo run --release --example make_big_woof -- WOOF_DEV_DIR OUT_DIR [--train 10222] [--test 10357]`
//!
//! Deterministic: image `i` is made from source `i % 450` with a crop drawn
//! from a generator seeded by `i`.

use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::imageops;
use rayon::prelude::*;

struct Source {
    path: PathBuf,
    label: String,
}

fn read_labels(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(id, label)| (id.trim().to_string(), label.trim().to_string()))
        .collect())
}

/// SplitMix64: a tiny deterministic generator for crop boxes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn write_one(src: &Source, out: &Path, seed: u64) -> Result<(), String> {
    let img = image::open(&src.path)
        .map_err(|e| format!("{}: {e}", src.path.display()))?
        .to_rgb8();
    let mut rng = Rng(seed);
    let (w, h) = img.dimensions();
    let cw = ((w as f64) * (0.72 + 0.28 * rng.unit())).max(1.0) as u32;
    let ch = ((h as f64) * (0.72 + 0.28 * rng.unit())).max(1.0) as u32;
    let x = ((w - cw) as f64 * rng.unit()) as u32;
    let y = ((h - ch) as f64 * rng.unit()) as u32;
    let mut crop = imageops::crop_imm(&img, x, y, cw, ch).to_image();
    if rng.next() % 2 == 1 {
        crop = imageops::flip_horizontal(&crop);
    }
    let tmp = out.with_extension("jpg.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut enc = JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90);
    enc.encode_image(&crop)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    drop(enc);
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}

fn run() -> Result<(), String> {
    let mut pos = Vec::new();
    let (mut n_train, mut n_test) = (10_222usize, 10_357usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            args.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match a.as_str() {
            "--train" => n_train = num("--train")?,
            "--test" => n_test = num("--test")?,
            _ if a.starts_with("--") => return Err(format!("unknown option {a}")),
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [src, out] = <[PathBuf; 2]>::try_from(pos)
        .map_err(|_| "usage: make_big_woof WOOF_DEV_DIR OUT_DIR [--train N] [--test N]")?;
    let mut sources = Vec::new();
    for (labels, dir) in [("labels.csv", "train"), ("test_labels.csv", "test")] {
        for (id, label) in read_labels(&src.join(labels))? {
            sources.push(Source {
                path: src.join(dir).join(format!("{id}.jpg")),
                label,
            });
        }
    }
    if sources.is_empty() {
        return Err(format!("no labelled photos under {}", src.display()));
    }
    let mut classes: Vec<&str> = sources.iter().map(|s| s.label.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    for dir in ["train", "test"] {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let started = std::time::Instant::now();
    // (split, index in split, global index)
    let jobs: Vec<(&str, usize, usize)> = (0..n_train)
        .map(|i| ("train", i, i))
        .chain((0..n_test).map(|i| ("test", i, n_train + i)))
        .collect();
    jobs.par_iter().try_for_each(|&(split, i, g)| {
        let path = out.join(split).join(format!("{split}{i:06}.jpg"));
        if path.is_file() {
            return Ok(()); // resumable
        }
        write_one(&sources[g % sources.len()], &path, g as u64)
    })?;
    let mut labels = String::from("id,breed\n");
    let mut test_labels = String::from("id,breed\n");
    let mut sample = format!("id,{}\n", classes.join(","));
    let uniform = format!("{:.6}", 1.0 / classes.len() as f64);
    for &(split, i, g) in &jobs {
        let id = format!("{split}{i:06}");
        let label = &sources[g % sources.len()].label;
        if split == "train" {
            labels.push_str(&format!("{id},{label}\n"));
        } else {
            test_labels.push_str(&format!("{id},{label}\n"));
            sample.push_str(&id);
            for _ in &classes {
                sample.push(',');
                sample.push_str(&uniform);
            }
            sample.push('\n');
        }
    }
    for (name, text) in [
        ("labels.csv", labels),
        ("test_labels.csv", test_labels),
        ("sample_submission.csv", sample),
    ] {
        std::fs::write(out.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    println!(
        "wrote {n_train} train + {n_test} test JPEGs ({} classes) to {} in {:.1} s",
        classes.len(),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("make_big_woof: {e}");
        std::process::exit(1);
    }
}
