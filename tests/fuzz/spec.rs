//! Spec files (`extends`, `--set`, `--sweep`, `[sweep]`, resolution):
//! random TOML-ish text, and the shipped experiments with bytes flipped,
//! lines deleted, duplicated, swapped or replaced by hostile ones.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use runner::spec::{load_experiment, Overrides};

use crate::harness::fuzz;
use crate::mutate::{apply, mutations, Mutation};

/// The shipped experiments, copied with the folder layout their relative
/// paths expect (`../../shared` beside the checkout is linked), so that
/// `extends` and the weights and data paths resolve as in the repository.
struct Tree {
    _dir: tempfile::TempDir,
    experiments: PathBuf,
    specs: Vec<(String, String)>,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let experiments = dir.path().join("a/b/experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&shared, dir.path().join("a/shared")).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut specs = Vec::new();
    for entry in std::fs::read_dir(&repo).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::write(experiments.join(&name), &text).unwrap();
            specs.push((name, text));
        }
    }
    specs.sort();
    assert!(!specs.is_empty(), "no experiments/*.toml to start from");
    Tree {
        _dir: dir,
        experiments,
        specs,
    }
}

/// Lines a spec could hold: every key with values at and past its limits,
/// sweeps that multiply, `extends` cycles and escapes, TOML corner cases.
const HOSTILE_LINES: &[&str] = &[
    "[sweep]",
    "[data]",
    "[[backbone]]",
    "[head]",
    "[cv]",
    "[extract]",
    "mode = \"zip\"",
    "mode = \"grid\"",
    "seed = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
    "\"head.lr\" = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]",
    "\"head.epochs\" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
    "\"head.patience\" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
    "\"head.batch_size\" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
    "\"cv.folds\" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
    "\"head.dropout\" = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]",
    "\"a.b.c\" = []",
    "\"backbone.9.arch\" = [\"onnx\"]",
    "\"backbone.0.input_size\" = [0, 1, 18446744073709551615]",
    "extends = \"ablations.toml\"",
    "extends = \"quickstart.toml\"",
    "extends = \"fuzzed.toml\"",
    "extends = \"/\"",
    "extends = \"\"",
    "extends = \"../../../../../../../../etc/passwd\"",
    "extends = 5",
    "name = \"\"",
    "name = \"../x\"",
    "name = \"a\"",
    "seed = -1",
    "seed = 18446744073709551615",
    "seed = 9223372036854775807",
    "views = []",
    "views = [\"hflip\", \"hflip\"]",
    "views = \"original\"",
    "device = \"cuda:99999999999999999999\"",
    "device = \"cuda:\"",
    "layout = \"folders\"",
    "root = \"\"",
    "root = \"/\"",
    "labels = \"../../shared/data/woof-dev/sample_submission.csv\"",
    "image_ext = \"\"",
    "image_ext = \"../jpg\"",
    "arch = \"onnx\"",
    "arch = \"\"",
    "weights = \"../../shared/models/efficientnet_lite0_imagenet.onnx\"",
    "weights = \"../../shared/models/xception_imagenet_notop.fixture.safetensors\"",
    "weights = \"\"",
    "input_size = 0",
    "input_size = -1",
    "input_size = 9223372036854775807",
    "input_size = 1e308",
    "output = \"\"",
    "input_layout = \"nhwc\"",
    "preprocess = \"imagenet\"",
    "resize = \"area\"",
    "batch_size = 0",
    "batch_size = 18446744073709551615",
    "decode_threads = 0",
    "decode_threads = 4294967296",
    "precision = \"bf16\"",
    "folds = 0",
    "folds = 1",
    "folds = 4294967297",
    "stratified = false",
    "dropout = 1.0",
    "dropout = -0.0",
    "dropout = nan",
    "dropout = inf",
    "epochs = 0",
    "epochs = 18446744073709551615",
    "patience = 0",
    "optimizer = \"adam\"",
    "lr = 0.0",
    "lr = -inf",
    "lr = 1e309",
    "restore_best = 1",
    "a = { b = { c = { d = { e = 1 } } } }",
    "x = [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]",
    "\"\" = 1",
    "'''",
    "\"\"\"",
    "= 1",
    "[",
    "[[",
    "\u{feff}",
    "\r",
];

/// `--set` and `--sweep` arguments, hostile ones included.
const HOSTILE_ARGS: &[&str] = &[
    "head.lr=0.005",
    "head.optimizer=adam",
    "backbone.0.input_size=256",
    "backbone.1.input_size=1",
    "backbone.99999999999999999999.arch=x",
    "backbone.18446744073709551615.arch=x",
    "backbone..arch=x",
    "cv.folds=1",
    "cv.folds=1,2,3",
    "seed=1,2,3,4,5,6,7,8,9,10",
    "views=[\"original\"],[\"original\",\"hflip\"]",
    "views=[",
    "name=x",
    "extends=quickstart.toml",
    "sweep=1",
    "sweep.mode=zip",
    "=",
    "=1",
    "a=",
    "a.=1",
    ".=1",
    "data.root=/",
    "data=1",
    "head=[1,2]",
    "head.lr=,",
    "head.lr=\"",
];

