//! Datasets: which images, which labels, which classes, which test ids.
//!
//! Both layouts resolve to the same [`Dataset`]: training images with class
//! indices, test images in submission order, and the class order that
//! submission and probability columns use (the sample submission's when
//! there is one, sorted label names otherwise).

pub mod image;
mod jpeg_check;
pub mod resize;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::spec::{DataSpec, Layout};

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub classes: Vec<String>,
    pub train: Vec<Item>,
    /// Class index of each training item.
    pub labels: Vec<usize>,
    pub test: Vec<Item>,
    /// Class index of each test item, from the answer key when given.
    pub test_labels: Option<Vec<usize>>,
    /// The sample submission's header, when there is one.
    pub submission_header: Option<Vec<String>>,
    /// Training images left out (`on_bad_image = "skip"`), each with why.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {problem}")]
    Csv {
        path: String,
        line: u64,
        problem: String,
    },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An `id,label` CSV: its header and its rows, in file order.
struct IdLabelCsv {
    header: Vec<String>,
    rows: Vec<(String, String)>,
}

/// Opens a CSV whose first row is its header; returns the reader (at the
/// first data row) and the header's fields as written.
fn open_csv(path: &Path) -> Result<(csv::Reader<std::fs::File>, Vec<String>), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| csv_err(path, e))?;
    let headers = reader.headers().map_err(|e| csv_err(path, e))?;
    check_no_line_break(path, headers)?;
    let header = headers.iter().map(str::to_string).collect();
    Ok((reader, header))
}

/// The next record of `reader`, checked like every row ([`check_no_line_break`]).
fn next_record(
    path: &Path,
    records: &mut csv::StringRecordsIter<'_, std::fs::File>,
) -> Result<Option<csv::StringRecord>, DataError> {
    match records.next() {
        None => Ok(None),
        Some(record) => {
            let record = record.map_err(|e| csv_err(path, e))?;
            check_no_line_break(path, &record)?;
            Ok(Some(record))
        }
    }
}

/// No id, label or class name holds a line break: a field that does was
/// opened by a stray quote that is never closed (or closed rows later),
/// and swallowed every row up to there; read on, the file would silently
/// lose those rows.
fn check_no_line_break(path: &Path, record: &csv::StringRecord) -> Result<(), DataError> {
    let Some(field) = record.iter().find(|f| f.contains(['\n', '\r'])) else {
        return Ok(());
    };
    let line = record.position().map_or(1, |p| p.line());
    let lines = field.lines().count();
    Err(DataError::Csv {
        path: path.display().to_string(),
        line,
        problem: format!(
            "a quote opened on this line is not closed where its field should end: the field runs over {lines} lines, swallowing the rows after it; remove the stray `\"` (or close it)"
        ),
    })
}

/// Reads an `id,label` CSV (header row first, names free). Exactly two
/// columns: with more, which one holds the label would be a guess.
fn read_id_label_csv(path: &Path) -> Result<IdLabelCsv, DataError> {
    let (mut reader, header) = open_csv(path)?;
    let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    if header.len() != 2 {
        return Err(DataError::Csv {
            path: path.display().to_string(),
            line: 1,
            problem: format!(
                "the header has {} column(s) ({}); expected 2, `id,label`: keep only the id and label columns",
                header.len(),
                header.join(", ")
            ),
        });
    }
    let mut rows = Vec::new();
    let mut records = reader.records();
    while let Some(record) = next_record(path, &mut records)? {
        let line = record.position().map_or(0, |p| p.line());
        let (id, label) = (record[0].trim(), record[1].trim());
        if id.is_empty() || label.is_empty() {
            return Err(DataError::Csv {
                path: path.display().to_string(),
                line,
                problem: "empty id or label".into(),
            });
        }
        rows.push((id.to_string(), label.to_string()));
    }
    Ok(IdLabelCsv { header, rows })
}

/// An `id,label` file whose header row names an existing image was written
/// without a header: its first row would silently be lost.
fn check_header_is_not_data(
    path: &Path,
    header: &[String],
    image_dir: &Path,
    ext: &str,
) -> Result<(), DataError> {
    let image = image_dir.join(format!("{}.{ext}", header[0]));
    if image.is_file() {
        return Err(DataError::Csv {
            path: path.display().to_string(),
            line: 1,
            problem: format!(
                "the first line `{}` looks like a row, not a header ({} exists): add a header line such as `id,label` first",
                header.join(","),
                image.display()
            ),
        });
    }
    Ok(())
}

fn csv_err(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    let problem = match e.into_kind() {
        csv::ErrorKind::Io(source) => {
            return DataError::Io {
                path: path.display().to_string(),
                source,
            }
        }
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "{len} field(s) where the header has {expected_len}: every row needs one value per header column (check for stray commas or missing values)"
        ),
        csv::ErrorKind::Utf8 { .. } => {
            "is not valid UTF-8: save the file as UTF-8".to_string()
        }
        kind => format!("cannot parse as CSV ({kind:?})"),
    };
    DataError::Csv {
        path: path.display().to_string(),
        line,
        problem,
    }
}

