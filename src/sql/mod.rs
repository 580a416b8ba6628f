//! SQL: statement parsing and classification, the catalog, table state,
//! consistent snapshots for reads, and the engine that executes statements.

pub mod catalog;
pub mod checkpoint;
pub mod engine;
pub mod pg_catalog;
pub mod pg_functions;
pub mod pg_rewrite;
pub mod sink_log;
pub mod snapshot;
pub mod statement;
pub mod system;
pub mod table;
pub mod types;
pub mod users;
pub mod windows;

pub use engine::{Engine, EngineOptions, QueryOutput};