/// A line-level edit of spec text.
#[derive(Debug, Clone)]
enum LineEdit {
    Delete(Index),
    Duplicate(Index),
    Swap(Index, Index),
    /// `key = value` becomes `value = key`.
    SwapKeyValue(Index),
    /// The line's value replaced by another line's value.
    ReplaceValue(Index, Index),
    Insert(Index, Index),
    Replace(Index, Index),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    let i = any::<Index>;
    prop_oneof![
        i().prop_map(LineEdit::Delete),
        i().prop_map(LineEdit::Duplicate),
        (i(), i()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        i().prop_map(LineEdit::SwapKeyValue),
        (i(), i()).prop_map(|(a, b)| LineEdit::ReplaceValue(a, b)),
        (i(), i()).prop_map(|(a, b)| LineEdit::Insert(a, b)),
        (i(), i()).prop_map(|(a, b)| LineEdit::Replace(a, b)),
    ]
}

fn edit_lines(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let value_of = |l: &str| l.split_once('=').map(|(_, v)| v.trim().to_string());
    for e in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match e {
            LineEdit::Delete(i) => {
                lines.remove(i.index(n));
            }
            LineEdit::Duplicate(i) => {
                let l = lines[i.index(n)].clone();
                lines.insert(i.index(n), l);
            }
            LineEdit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            LineEdit::SwapKeyValue(i) => {
                let l = &mut lines[i.index(n)];
                if let Some((k, v)) = l.split_once('=') {
                    *l = format!("{} = {}", v.trim(), k.trim());
                }
            }
            LineEdit::ReplaceValue(a, b) => {
                let donor = HOSTILE_LINES[b.index(HOSTILE_LINES.len())];
                let l = &mut lines[a.index(n)];
                if let (Some((k, _)), Some(v)) = (l.split_once('='), value_of(donor)) {
                    *l = format!("{} = {v}", k.trim());
                }
            }
            LineEdit::Insert(a, b) => {
                let l = HOSTILE_LINES[b.index(HOSTILE_LINES.len())];
                lines.insert(a.index(n + 1), l.to_string());
            }
            LineEdit::Replace(a, b) => {
                lines[a.index(n)] = HOSTILE_LINES[b.index(HOSTILE_LINES.len())].to_string();
            }
        }
    }
    lines.join("\n")
}

/// A spec and the command line it is loaded with.
#[derive(Debug, Clone)]
struct Case {
    base: Index,
    edits: Vec<LineEdit>,
    bytes: Vec<Mutation>,
    set: Vec<Index>,
    sweep: Vec<Index>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<Index>(),
        proptest::collection::vec(line_edit(), 0..6),
        prop_oneof![3 => Just(Vec::new()), 1 => mutations()],
        proptest::collection::vec(any::<Index>(), 0..3),
        proptest::collection::vec(any::<Index>(), 0..2),
    )
        .prop_map(|(base, edits, bytes, set, sweep)| Case {
            base,
            edits,
            bytes,
            set,
            sweep,
        })
}

fn overrides(set: &[Index], sweep: &[Index]) -> Overrides {
    let pick = |i: &Index| HOSTILE_ARGS[i.index(HOSTILE_ARGS.len())].to_string();
    Overrides {
        set: set.iter().map(pick).collect(),
        sweep: sweep.iter().map(pick).collect(),
        sweep_mode: None,
    }
}

/// Loads `text` as `fuzzed.toml` beside the shipped experiments.
fn load(tree: &Tree, text: &[u8], overrides: &Overrides) -> bool {
    let path = tree.experiments.join("fuzzed.toml");
    std::fs::write(&path, text).unwrap();
    load_experiment(&path, overrides).is_ok()
}

#[test]
fn spec_loading_survives_edited_experiments() {
    let tree = tree();
    fuzz("spec edits", 4000, case(), |c| {
        let (_, text) = &tree.specs[c.base.index(tree.specs.len())];
        let edited = edit_lines(text, &c.edits);
        let bytes = apply(edited.as_bytes(), &c.bytes);
        load(&tree, &bytes, &overrides(&c.set, &c.sweep))
    });
}

/// Text assembled from spec-like tokens: what a parser sees from a file
/// that is not a spec at all, or a badly broken one.
#[test]
fn spec_loading_survives_random_toml_ish_text() {
    let tree = tree();
    let token = prop_oneof![
        Just("["),
        Just("]"),
        Just("[["),
        Just("]]"),
        Just("{"),
        Just("}"),
        Just("="),
        Just(","),
        Just("."),
        Just("\""),
        Just("'"),
        Just("\n"),
        Just(" "),
        Just("#"),
        Just("name"),
        Just("data"),
        Just("backbone"),
        Just("sweep"),
        Just("extends"),
        Just("head"),
        Just("cv"),
        Just("\"x\""),
        Just("1"),
        Just("-1"),
        Just("1e999"),
        Just("true"),
        Just("1979-05-27T07:32:00Z"),
        Just("0x7fffffffffffffff"),
    ];
    let text = proptest::collection::vec(token, 0..64).prop_map(|t| t.concat());
    fuzz("spec random text", 3000, text, |t| {
        load(&tree, t.as_bytes(), &Overrides::default())
    });
}
