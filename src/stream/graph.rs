//! A dataflow graph: operators wired in topological order, stepped once per
//! epoch. Each materialized view owns one graph whose leaves read the deltas
//! of the relations (tables, other views) it was defined over.

use std::collections::HashMap;

use datafusion::arrow::datatypes::SchemaRef;

use super::change::ChangeBatch;
use super::operator::{Operator, OperatorStats, StateChanges, StateEntry};
use super::temporal::Clock;
use super::watermark::{WatermarkEntry, WatermarkRule, Watermarks};
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
    /// How the output's watermarks follow from the inputs'.
    rules: Vec<WatermarkRule>,
    /// The output columns that can carry a watermark.
    marked_columns: Vec<usize>,
    /// The output's watermarks after the last epoch.
    marks: Watermarks,
}

/// A DAG of operators. Nodes are stored in topological order: a node only
/// reads relations or nodes added before it; the last node is the output.
#[derive(Default)]
pub struct Dataflow {
    nodes: Vec<Node>,
    /// Whether any node can carry a watermark; graphs without skip the
    /// watermark work.
    watermarked: bool,
    /// The declared watermarks the graph's scans apply.
    watermark_entries: Vec<WatermarkEntry>,
    /// The time its temporal filters see.
    clock: Clock,
}

impl Dataflow {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an operator reading `inputs`; returns its node id.
    pub fn add(&mut self, operator: Box<dyn Operator>, inputs: Vec<NodeInput>) -> Result<usize> {
        self.add_marked(operator, inputs, vec![], vec![])
    }

    /// Adds an operator whose output watermarks follow `rules`, plus those
    /// it sets itself on columns `own` (see [`Operator::own_watermarks`]).
    pub fn add_marked(
        &mut self,
        operator: Box<dyn Operator>,
        inputs: Vec<NodeInput>,
        rules: Vec<WatermarkRule>,
        own: Vec<usize>,
    ) -> Result<usize> {
        let id = self.nodes.len();
        for input in &inputs {
            if let NodeInput::Node(n) = input {
                if *n >= id {
                    return Err(MillraceError::execution("dataflow input refers forward"));
                }
            }
        }
        let mut marked_columns: Vec<usize> = rules.iter().map(|r| r.output).chain(own).collect();
        marked_columns.sort_unstable();
        marked_columns.dedup();
        self.watermarked |= !marked_columns.is_empty();
        self.nodes.push(Node {
            operator,
            inputs,
            rules,
            marked_columns,
            marks: Watermarks::none(),
        });
        Ok(id)
    }

    /// Records the declared watermarks the graph's scans apply.
    pub fn set_watermark_entries(&mut self, entries: Vec<WatermarkEntry>) {
        self.watermark_entries = entries;
    }

    /// The declared watermarks the graph's scans apply, with their state.
    pub fn watermark_entries(&self) -> &[WatermarkEntry] {
        &self.watermark_entries
    }

    /// The output columns of node `id` that can carry a watermark.
    pub fn marked_columns(&self, id: usize) -> &[usize] {
        self.nodes
            .get(id)
            .map(|n| n.marked_columns.as_slice())
            .unwrap_or(&[])
    }

    /// The output node's watermarks after the last epoch.
    pub fn output_watermarks(&self) -> Watermarks {
        self.nodes
            .last()
            .map(|n| n.marks.clone())
            .unwrap_or_default()
    }

    /// The output columns that can carry a watermark.
    pub fn output_marked_columns(&self) -> Vec<usize> {
        self.nodes
            .last()
            .map(|n| n.marked_columns.clone())
            .unwrap_or_default()
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
        self.step_marked(deltas, &HashMap::new())
    }

    /// Runs one epoch with the input relations' watermarks `marks` (of
    /// views read by this one, and of sources that ended).
    pub fn step_marked(
        &mut self,
        deltas: &HashMap<String, ChangeBatch>,
        marks: &HashMap<String, Watermarks>,
    ) -> Result<Option<ChangeBatch>> {
        let none = Watermarks::none();
        let mut outputs: Vec<Option<ChangeBatch>> = Vec::with_capacity(self.nodes.len());
        for index in 0..self.nodes.len() {
            let (earlier, rest) = self.nodes.split_at_mut(index);
            let Some(node) = rest.first_mut() else {
                break;
            };
            let inputs: Vec<Option<ChangeBatch>> = node
                .inputs
                .iter()
                .map(|i| match i {
                    NodeInput::Relation(r) => deltas.get(r).cloned(),
                    NodeInput::Node(n) => outputs.get(*n).cloned().flatten(),
                })
                .collect();
            let mut out = node.operator.step(&inputs)?;
            if self.watermarked {
                let input_marks: Vec<&Watermarks> = node
                    .inputs
                    .iter()
                    .map(|i| match i {
                        NodeInput::Relation(r) => marks.get(r).unwrap_or(&none),
                        NodeInput::Node(n) => earlier.get(*n).map(|e| &e.marks).unwrap_or(&none),
                    })
                    .collect();
                for rule in &node.rules {
                    if let Some(mark) = rule.evaluate(&input_marks)? {
                        node.marks.advance(rule.output, mark);
                    }
                }
                for (column, mark) in node.operator.own_watermarks().iter() {
                    node.marks.advance(*column, mark.clone());
                }
                if let Some(released) = node.operator.advance(&input_marks, &node.marks)? {
                    out = match out {
                        Some(o) => Some(ChangeBatch::concat(o.schema(), &[o, released])?),
                        None => Some(released),
                    };
                }
            }
            outputs.push(out.filter(|b| !b.is_empty()));
        }
        Ok(outputs.pop().flatten())
    }

