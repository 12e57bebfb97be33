//! Hostile input as a corpus: odd and broken images, CSVs and specs, each
//! generated from the woof-dev photos and run through the binary. For every
//! case: the exit code, the file (or spec key) named in the message, no
//! panic, and nothing a later run would trust (no run marked complete, no
//! cached features from a refused image).
//!
//! Valid-but-odd inputs share one full run; failing cases each stop early
//! (before extraction where the check allows, else at the first chunk).
//! `bad_inputs.rs` holds the cases this corpus does not repeat (text named
//! .jpg, a 65,500-pixel header, truncation, labels without a header, ...).

use std::path::{Path, PathBuf};
use std::process::Output;

use image::{DynamicImage, ImageFormat};

use super::{json, run_dirs};
use crate::common::{model, runner, stderr, stdout, woof_subset};

/// Writes `dir/NAME.toml` over `dir/data`, the smallest spec the e2e tests
/// run: one view, two folds, a few epochs.
fn write_spec(dir: &Path, name: &str, on_bad_image: Option<&str>) {
    let policy = on_bad_image.map_or(String::new(), |p| format!("on_bad_image = \"{p}\"\n"));
    let spec = format!(
        "name = \"{name}\"\nseed = 7\nviews = [\"original\"]\n[data]\nlayout = \"kaggle\"\nroot = \"data\"\n{policy}\
         [[backbone]]\narch = \"efficientnet_lite0\"\nweights = \"{}\"\n[extract]\nbatch_size = 8\n\
         [cv]\nfolds = 2\n[head]\nepochs = 3\npatience = 1\nbatch_size = 16\n",
        model("efficientnet_lite0_imagenet.safetensors").display()
    );
    std::fs::write(dir.join(format!("{name}.toml")), spec).unwrap();
}

/// Runs `NAME.toml` in `dir` with the feature cache at `dir/cache`.
fn run(dir: &Path, name: &str) -> Output {
    let out = runner(
        dir,
        &["--quiet", "--cache", "cache", &format!("{name}.toml")],
    );
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{name}: {err}");
    out
}

/// The statuses of every run directory under `dir/runs`.
fn statuses(dir: &Path) -> Vec<String> {
    let runs = dir.join("runs");
    if !runs.exists() {
        return Vec::new();
    }
    run_dirs(&runs)
        .iter()
        .map(|r| {
            json(&r.join("run.json"))["status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Finished feature entries in the cache at `dir/cache`.
fn cached_features(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "chunks") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "npy") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("cache/features"), &mut out);
    out
}

/// A failing case: exit 1, every needle in stderr, no run marked complete.
fn assert_fails(dir: &Path, name: &str, needles: &[&str]) -> String {
    let out = run(dir, name);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{name}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{name}: {needle:?} missing from: {err}"
        );
    }
    assert!(
        !statuses(dir).iter().any(|s| s == "complete"),
        "{name}: a failed case left a complete run"
    );
    err
}

