//! The incremental dataflow: change batches, the operators that transform
//! them, the graph that wires operators together, and the lowering pass that
//! builds a graph from a DataFusion logical plan.

pub mod aggregate;
pub mod change;
pub mod constant;
pub mod emit;
pub mod filter;
pub mod graph;
pub mod join;
pub mod lower;
pub mod materialize;
pub mod operator;
pub mod ordered;
pub mod over;
pub mod partition;
pub mod pretty;
pub mod project;
pub mod scalar_subquery;
pub mod scan;
pub mod temporal;
pub mod topn;
pub mod union;
pub mod upsert;
pub mod watermark;

pub use change::ChangeBatch;
pub use graph::Dataflow;
