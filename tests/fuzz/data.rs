//! The dataset's CSVs (`labels.csv`, `sample_submission.csv`,
//! `test_labels.csv`) beside a few 2x2 images, and the image decoder on
//! mutated PNGs and JPEGs.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use runner::data::{image::decode_file, Dataset};
use runner::spec::{DataSpec, Layout};

use crate::harness::fuzz;
use crate::mutate::{apply, mutated, mutations, Mutation};

const LABELS: &str = "id,breed\na,cat\nb,dog\nc,cat\nd,dog\n";
const SAMPLE: &str = "id,cat,dog\nx,0.5,0.5\ny,0.5,0.5\n";
const TEST_LABELS: &str = "id,label\nx,cat\ny,dog\n";

/// A Kaggle-layout (and folders-layout) dataset of 2x2 images in a temporary folder.
struct Folder {
    dir: tempfile::TempDir,
}

impl Folder {
    fn new() -> Folder {
        let dir = tempfile::tempdir().unwrap();
        for (sub, ids) in [("train", &["a", "b", "c", "d"][..]), ("test", &["x", "y"])] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            for id in ids {
                std::fs::write(dir.path().join(sub).join(format!("{id}.png")), png()).unwrap();
            }
        }
        // The folders layout: one folder per class.
        for (class, id) in [("cat", "a"), ("dog", "b")] {
            let d = dir.path().join("classes").join(class);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("{id}.png")), png()).unwrap();
        }
        Folder { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spec(&self, layout: Layout) -> DataSpec {
        DataSpec {
            layout,
            train_dir: match layout {
                Layout::Kaggle => self.path("train"),
                Layout::Folders => self.path("classes"),
            },
            labels: Some(self.path("labels.csv")),
            test_dir: Some(self.path("test")),
            sample_submission: Some(self.path("sample_submission.csv")),
            test_labels: Some(self.path("test_labels.csv")),
            image_ext: "png".into(),
            on_bad_image: Default::default(),
        }
    }
}

fn encode(format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(2, 2, |x, y| image::Rgb([x as u8 * 200, y as u8 * 90, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png() -> Vec<u8> {
    encode(image::ImageFormat::Png)
}

fn jpeg() -> Vec<u8> {
    encode(image::ImageFormat::Jpeg)
}

/// CSV-shaped edits: the characters and rows that break CSV readers.
#[derive(Debug, Clone)]
enum CsvEdit {
    Insert(Index, &'static str),
    DuplicateLine(Index),
    DeleteLine(Index),
}

fn csv_edit() -> impl Strategy<Value = CsvEdit> {
    let piece = prop_oneof![
        Just(","),
        Just("\""),
        Just("\n"),
        Just("\r"),
        Just("\r\n"),
        Just("\u{feff}"),
        Just("\0"),
        Just(" "),
        Just("\u{00e9}"),
        Just("\u{ff}"),
        Just("../a"),
        Just("/"),
        Just("a"),
        Just("x"),
        Just("cat"),
        Just("dog"),
        Just("a,cat\n"),
        Just("x,0.5,0.5\n"),
        Just("id,label\n"),
        Just(",,,,,,,,,,,,"),
    ];
    prop_oneof![
        (any::<Index>(), piece).prop_map(|(i, p)| CsvEdit::Insert(i, p)),
        any::<Index>().prop_map(CsvEdit::DuplicateLine),
        any::<Index>().prop_map(CsvEdit::DeleteLine),
    ]
}

fn edit_csv(text: &str, edits: &[CsvEdit]) -> Vec<u8> {
    let mut t = text.as_bytes().to_vec();
    for e in edits {
        match e {
            CsvEdit::Insert(i, piece) => {
                let at = i.index(t.len() + 1);
                t.splice(at..at, piece.bytes());
            }
            CsvEdit::DuplicateLine(i) | CsvEdit::DeleteLine(i) => {
                let mut lines: Vec<Vec<u8>> = t
                    .split_inclusive(|&b| b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                if lines.is_empty() {
                    continue;
                }
                let at = i.index(lines.len());
                if matches!(e, CsvEdit::DuplicateLine(_)) {
                    let line = lines[at].clone();
                    lines.insert(at, line);
                } else {
                    lines.remove(at);
                }
                t = lines.concat();
            }
        }
    }
    t
}

/// Edits of one CSV: CSV-shaped, then bytes.
#[derive(Debug, Clone)]
struct CsvCase {
    edits: Vec<CsvEdit>,
    bytes: Vec<Mutation>,
}

fn csv_case() -> impl Strategy<Value = CsvCase> {
    (
        proptest::collection::vec(csv_edit(), 0..6),
        prop_oneof![3 => Just(Vec::new()), 1 => mutations()],
    )
        .prop_map(|(edits, bytes)| CsvCase { edits, bytes })
}

fn write(path: &Path, base: &str, case: &CsvCase) {
    std::fs::write(path, apply(&edit_csv(base, &case.edits), &case.bytes)).unwrap();
}

#[test]
fn dataset_loading_survives_mutated_csvs() {
    let folder = Folder::new();
    let strategy = (csv_case(), csv_case(), csv_case(), any::<bool>());
    fuzz(
        "dataset csvs",
        3000,
        strategy,
        |(labels, sample, test_labels, folders)| {
            write(&folder.path("labels.csv"), LABELS, &labels);
            write(&folder.path("sample_submission.csv"), SAMPLE, &sample);
            write(&folder.path("test_labels.csv"), TEST_LABELS, &test_labels);
            let layout = if folders {
                Layout::Folders
            } else {
                Layout::Kaggle
            };
            Dataset::load(&folder.spec(layout)).is_ok()
        },
    );
}

#[test]
fn image_decoding_survives_mutated_pngs_and_jpegs() {
    let dir = tempfile::tempdir().unwrap();
    let bases = vec![
        ("2x2.png", &*Box::leak(png().into_boxed_slice())),
        ("2x2.jpg", &*Box::leak(jpeg().into_boxed_slice())),
    ];
    fuzz("images", 4000, mutated(bases), |m| {
        let path = dir.path().join(if m.base.ends_with("png") {
            "i.png"
        } else {
            "i.jpg"
        });
        std::fs::write(&path, &m.bytes).unwrap();
        decode_file(&path).is_ok()
    });
}