/// The training images of `dir/data`, sorted.
fn train_images(dir: &Path) -> Vec<PathBuf> {
    let mut train: Vec<PathBuf> = std::fs::read_dir(dir.join("data/train"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    train.sort();
    train
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

// ---- image makers ----

/// Where a JPEG's entropy-coded data starts (after its scan header).
fn scan_data_start(bytes: &[u8]) -> usize {
    let sos = (0..bytes.len() - 1)
        .find(|&i| bytes[i] == 0xFF && bytes[i + 1] == 0xDA)
        .unwrap();
    sos + 2 + u16::from_be_bytes([bytes[sos + 2], bytes[sos + 3]]) as usize
}

/// Overwrites 200 bytes in the middle of a JPEG's data with garbage (no
/// 0xFF: no marker to give it away).
fn garble_middle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let start = scan_data_start(&bytes);
    let mid = start + (bytes.len() - start) / 2;
    let mut seed = 12345u64;
    for b in &mut bytes[mid..mid + 200] {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = ((seed >> 33) as u8).min(0xFE);
    }
    std::fs::write(path, bytes).unwrap();
}

/// Patches a JPEG's frame header to claim `side x side` pixels.
fn claim_dimensions(path: &Path, side: u16) {
    let mut bytes = std::fs::read(path).unwrap();
    let sof = (0..bytes.len() - 9)
        .find(|&i| bytes[i] == 0xFF && matches!(bytes[i + 1], 0xC0..=0xC2))
        .unwrap();
    let s = side.to_be_bytes();
    bytes[sof + 5..sof + 9].copy_from_slice(&[s[0], s[1], s[0], s[1]]);
    std::fs::write(path, bytes).unwrap();
}

/// A JPEG with an APP1 Exif segment whose orientation tag is `orientation`.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A 16 x 16 CMYK baseline JPEG (Adobe APP14, no colour transform), written
/// by hand: every block is flat grey (one-code Huffman tables: DC difference
/// 0, then end of block).
fn cmyk_jpeg() -> Vec<u8> {
    let mut j = vec![0xFF, 0xD8];
    // APP14 Adobe: version 100, flags 0, 0, transform 0 (CMYK as stored).
    j.extend_from_slice(&[0xFF, 0xEE, 0, 14]);
    j.extend_from_slice(b"Adobe\0\x64\0\0\0\0\0");
    // One quantisation table of ones.
    j.extend_from_slice(&[0xFF, 0xDB, 0, 67, 0]);
    j.extend_from_slice(&[1; 64]);
    // Frame: 8-bit, 16 x 16, four components sampled 1x1, table 0.
    j.extend_from_slice(&[0xFF, 0xC0, 0, 20, 8, 0, 16, 0, 16, 4]);
    for id in 1..=4 {
        j.extend_from_slice(&[id, 0x11, 0]);
    }
    // DC and AC tables: one code of one bit, symbol 0.
    for class in [0x00, 0x10] {
        j.extend_from_slice(&[0xFF, 0xC4, 0, 20, class, 1]);
        j.extend_from_slice(&[0; 15]);
        j.push(0);
    }
    // Scan over the four components.
    j.extend_from_slice(&[0xFF, 0xDA, 0, 14, 4]);
    for id in 1..=4 {
        j.extend_from_slice(&[id, 0x00]);
    }
    j.extend_from_slice(&[0, 63, 0]);
    // 4 MCUs x 4 blocks x 2 bits = 32 zero bits.
    j.extend_from_slice(&[0, 0, 0, 0]);
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

/// The valid-but-odd images, made from `base`: file stem and bytes.
fn odd_images(base: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let img = image::open(base).unwrap();
    let encode = |img: &DynamicImage, format: ImageFormat| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let jpeg = encode(&DynamicImage::ImageRgb8(img.to_rgb8()), ImageFormat::Jpeg);
    vec![
        ("png-named-jpg", encode(&img, ImageFormat::Png)),
        ("cmyk", cmyk_jpeg()),
        (
            "sixteen-bit",
            encode(&DynamicImage::ImageRgb16(img.to_rgb16()), ImageFormat::Png),
        ),
        (
            "grayscale",
            encode(&DynamicImage::ImageLuma8(img.to_luma8()), ImageFormat::Jpeg),
        ),
        (
            "alpha",
            encode(&DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::Png),
        ),
        (
            "one-pixel",
            encode(
                &img.resize_exact(1, 1, image::imageops::Nearest),
                ImageFormat::Jpeg,
            ),
        ),
        ("exif-rotated-180", with_exif_orientation(&jpeg, 3)),
        ("exif-rotated-90", with_exif_orientation(&jpeg, 6)),
        ("exif-rotated-270", with_exif_orientation(&jpeg, 8)),
        ("chien-\u{e9}t\u{e9}-\u{72ac}", jpeg.clone()),
    ]
}

/// A dataset whose CSVs are written the hard way (UTF-8 byte order mark,
/// CRLF line ends, a class name holding a comma, quoted) and whose
/// training images include every odd image, half in each class.
fn odd_dataset(dir: &Path) -> Vec<String> {
    let data = dir.join("data");
    woof_subset(&data, 2, 4, 1);
    let train = train_images(dir);
    let labels = std::fs::read_to_string(data.join("labels.csv")).unwrap();
    let classes: Vec<String> = {
        let mut c: Vec<String> = labels
            .lines()
            .skip(1)
            .map(|l| l.split_once(',').unwrap().1.to_string())
            .collect();
        c.dedup();
        c
    };
    let mut rows: Vec<String> = labels.lines().skip(1).map(str::to_string).collect();
    let mut ids = Vec::new();
    for (i, (stem, bytes)) in odd_images(&train[0]).into_iter().enumerate() {
        std::fs::write(data.join(format!("train/{stem}.jpg")), bytes).unwrap();
        rows.push(format!("{stem},{}", classes[i % 2]));
        ids.push(stem.to_string());
    }
    // The second class gets a name with a comma in every CSV.
    let renamed = "terrier, silky";
    let quote = |text: &str| text.replace(&classes[1], &format!("\"{renamed}\""));
    let crlf = |lines: Vec<String>| format!("\u{feff}{}\r\n", lines.join("\r\n"));
    std::fs::write(
        data.join("labels.csv"),
        quote(&crlf(
            std::iter::once("id,breed".to_string())
                .chain(rows)
                .collect(),
        )),
    )
    .unwrap();
    for csv in ["sample_submission.csv", "test_labels.csv"] {
        let text = std::fs::read_to_string(data.join(csv)).unwrap();
        std::fs::write(
            data.join(csv),
            quote(&crlf(text.lines().map(str::to_string).collect())),
        )
        .unwrap();
    }
    ids
}

#[test]
fn hostile_images_csvs_and_specs_are_named_refused_or_survived() {
    let tmp = tempfile::tempdir().unwrap();
    odd_inputs_run_to_completion_warning_about_damage(&tmp.path().join("odd"));
    damaged_images_under_each_policy(&tmp.path().join("policy"));
    undecodable_images_fail_naming_the_file(&tmp.path().join("undecodable"));
    bad_csvs_are_refused_naming_file_and_line(&tmp.path().join("csv"));
    every_spec_key_with_a_wrong_value_is_named(&tmp.path().join("spec"));
}

fn odd_inputs_run_to_completion_warning_about_damage(dir: &Path) {
    let odd = odd_dataset(dir);
    // Damage under the default policy ("warn"): used, and named.
    let damaged = train_images(dir)
        .into_iter()
        .find(|p| !odd.iter().any(|o| file_name(p).starts_with(o.as_str())))
        .unwrap();
    garble_middle(&damaged);
    write_spec(dir, "odd", None);
    let out = run(dir, "odd");
    let log = stderr(&out) + &stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let warning = log
        .lines()
        .find(|l| l.contains("damaged JPEG data"))
        .unwrap_or_else(|| panic!("no warning about the damaged image: {log}"));
    assert!(warning.contains(&file_name(&damaged)), "{warning}");
    assert_eq!(statuses(dir), ["complete"]);
    let run = &run_dirs(&dir.join("runs"))[0];
    let oof = std::fs::read_to_string(run.join("oof.csv")).unwrap();
    for id in &odd {
        assert!(oof.contains(id.as_str()), "{id} missing from oof.csv");
    }
    let submission = std::fs::read_to_string(run.join("submission.csv")).unwrap();
    let header = submission.lines().next().unwrap();
    assert!(
        header.starts_with("id,"),
        "byte order mark kept: {header:?}"
    );
    assert!(header.contains("\"terrier, silky\""), "{header}");
    assert_eq!(submission.lines().count(), 3, "{submission}");
}

fn damaged_images_under_each_policy(dir: &Path) {
    woof_subset(&dir.join("data"), 2, 3, 1);
    let train = train_images(dir);
    garble_middle(&train[0]);
    let name = file_name(&train[0]);
    let mut test: Vec<PathBuf> = std::fs::read_dir(dir.join("data/test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    test.sort();
    garble_middle(&test[0]);
    let test_name = file_name(&test[0]);

    // "error": refused before any features of its chunk are computed.
    write_spec(dir, "refuse", Some("error"));
    assert_fails(dir, "refuse", &[&name, "on_bad_image"]);
    assert_eq!(statuses(dir), ["failed"]);
    assert!(
        cached_features(dir).is_empty(),
        "{:?}",
        cached_features(dir)
    );

    // A header claiming far more pixels than the data holds, too.
    let header = dir.join("header");
    woof_subset(&header.join("data"), 2, 3, 1);
    let first = &train_images(&header)[0];
    claim_dimensions(first, 15000);
    write_spec(&header, "header", Some("error"));
    assert_fails(&header, "header", &[&file_name(first), "premature end"]);
    assert!(cached_features(&header).is_empty());

    // "skip": the training image is left out, with a zero-byte one; the
    // test image stays, and the warning says why.
    std::fs::write(&train[1], b"").unwrap();
    write_spec(dir, "skip", Some("skip"));
    let out = run(dir, "skip");
    let log = stderr(&out) + &stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    for n in [&name, &file_name(&train[1])] {
        assert!(
            log.lines()
                .any(|l| l.contains("left out of training") && l.contains(n.as_str())),
            "{n} not named as left out: {log}"
        );
    }
    assert!(log.contains("data: 4 training images"), "{log}");
    let test_warning = log.lines().find(|l| l.contains(&test_name));
    assert!(
        test_warning.is_some_and(|w| w.contains("leaves out training images only")),
        "{log}"
    );
}

fn undecodable_images_fail_naming_the_file(dir: &Path) {
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 3] = [
        ("zero-byte", |p| std::fs::write(p, b"").unwrap(), ""),
        ("header-20000", |p| claim_dimensions(p, 20000), ""),
        (
            "a-folder-named-like-an-image",
            |p| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            },
            "is a folder",
        ),
    ];
    for (case, damage, why) in cases {
        let dir = dir.join(case);
        woof_subset(&dir.join("data"), 2, 2, 1);
        let first = &train_images(&dir)[0];
        damage(first);
        write_spec(&dir, case, None);
        assert_fails(&dir, case, &[&file_name(first), why]);
        assert!(cached_features(&dir).is_empty(), "{case}");
    }
}

fn bad_csvs_are_refused_naming_file_and_line(dir: &Path) {
    type Edit = fn(&str) -> String;
    let cases: [(&str, Edit, bool, &[&str]); 5] = [
        (
            "empty",
            |_| String::new(),
            true,
            &["labels.csv", "0 column"],
        ),
        (
            "header-only",
            |t| t.lines().next().unwrap().to_string() + "\n",
            true,
            &["labels.csv", "no training images"],
        ),
        (
            "duplicate-id",
            |t| {
                let second = t.lines().nth(1).unwrap().to_string();
                format!("{t}{second}\n")
            },
            true,
            &["labels.csv", "appears twice"],
        ),
        (
            // The quote opens on line 3 and swallows the rows after it.
            "unclosed-quote",
            |t| t.to_string(),
            true,
            &["labels.csv line 3", "quote"],
        ),
        (
            "unclosed-quote-no-sample-submission",
            |t| t.to_string(),
            false,
            &["labels.csv line 3", "quote"],
        ),
    ];
    for (case, edit, keep_sample, needles) in cases {
        let dir = dir.join(case);
        let data = dir.join("data");
        woof_subset(&data, 2, 3, 1);
        let labels = data.join("labels.csv");
        let mut text = edit(&std::fs::read_to_string(&labels).unwrap());
        if case.starts_with("unclosed-quote") {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let (id, label) = lines[2].split_once(',').unwrap();
            lines[2] = format!("{id},\"{label}");
            text = lines.join("\n") + "\n";
        }
        std::fs::write(&labels, text).unwrap();
        if !keep_sample {
            for f in ["sample_submission.csv", "test_labels.csv"] {
                std::fs::remove_file(data.join(f)).unwrap();
            }
            std::fs::remove_dir_all(data.join("test")).unwrap();
        }
        write_spec(&dir, case, None);
        assert_fails(&dir, case, needles);
        assert!(
            crate::common::no_run_dirs(&dir.join("runs")),
            "{case}: refused before a run"
        );
    }
}

/// Every key of every table, once with a value of the wrong type and, where
/// the key has a range or a set of values, once outside it. serde has no
/// list of a struct's fields at run time, so they are listed here; a key
/// added to `spec/raw.rs` belongs here too.
fn every_spec_key_with_a_wrong_value_is_named(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let weights = model("efficientnet_lite0_imagenet.safetensors");
    // (table, key, wrong value, what the message must name)
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &str)] = &[
        ("", "extends", "3", "extends"),
        ("", "extends", "\"missing.toml\"", "extends"),
        ("", "name", "3", "name"),
        ("", "name", "\"a/b\"", "name"),
        ("", "seed", "\"x\"", "seed"),
        ("", "seed", "-1", "seed"),
        ("", "views", "\"original\"", "views"),
        ("", "views", "[\"upside_down\"]", "upside_down"),
        ("", "views", "[]", "views"),
        ("", "device", "1", "device"),
        ("", "device", "\"tpu\"", "device"),
        ("", "sweep", "3", "sweep"),
        ("data", "layout", "1", "layout"),
        ("data", "layout", "\"flat\"", "flat"),
        ("data", "root", "1", "root"),
        ("data", "labels", "1", "labels"),
        ("data", "train_dir", "[1]", "train_dir"),
        ("data", "test_dir", "1", "test_dir"),
        ("data", "test_dir", "\"nowhere\"", "nowhere"),
        ("data", "sample_submission", "1", "sample_submission"),
        ("data", "test_labels", "1", "test_labels"),
        ("data", "image_ext", "1", "image_ext"),
        ("data", "on_bad_image", "true", "on_bad_image"),
        ("data", "on_bad_image", "\"ignore\"", "on_bad_image"),
        ("backbone", "arch", "1", "arch"),
        ("backbone", "arch", "\"resnet9000\"", "resnet9000"),
        ("backbone", "weights", "1", "weights"),
        ("backbone", "weights", "\"missing.safetensors\"", "backbone[0].weights"),
        ("backbone", "input_size", "\"big\"", "input_size"),
        ("backbone", "input_size", "8", "backbone[0].input_size"),
        ("backbone", "preprocess", "1", "preprocess"),
        ("backbone", "preprocess", "\"sepia\"", "sepia"),
        ("backbone", "resize", "1", "resize"),
        ("backbone", "resize", "\"lanczos\"", "lanczos"),
        ("backbone", "crop_pct", "0", "backbone[0].crop_pct"),
        ("backbone", "mean", "[0.5]", "backbone[0].std"),
        ("backbone", "pool", "\"max\"", "max"),
        ("backbone", "pool", "\"cls\"", "backbone[0].pool"),
        ("backbone", "output", "1", "output"),
        ("backbone", "output", "\"features\"", "backbone[0].output"),
        ("backbone", "input_layout", "1", "input_layout"),
        ("backbone", "input_layout", "\"nhcw\"", "nhcw"),
        ("extract", "batch_size", "\"big\"", "batch_size"),
        ("extract", "batch_size", "0", "extract.batch_size"),
        ("extract", "decode_threads", "1.5", "decode_threads"),
        ("extract", "decode_threads", "0", "extract.decode_threads"),
        ("extract", "precision", "16", "precision"),
        ("extract", "precision", "\"f8\"", "f8"),
        ("cv", "folds", "\"five\"", "folds"),
        ("cv", "folds", "0", "cv.folds"),
        ("cv", "folds", "101", "cv.folds"),
        ("cv", "stratified", "\"yes\"", "stratified"),
        ("head", "dropout", "\"half\"", "dropout"),
        ("head", "dropout", "1.5", "head.dropout"),
        ("head", "epochs", "-3", "epochs"),
        ("head", "epochs", "0", "head.epochs"),
        ("head", "patience", "\"3\"", "patience"),
        ("head", "restore_best", "1", "restore_best"),
        ("head", "optimizer", "1", "optimizer"),
        ("head", "optimizer", "\"sgd\"", "sgd"),
        ("head", "lr", "\"fast\"", "lr"),
        ("head", "lr", "-0.1", "head.lr"),
        ("head", "batch_size", "[16]", "batch_size"),
        ("head", "batch_size", "0", "head.batch_size"),
    ];
    let data = crate::common::woof();
    for (i, (table, key, value, named)) in cases.iter().enumerate() {
        let mut top = format!("name = \"case{i}\"\n");
        let mut tables: Vec<(&str, Vec<String>)> = vec![
            (
                "data",
                vec![
                    "layout = \"kaggle\"".into(),
                    format!("root = {:?}", data.display().to_string()),
                ],
            ),
            (
                "backbone",
                vec![
                    "arch = \"efficientnet_lite0\"".into(),
                    format!("weights = {:?}", weights.display().to_string()),
                ],
            ),
            ("extract", vec![]),
            ("cv", vec![]),
            ("head", vec![]),
        ];
        let line = format!("{key} = {value}");
        if table.is_empty() {
            if *key == "name" {
                top = format!("{line}\n");
            } else {
                top.push_str(&format!("{line}\n"));
            }
        } else {
            let lines = &mut tables.iter_mut().find(|(t, _)| t == table).unwrap().1;
            lines.retain(|l| !l.starts_with(&format!("{key} =")));
            lines.push(line.clone());
        }
        let mut spec = top;
        for (t, lines) in &tables {
            let header = if *t == "backbone" {
                "[[backbone]]".to_string()
            } else {
                format!("[{t}]")
            };
            spec.push_str(&format!("{header}\n{}\n", lines.join("\n")));
        }
        let file = format!("case{i}.toml");
        std::fs::write(dir.join(&file), spec).unwrap();
        let out = runner(dir, &["--quiet", &file]);
        let err = stderr(&out);
        let case = format!("{table}.{key} = {value}");
        assert!(!err.contains("panicked"), "{case}: {err}");
        assert_eq!(out.status.code(), Some(1), "{case}: {err}");
        assert!(err.contains(&file), "{case}: file not named: {err}");
        assert!(err.contains(named), "{case}: {named:?} not named: {err}");
        assert!(
            crate::common::no_run_dirs(&dir.join("runs")),
            "{case}: a run directory"
        );
    }
}