/// Reads a sample submission: its header and its id column, in order.
fn read_sample_submission(path: &Path) -> Result<(Vec<String>, Vec<String>), DataError> {
    let (mut reader, header) = open_csv(path)?;
    if header.len() < 3 {
        return Err(DataError::Invalid {
            path: path.display().to_string(),
            problem: "the header needs an id column and at least two class columns".into(),
        });
    }
    let mut ids = Vec::new();
    let mut records = reader.records();
    while let Some(record) = next_record(path, &mut records)? {
        ids.push(record[0].trim().to_string());
    }
    Ok((header, ids))
}

pub(crate) fn is_image(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

/// Image files directly inside `dir`, sorted by file name.
pub(crate) fn list_images(dir: &Path) -> Result<Vec<Item>, DataError> {
    let mut items = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_file() && is_image(&path) {
            let id = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            items.push(Item { id, path });
        }
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(items)
}

/// The first id that appears twice, if any.
fn first_duplicate<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = BTreeSet::new();
    ids.into_iter().find(|id| !seen.insert(*id))
}

fn class_index(classes: &[String]) -> HashMap<&str, usize> {
    classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect()
}

impl Dataset {
    /// Leaves out the training images at `bad` (indices, with why), as
    /// `on_bad_image = "skip"` does; an error when what is left cannot
    /// train a classifier. `source` names the training list in errors.
    pub fn leave_out(&mut self, bad: &[(usize, String)], source: &Path) -> Result<(), DataError> {
        if bad.is_empty() {
            return Ok(());
        }
        let drop: BTreeSet<usize> = bad.iter().map(|(i, _)| *i).collect();
        let keep = |i: &usize| !drop.contains(i);
        self.train = (0..self.train.len())
            .filter(keep)
            .map(|i| self.train[i].clone())
            .collect();
        self.labels = (0..self.labels.len())
            .filter(keep)
            .map(|i| self.labels[i])
            .collect();
        self.skipped.extend(bad.iter().map(|(_, why)| why.clone()));
        let trained: BTreeSet<usize> = self.labels.iter().copied().collect();
        if trained.len() < 2 {
            return Err(DataError::Invalid {
                path: source.display().to_string(),
                problem: format!(
                    "has training images of {} class(es) once the {} bad image(s) are left out ([data] on_bad_image = \"skip\"); a classifier needs at least 2",
                    trained.len(),
                    drop.len()
                ),
            });
        }
        Ok(())
    }

