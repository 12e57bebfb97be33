//! Pass 4: number the values and lay the steps out in graph order.

use std::collections::HashMap;

use candle_core::Tensor;

use super::fuse::Fused;
use super::{Kernel, Node, Program, Step};

/// The program of the pruned `nodes` with their fused chains; a chain runs
/// where its last node was (its residual may be computed after the
/// convolution's node). Steps free nothing yet (see [`super::liveness`]).
pub fn emit(
    nodes: Vec<Node>,
    mut fused: Fused,
    consts: &HashMap<String, Tensor>,
    input_name: String,
    output_name: String,
) -> Program {
    let mut program = Program {
        steps: Vec::new(),
        slots: 0,
        constants: Vec::new(),
        device_constants: std::sync::OnceLock::new(),
        input: 0,
        output: 0,
        input_name,
        output_name,
    };
    let mut slots = Slots {
        by_name: HashMap::new(),
        consts,
    };
    program.input = slots.of(&program.input_name.clone(), &mut program);
    for (i, n) in nodes.into_iter().enumerate() {
        if let Some(f) = fused.chains.remove(&i) {
            let inputs = f
                .inputs
                .iter()
                .map(|s| Some(slots.of(s, &mut program)))
                .collect();
            let outputs = vec![slots.of(&f.output, &mut program)];
            program.steps.push(Step {
                node: f.node,
                op_type: f.op_type,
                kernel: f.kernel,
                inputs,
                outputs,
                free: Vec::new(),
            });
            continue;
        }
        if fused.absorbed.contains(&i) {
            continue;
        }
        let inputs = n
            .input
            .iter()
            .map(|s| (!s.is_empty()).then(|| slots.of(s, &mut program)))
            .collect();
        let outputs = n
            .output
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| slots.of(s, &mut program))
            .collect();
        program.steps.push(Step {
            node: n.name,
            op_type: n.proto.op_type.clone(),
            kernel: Kernel::Op(n.op),
            inputs,
            outputs,
            free: Vec::new(),
        });
    }
    program.output = slots.of(&program.output_name.clone(), &mut program);
    program
}

/// Slot numbers by value name, in order of first use.
struct Slots<'a> {
    by_name: HashMap<String, usize>,
    consts: &'a HashMap<String, Tensor>,
}

impl Slots<'_> {
    /// The slot of `name`, new if unseen; a constant's new slot is listed
    /// in the program's constants, which each run puts in place first.
    fn of(&mut self, name: &str, program: &mut Program) -> usize {
        if let Some(&s) = self.by_name.get(name) {
            return s;
        }
        let s = program.slots;
        program.slots += 1;
        self.by_name.insert(name.to_string(), s);
        if let Some(t) = self.consts.get(name) {
            program.constants.push((s, t.clone()));
        }
        s
    }
}

/// The passes up to this one on a test model whose input is `x`.
#[cfg(test)]
pub(super) fn emitted(m: &crate::onnx::onnx_pb::ModelProto, output: &str) -> Program {
    let graph = m.graph.as_ref().expect("graph");
    let folded = super::fold::parse_and_fold(graph, 13, "m.onnx").expect("parse");
    let nodes = super::prune::prune(folded.nodes, output);
    let fused = super::fuse::fuse(&nodes, &folded.consts, output, "m.onnx").expect("fuse");
    emit(nodes, fused, &folded.consts, "x".into(), output.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::testutil::{init, model, node};

    fn op_types(p: &Program) -> Vec<&str> {
        p.steps.iter().map(|s| s.op_type.as_str()).collect()
    }

    /// The residual Relu is computed after the convolution's node: the
    /// fused chain runs at the Add, after it.
    #[test]
    fn a_fused_chain_runs_where_its_last_node_was() {
        let m = model(
            vec![
                node("Conv", &["x", "w"], "c"),
                node("Relu", &["x"], "r"),
                node("Add", &["c", "r"], "y"),
            ],
            vec![init("w", &[1, 1, 1, 1], &[2.0])],
            "y",
        );
        let p = emitted(&m, "y");
        assert_eq!(op_types(&p), ["Relu", "Conv+Add"]);
        assert_eq!(p.steps[0].inputs, [Some(0)]);
        assert_eq!(p.steps[1].inputs, [Some(0), Some(1)]);
        assert_eq!((p.input, p.output, p.slots), (0, 2, 3));
        assert!(p.constants.is_empty(), "folded weights take no slot");
    }

    /// An omitted optional input has no slot; a constant's slot is filled
    /// by each run.
    #[test]
    fn constants_get_slots_and_omitted_inputs_none() {
        let m = model(
            vec![node("Clip", &["x", "", "hi"], "y")],
            vec![init("hi", &[], &[6.0])],
            "y",
        );
        let p = emitted(&m, "y");
        assert_eq!(p.steps[0].inputs, [Some(0), None, Some(1)]);
        assert_eq!(p.steps[0].outputs, [2]);
        let slots: Vec<usize> = p.constants.iter().map(|(s, _)| *s).collect();
        assert_eq!(slots, [1]);
    }
}
