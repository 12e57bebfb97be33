//! Minimal `.npy` (format 1.0) reading and writing of 2-D little-endian
//! float32 arrays, so cached features load straight into numpy
//! (`np.load(path)`).

use std::io::Read;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a 2-D little-endian float32 .npy file: {problem}")]
    Format { path: String, problem: String },
}

/// A row-major `rows x cols` float32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Matrix {
        assert_eq!(rows * cols, data.len(), "matrix shape and data disagree");
        Matrix { rows, cols, data }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Concatenates matrices with equal row counts side by side.
    pub fn hconcat(parts: &[&Matrix]) -> Matrix {
        let rows = parts.first().map_or(0, |m| m.rows);
        assert!(parts.iter().all(|m| m.rows == rows), "row counts differ");
        let cols = parts.iter().map(|m| m.cols).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for m in parts {
                data.extend_from_slice(m.row(r));
            }
        }
        Matrix { rows, cols, data }
    }

    /// Stacks matrices with equal column counts on top of each other.
    pub fn vconcat(parts: &[Matrix]) -> Matrix {
        let cols = parts.first().map_or(0, |m| m.cols);
        assert!(parts.iter().all(|m| m.cols == cols), "column counts differ");
        let data: Vec<f32> = parts.iter().flat_map(|m| m.data.iter().copied()).collect();
        Matrix {
            rows: data.len() / cols.max(1),
            cols,
            data,
        }
    }
}

/// The `.npy` bytes of a matrix.
pub fn to_bytes(m: &Matrix) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows, m.cols
    );
    // Header length so that magic(6) + version(2) + len(2) + dict + '\n' is
    // a multiple of 64, as numpy writes it.
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(10 + header_len + m.data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    for v in &m.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn write(path: &Path, m: &Matrix) -> Result<(), NpyError> {
    crate::cache::write_atomic(path, &to_bytes(m)).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })
}

pub fn read(path: &Path) -> Result<Matrix, NpyError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| NpyError::Io {
            path: path.display().to_string(),
            source,
        })?;
    from_bytes(&bytes, path)
}

/// Parses `.npy` bytes read from `path` (named in errors).
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Matrix, NpyError> {
    let fmt = |problem: &str| NpyError::Format {
        path: path.display().to_string(),
        problem: problem.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fmt("bad magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(fmt("unsupported version")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| fmt("truncated header"))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(fmt("dtype must be '<f4' in C order"));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| fmt("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| fmt("bad shape")))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(fmt("not 2-D"));
    };
    let body = &bytes[start + header_len..];
    let expected = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| fmt("shape too large"))?;
    if body.len() != expected {
        return Err(fmt(
            "data length does not match the shape (truncated file?)",
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Matrix { rows, cols, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_header_is_64_byte_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let m = Matrix::new(3, 2, vec![1.0, -2.0, 3.5, 4.0, 0.0, f32::MIN_POSITIVE]);
        write(&path, &m).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(read(&path).unwrap(), m);
    }

    #[test]
    fn truncated_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let m = Matrix::new(2, 2, vec![1.0; 4]);
        let bytes = to_bytes(&m);
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(read(&path), Err(NpyError::Format { .. })));
    }
}
