//! Byte-level mutations of a valid file: what a damaged download, a bad
//! disk or a hostile file looks like to a reader. Inputs are lists of
//! mutations (not mutated bytes), so proptest shrinks a failure to the
//! one or two edits that matter.

use proptest::prelude::*;
use proptest::sample::Index;

/// Where a mutation lands: anywhere, or within the first 4 KiB, where
/// most formats keep their headers, lengths and offsets.
#[derive(Debug, Clone)]
pub struct Pos {
    near_start: bool,
    index: Index,
}

impl Pos {
    /// A position in `0..len` (`len` > 0).
    fn get(&self, len: usize) -> usize {
        let span = if self.near_start { len.min(4096) } else { len };
        self.index.index(span)
    }
}

fn pos() -> impl Strategy<Value = Pos> {
    (any::<bool>(), any::<Index>()).prop_map(|(near_start, index)| Pos { near_start, index })
}

#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit {
        at: Pos,
        bit: u8,
    },
    SetByte {
        at: Pos,
        value: u8,
    },
    /// A little-endian 4-byte integer (lengths, offsets, counts).
    PutU32 {
        at: Pos,
        value: u32,
    },
    /// A big-endian one (PNG and JPEG headers).
    PutU32Be {
        at: Pos,
        value: u32,
    },
    PutU64 {
        at: Pos,
        value: u64,
    },
    Truncate {
        at: Pos,
    },
    /// Copies `len` bytes from `from` to just after `to`.
    Duplicate {
        from: Pos,
        len: u16,
        to: Pos,
    },
    Remove {
        at: Pos,
        len: u16,
    },
}

/// Values that break length arithmetic: zero, one, sign bits, all ones.
fn extreme_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(0xFF),
        Just(0xFFFF),
        Just(0x7FFF_FFFF),
        Just(0x8000_0000),
        Just(u32::MAX - 1),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(1 << 32),
        Just(1 << 40),
        Just(1 << 62),
        Just(i64::MAX as u64),
        Just(1 << 63),
        Just(u64::MAX - 7),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

/// Signed values for shape and attribute fields.
pub fn extreme_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(-(1 << 40)),
        Just(1 << 31),
        Just(1 << 32),
        Just(1 << 40),
        Just(1 << 62),
        Just(i64::MAX),
        any::<i64>(),
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (pos(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (
            pos(),
            prop_oneof![Just(0u8), Just(0xFF), Just(0x7F), Just(0x80), any::<u8>()]
        )
            .prop_map(|(at, value)| Mutation::SetByte { at, value }),
        (pos(), extreme_u32()).prop_map(|(at, value)| Mutation::PutU32 { at, value }),
        (pos(), extreme_u32()).prop_map(|(at, value)| Mutation::PutU32Be { at, value }),
        (pos(), extreme_u64()).prop_map(|(at, value)| Mutation::PutU64 { at, value }),
        pos().prop_map(|at| Mutation::Truncate { at }),
        (pos(), 1u16..512, pos()).prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        (pos(), 1u16..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

/// One to eight mutations, applied in order.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..=8)
}

/// `base` with `mutations` applied.
pub fn apply(base: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in mutations {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        let put = |b: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            let end = (at + bytes.len()).min(b.len());
            b[at..end].copy_from_slice(&bytes[..end - at]);
        };
        match m {
            Mutation::FlipBit { at, bit } => b[at.get(n)] ^= 1 << bit,
            Mutation::SetByte { at, value } => b[at.get(n)] = *value,
            Mutation::PutU32 { at, value } => put(&mut b, at.get(n), &value.to_le_bytes()),
            Mutation::PutU32Be { at, value } => put(&mut b, at.get(n), &value.to_be_bytes()),
            Mutation::PutU64 { at, value } => put(&mut b, at.get(n), &value.to_le_bytes()),
            Mutation::Truncate { at } => b.truncate(at.get(n)),
            Mutation::Duplicate { from, len, to } => {
                let from = from.get(n);
                let end = (from + usize::from(*len)).min(n);
                let chunk = b[from..end].to_vec();
                let to = to.get(n) + 1;
                b.splice(to..to, chunk);
            }
            Mutation::Remove { at, len } => {
                let at = at.get(n);
                let end = (at + usize::from(*len)).min(n);
                b.drain(at..end);
            }
        }
    }
    b
}

/// A file read once for the whole run (leaked: the strategies outlive
/// any one test's borrow).
pub fn fixture(path: &std::path::Path) -> &'static [u8] {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("fuzz fixture {} cannot be read: {e}", path.display()));
    Box::leak(bytes.into_boxed_slice())
}

/// One of `bases` (name, bytes) with one to eight mutations.
pub fn mutated(bases: Vec<(&'static str, &'static [u8])>) -> impl Strategy<Value = Mutated> {
    (any::<Index>(), mutations()).prop_map(move |(which, mutations)| {
        let (base, bytes) = bases[which.index(bases.len())];
        Mutated {
            base,
            bytes: apply(bytes, &mutations),
            mutations,
        }
    })
}

/// Mutated bytes; `Debug` names the base and the mutations, not the bytes.
#[derive(Clone)]
pub struct Mutated {
    pub base: &'static str,
    pub mutations: Vec<Mutation>,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Mutated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} with {:?}", self.base, self.mutations)
    }
}

/// Arbitrary bytes up to `max` long.
pub fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}