    /// Training images per class, in class order (a class of the sample
    /// submission may have none).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes.len()];
        self.labels.iter().for_each(|&l| counts[l] += 1);
        counts
    }

    /// Loads and checks a dataset: every listed image must exist, every label
    /// must be a known class.
    pub fn load(spec: &DataSpec) -> Result<Dataset, DataError> {
        // Training ids and label names, in file order.
        let (train, train_label_names): (Vec<Item>, Vec<String>) = match spec.layout {
            Layout::Kaggle => {
                let labels_path = spec.labels.as_deref().expect("kaggle layout has labels");
                let csv = read_id_label_csv(labels_path)?;
                check_header_is_not_data(
                    labels_path,
                    &csv.header,
                    &spec.train_dir,
                    &spec.image_ext,
                )?;
                csv.rows
                    .into_iter()
                    .map(|(id, label)| {
                        let path = spec.train_dir.join(format!("{id}.{}", spec.image_ext));
                        (Item { id, path }, label)
                    })
                    .unzip()
            }
            Layout::Folders => {
                let mut pairs = Vec::new();
                let mut dirs: Vec<PathBuf> = std::fs::read_dir(&spec.train_dir)
                    .map_err(io_err(&spec.train_dir))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .collect();
                dirs.sort();
                for dir in dirs {
                    let class = dir
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    for mut item in list_images(&dir)? {
                        // Ids must be unique across classes.
                        item.id = format!("{class}/{}", item.id);
                        pairs.push((item, class.clone()));
                    }
                }
                pairs.into_iter().unzip()
            }
        };
        let train_source = match spec.layout {
            Layout::Kaggle => spec.labels.clone().expect("kaggle layout has labels"),
            Layout::Folders => spec.train_dir.clone(),
        };
        if train.is_empty() {
            return Err(DataError::Invalid {
                path: train_source.display().to_string(),
                problem: "lists no training images".into(),
            });
        }
        if let Some(id) = first_duplicate(train.iter().map(|i| i.id.as_str())) {
            return Err(DataError::Invalid {
                path: train_source.display().to_string(),
                problem: format!("id {id:?} appears twice"),
            });
        }

        let sample = spec
            .sample_submission
            .as_deref()
            .map(read_sample_submission)
            .transpose()?;
        let classes: Vec<String> = match &sample {
            Some((header, _)) => header[1..].to_vec(),
            None => train_label_names
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        if let (Some(path), Some(class)) = (
            &spec.sample_submission,
            first_duplicate(classes.iter().map(String::as_str)),
        ) {
            return Err(DataError::Invalid {
                path: path.display().to_string(),
                problem: format!("class column {class:?} appears twice in the header"),
            });
        }
        if classes.len() < 2 {
            return Err(DataError::Invalid {
                path: train_source.display().to_string(),
                problem: format!("needs at least 2 classes, found {}", classes.len()),
            });
        }
        let index = class_index(&classes);
        let labels = train_label_names
            .iter()
            .zip(&train)
            .map(|(name, item)| {
                index.get(name.as_str()).copied().ok_or_else(|| DataError::Invalid {
                    path: train_source.display().to_string(),
                    problem: format!(
                        "image {:?} has label {name:?}, which is not a column of the sample submission",
                        item.id
                    ),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trained: BTreeSet<usize> = labels.iter().copied().collect();
        if trained.len() < 2 {
            return Err(DataError::Invalid {
                path: train_source.display().to_string(),
                problem: format!(
                    "has training images of {} class(es); a classifier needs at least 2",
                    trained.len()
                ),
            });
        }

        let test = match (&sample, &spec.test_dir) {
            (Some((_, ids)), Some(dir)) => ids
                .iter()
                .map(|id| Item {
                    id: id.clone(),
                    path: dir.join(format!("{id}.{}", spec.image_ext)),
                })
                .collect(),
            (None, Some(dir)) => list_images(dir)?,
            (_, None) => Vec::new(),
        };

        if let Some(id) = first_duplicate(test.iter().map(|i| i.id.as_str())) {
            let source = spec.sample_submission.as_ref().or(spec.test_dir.as_ref());
            return Err(DataError::Invalid {
                path: source.map_or(String::new(), |p| p.display().to_string()),
                problem: format!("test id {id:?} appears twice"),
            });
        }
        // Files that only make sense with test images must not be ignored.
        if test.is_empty() {
            for (key, path) in [
                ("sample_submission", &spec.sample_submission),
                ("test_labels", &spec.test_labels),
            ] {
                if let Some(path) = path {
                    // With a test folder, the test ids come from the sample
                    // submission: it is the file that is empty.
                    let problem = match (&spec.test_dir, &spec.sample_submission) {
                        (Some(_), Some(_)) if key == "sample_submission" => {
                            "has a header but no rows: it must list every test id, one per row".into()
                        }
                        _ => format!(
                            "data.{key} is given but there are no test images; set data.test_dir to the folder holding them"
                        ),
                    };
                    return Err(DataError::Invalid {
                        path: path.display().to_string(),
                        problem,
                    });
                }
            }
        }

        for item in train.iter().chain(&test) {
            if !item.path.is_file() {
                let problem = if item.path.is_dir() {
                    format!("image for id {:?} is a folder, not a file", item.id)
                } else {
                    format!("image for id {:?} does not exist", item.id)
                };
                return Err(DataError::Invalid {
                    path: item.path.display().to_string(),
                    problem,
                });
            }
        }

        let test_labels = match &spec.test_labels {
            Some(path) if !test.is_empty() => {
                let csv = read_id_label_csv(path)?;
                if let Some(dir) = &spec.test_dir {
                    check_header_is_not_data(path, &csv.header, dir, &spec.image_ext)?;
                }
                if let Some(id) = first_duplicate(csv.rows.iter().map(|(id, _)| id.as_str())) {
                    return Err(DataError::Invalid {
                        path: path.display().to_string(),
                        problem: format!("test id {id:?} appears twice: keep one label per id"),
                    });
                }
                let key: HashMap<String, String> = csv.rows.into_iter().collect();
                let labels = test
                    .iter()
                    .map(|item| {
                        let name = key.get(&item.id).ok_or_else(|| DataError::Invalid {
                            path: path.display().to_string(),
                            problem: format!("has no label for test id {:?}", item.id),
                        })?;
                        index
                            .get(name.as_str())
                            .copied()
                            .ok_or_else(|| DataError::Invalid {
                                path: path.display().to_string(),
                                problem: format!(
                                    "test id {:?} has unknown label {name:?}",
                                    item.id
                                ),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(labels)
            }
            _ => None,
        };

        Ok(Dataset {
            classes,
            train,
            labels,
            test,
            test_labels,
            submission_header: sample.map(|(header, _)| header),
            skipped: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unclosed_quote_is_named_with_the_line_it_opened_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.csv");
        std::fs::write(&path, "id,label\na,pug\nb,\"pug\nc,beagle\nd,beagle\n").unwrap();
        let Err(DataError::Csv { line, problem, .. }) = read_id_label_csv(&path) else {
            panic!("an unclosed quote was read as data");
        };
        assert_eq!(line, 3, "{problem}");
        assert!(problem.contains("quote"), "{problem}");
    }

    #[test]
    fn a_quoted_comma_stays_inside_its_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.csv");
        std::fs::write(&path, "\u{feff}id,label\r\na,\"terrier, silky\"\r\n").unwrap();
        let csv = read_id_label_csv(&path).unwrap();
        assert_eq!(csv.rows, vec![("a".into(), "terrier, silky".into())]);
    }
}
