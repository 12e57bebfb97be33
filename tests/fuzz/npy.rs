//! `.npy` (cached features, chunks): random bytes, byte mutations of a
//! valid file, and header dictionaries with absurd shapes.

use std::path::Path;

use proptest::prelude::*;
use runner::npy::{self, Matrix};

use crate::harness::fuzz;
use crate::mutate::{mutated, random_bytes};

fn valid() -> &'static [u8] {
    let m = Matrix::new(3, 2, vec![1.0, -2.0, 3.5, 4.0, 0.0, 1e-3]);
    Box::leak(npy::to_bytes(&m).into_boxed_slice())
}

/// The reader's whole contract: a result, never a panic.
fn read(bytes: &[u8]) -> bool {
    npy::from_bytes(bytes, Path::new("fuzz.npy")).is_ok()
}

#[test]
fn npy_reader_survives_random_bytes() {
    let strategy = prop_oneof![
        random_bytes(128),
        // Past the magic, so the header parsing is reached.
        random_bytes(128).prop_map(|mut b| {
            let mut v = b"\x93NUMPY".to_vec();
            v.append(&mut b);
            v
        }),
    ];
    fuzz("npy random bytes", 5000, strategy, |b| read(&b));
}

#[test]
fn npy_reader_survives_mutated_files() {
    fuzz(
        "npy mutations",
        5000,
        mutated(vec![("3x2.npy", valid())]),
        |m| read(&m.bytes),
    );
}

/// Header dictionaries numpy would not write: shapes at and past the
/// integer limits, negative, missing or extra dimensions, other dtypes.
#[test]
fn npy_reader_survives_edited_headers() {
    let dim = prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just((1u64 << 62).to_string()),
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_string()),
        Just("".to_string()),
        Just("1e3".to_string()),
        (0u64..5).prop_map(|v| v.to_string()),
    ];
    let descr = prop_oneof![Just("<f4"), Just(">f4"), Just("<f8"), Just("|u1"), Just("")];
    let strategy = (
        proptest::collection::vec(dim, 0..4),
        descr,
        any::<bool>(),
        0usize..40,
        prop_oneof![Just(1u8), Just(2), Just(3), any::<u8>()],
    );
    fuzz(
        "npy headers",
        5000,
        strategy,
        |(dims, descr, fortran, body, version)| {
            let dict = format!(
                "{{'descr': '{descr}', 'fortran_order': {}, 'shape': ({}), }}\n",
                if fortran { "True" } else { "False" },
                dims.join(", ")
            );
            let mut b = b"\x93NUMPY".to_vec();
            b.push(version);
            b.push(0);
            if version == 1 {
                b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            } else {
                b.extend_from_slice(&(dict.len() as u32).to_le_bytes());
            }
            b.extend_from_slice(dict.as_bytes());
            b.extend(std::iter::repeat_n(0u8, body));
            read(&b)
        },
    );
}