    /// The clock the graph's temporal filters read.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Sets the time the next epoch runs at (nanoseconds since the Unix
    /// epoch).
    pub fn set_now(&self, nanos: i64) {
        self.clock.set(nanos);
    }

    /// The earliest time any operator has a change scheduled for.
    pub fn next_due(&self) -> Option<i64> {
        self.nodes
            .iter()
            .filter_map(|n| n.operator.next_due())
            .min()
    }

    /// True when any operator keeps state between epochs.
    pub fn is_stateful(&self) -> bool {
        self.nodes.iter().any(|n| n.operator.is_stateful())
    }

    /// True when every operator can write its state at checkpoints and
    /// read it back.
    pub fn checkpointable(&self) -> bool {
        self.nodes.iter().all(|n| n.operator.checkpointable())
    }

    /// From now on, every operator remembers what of its state changes,
    /// for [`Dataflow::checkpoint`].
    pub fn track_changes(&mut self) {
        for node in &mut self.nodes {
            node.operator.track_changes();
        }
    }

    /// What identifies the graph's state layout: its operators as `EXPLAIN`
    /// describes them (kinds, keys, workers). A checkpoint is restored only
    /// into a graph with the same layout.
    pub fn layout(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.operator.describe())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Adds the state each operator changed since the last checkpoint to
    /// `out`, each node's keys behind `prefix(node id)`.
    pub fn checkpoint_into<P: AsRef<[u8]>>(
        &mut self,
        out: &mut StateChanges,
        prefix: impl Fn(usize) -> Result<P>,
    ) -> Result<()> {
        for (id, node) in self.nodes.iter_mut().enumerate() {
            let prefix = prefix(id)?;
            out.with_prefix(prefix.as_ref(), |out| node.operator.checkpoint(out))?;
        }
        Ok(())
    }

    /// Restores each node's state from its checkpointed entries (a graph
    /// that has run no epoch).
    pub fn restore(&mut self, mut entries: HashMap<usize, Vec<StateEntry>>) -> Result<()> {
        for (id, node) in self.nodes.iter_mut().enumerate() {
            if let Some(e) = entries.remove(&id) {
                node.operator.restore(e)?;
            }
        }
        if let Some(id) = entries.keys().next() {
            return Err(MillraceError::storage(format!(
                "the checkpoint holds state for operator {id}, which the view does not have"
            )));
        }
        Ok(())
    }

    /// Per-node description and counters, in node order.
    pub fn stats(&self) -> Vec<(String, OperatorStats)> {
        self.nodes
            .iter()
            .map(|n| (n.operator.describe(), n.operator.stats()))
            .collect()
    }

    /// The graph as an indented tree, output at the top. A node that
    /// feeds several others (a subquery written twice and maintained once)
    /// is printed in full once, tagged `[shared #id]`, and referred to by
    /// that tag elsewhere.
    pub fn explain(&self) -> Vec<String> {
        let mut consumers = vec![0usize; self.nodes.len()];
        for node in &self.nodes {
            for input in &node.inputs {
                if let NodeInput::Node(n) = input {
                    if let Some(c) = consumers.get_mut(*n) {
                        *c += 1;
                    }
                }
            }
        }
        let mut lines = Vec::new();
        let mut printed = vec![false; self.nodes.len()];
        if !self.nodes.is_empty() {
            self.explain_node(
                self.nodes.len() - 1,
                0,
                &consumers,
                &mut printed,
                &mut lines,
            );
        }
        lines
    }

    fn explain_node(
        &self,
        id: usize,
        depth: usize,
        consumers: &[usize],
        printed: &mut [bool],
        lines: &mut Vec<String>,
    ) {
        let node = &self.nodes[id];
        let indent = "  ".repeat(depth);
        let shared = consumers.get(id).is_some_and(|&c| c > 1);
        if shared && printed[id] {
            lines.push(format!("{indent}Shared #{id} (above)"));
            return;
        }
        printed[id] = true;
        let tag = if shared {
            format!(" [shared #{id}]")
        } else {
            String::new()
        };
        lines.push(format!("{indent}{}{tag}", node.operator.describe()));
        for input in &node.inputs {
            match input {
                NodeInput::Node(n) => self.explain_node(*n, depth + 1, consumers, printed, lines),
                NodeInput::Relation(r) => {
                    lines.push(format!("{indent}  Input {r}"));
                }
            }
        }
    }
}
