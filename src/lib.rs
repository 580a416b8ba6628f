//! Millrace: a SQL-first streaming database. Tables and materialized views
//! are declared in SQL; each view compiles to incremental dataflow operators
//! that update its result from each change; results are served over the
//! PostgreSQL wire protocol.

pub mod bench;
pub mod crash;
pub mod error;
pub mod pgwire;
pub mod server;
pub mod sink;
pub mod source;
pub mod sql;
pub mod storage;
pub mod stream;

pub use error::{MillraceError, Result};
