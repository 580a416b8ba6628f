//! A dataflow graph: operators wired in topological order, stepped once per
//! epoch. Each materialized view owns one graph whose leaves read the deltas
//! of the relations (tables, other views) it was defined over.

use std::collections::HashMap;

use datafusion::arrow::datatypes::SchemaRef;

use super::change::ChangeBatch;
use super::operator::{Operator, OperatorStats};
use crate::error::{MillraceError, Result};

/// Where a node's input comes from.
#[derive(Debug, Clone)]
pub enum NodeInput {
    /// The delta of a named relation (table or view) in this epoch.
    Relation(String),
    /// The output of an earlier node.
    Node(usize),
}

struct Node {
    operator: Box<dyn Operator>,
    inputs: Vec<NodeInput>,
}

/// A DAG of operators. Nodes are stored in topological order: a node only
/// reads relations or nodes added before it; the last node is the output.
#[derive(Default)]
pub struct Dataflow {
    nodes: Vec<Node>,
}

impl Dataflow {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an operator reading `inputs`; returns its node id.
    pub fn add(&mut self, operator: Box<dyn Operator>, inputs: Vec<NodeInput>) -> Result<usize> {
        let id = self.nodes.len();
        for input in &inputs {
            if let NodeInput::Node(n) = input {
                if *n >= id {
                    return Err(MillraceError::execution("dataflow input refers forward"));
                }
            }
        }
        self.nodes.push(Node { operator, inputs });
        Ok(id)
    }

    /// Schema of the output node.
    pub fn output_schema(&self) -> Option<SchemaRef> {
        self.nodes.last().map(|n| n.operator.schema())
    }

    /// Names of the relations this graph reads.
    pub fn relations(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.inputs.iter())
            .filter_map(|i| match i {
                NodeInput::Relation(r) => Some(r.clone()),
                NodeInput::Node(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Runs one epoch: `deltas` holds the change of every relation that
    /// changed. Returns the change of the output node.
    pub fn step(&mut self, deltas: &HashMap<String, ChangeBatch>) -> Result<Option<ChangeBatch>> {
        let mut outputs: Vec<Option<ChangeBatch>> = Vec::with_capacity(self.nodes.len());
        for node in self.nodes.iter_mut() {
            let inputs: Vec<Option<ChangeBatch>> = node
                .inputs
                .iter()
                .map(|i| match i {
                    NodeInput::Relation(r) => deltas.get(r).cloned(),
                    NodeInput::Node(n) => outputs.get(*n).cloned().flatten(),
                })
                .collect();
            let out = node.operator.step(&inputs)?;
            outputs.push(out.filter(|b| !b.is_empty()));
        }
        Ok(outputs.pop().flatten())
    }

    /// True when any operator keeps state between epochs.
    pub fn is_stateful(&self) -> bool {
        self.nodes.iter().any(|n| n.operator.is_stateful())
    }

    /// Per-node description and counters, in node order.
    pub fn stats(&self) -> Vec<(String, OperatorStats)> {
        self.nodes
            .iter()
            .map(|n| (n.operator.describe(), n.operator.stats()))
            .collect()
    }

    /// The graph as an indented tree, output at the top.
    pub fn explain(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.nodes.is_empty() {
            self.explain_node(self.nodes.len() - 1, 0, &mut lines);
        }
        lines
    }

    fn explain_node(&self, id: usize, depth: usize, lines: &mut Vec<String>) {
        let node = &self.nodes[id];
        lines.push(format!(
            "{}{}",
            "  ".repeat(depth),
            node.operator.describe()
        ));
        for input in &node.inputs {
            match input {
                NodeInput::Node(n) => self.explain_node(*n, depth + 1, lines),
                NodeInput::Relation(r) => {
                    lines.push(format!("{}Input {r}", "  ".repeat(depth + 1)));
                }
            }
        }
    }
}
