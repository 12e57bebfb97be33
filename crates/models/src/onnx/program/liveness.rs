//! Pass 5: free each intermediate right after its last reader.

use std::collections::{BTreeMap, HashSet};

use super::Program;

/// Fills each step's `free` with the slots it reads last, except the
/// output's and the constants' (which every run needs again).
pub fn liveness(program: &mut Program) {
    let constant_slots: HashSet<usize> = program.constants.iter().map(|(s, _)| *s).collect();
    let mut last_read: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, step) in program.steps.iter().enumerate() {
        for s in step.inputs.iter().flatten() {
            last_read.insert(*s, i);
        }
    }
    for (s, i) in last_read {
        if s != program.output && !constant_slots.contains(&s) {
            program.steps[i].free.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::emit::emitted;
    use super::*;
    use crate::onnx::testutil::{init, model, node};

    #[test]
    fn each_value_is_freed_by_its_last_reader_except_output_and_constants() {
        let m = model(
            vec![
                node("Relu", &["x"], "a"),
                node("Relu", &["a"], "b"),
                node("Mul", &["a", "k"], "c"),
                node("Add", &["b", "c"], "y"),
            ],
            vec![init("k", &[1], &[3.0])],
            "y",
        );
        // Slots: x 0, a 1, b 2, k 3, c 4, y 5.
        let mut p = emitted(&m, "y");
        liveness(&mut p);
        let frees: Vec<&[usize]> = p.steps.iter().map(|s| s.free.as_slice()).collect();
        assert_eq!(frees, [&[0][..], &[], &[1], &[2, 4]]);
        assert_eq!(p.output, 5);
    }
}
