//! Pass 2: keep only the nodes the chosen output depends on.

use std::collections::HashSet;

use super::Node;

/// The ancestors of `output` among `nodes` (in topological order, the ONNX
/// rule), in their order.
pub fn prune<'g>(nodes: Vec<Node<'g>>, output: &str) -> Vec<Node<'g>> {
    let mut needed: HashSet<&str> = HashSet::from([output]);
    let mut keep = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o.as_str())) {
            keep[i] = true;
            needed.extend(n.inputs().filter(|i| !i.is_empty()));
        }
    }
    nodes
        .into_iter()
        .zip(keep)
        .filter_map(|(n, k)| k.then_some(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fold::parse_and_fold;
    use super::*;
    use crate::onnx::testutil::{model, node};

    /// A classifier behind the features and a branch the output does not
    /// read are dropped; the order of the rest is kept.
    #[test]
    fn only_the_ancestors_of_the_output_are_kept_in_order() {
        let m = model(
            vec![
                node("Relu", &["x"], "a"),
                node("Sigmoid", &["x"], "unused"),
                node("Tanh", &["a"], "b"),
                node("Relu", &["x"], "c"),
                node("Add", &["b", "c"], "features"),
                node("Softmax", &["features"], "logits"),
            ],
            vec![],
            "logits",
        );
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 13, "m.onnx").unwrap();
        let kept: Vec<String> = prune(folded.nodes, "features")
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(kept, ["a", "b", "c", "features"]);
    }
}
