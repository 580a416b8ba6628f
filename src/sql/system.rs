//! System relations: live engine state (source progress, sinks) exposed as
//! read-only relations in the `millrace_catalog` schema, and PostgreSQL's
//! catalogs in `pg_catalog`, so that they can be queried, filtered and
//! joined with plain SQL.
//!
//! A system relation holds no rows: each scan computes them, from the
//! engine's live state (source progress, not part of the epoch snapshot) or
//! from the scanning session's snapshot (`pg_catalog`).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::error::Result;

/// The schema that holds the system relations.
pub const SYSTEM_SCHEMA: &str = "millrace_catalog";

/// Produces a system relation's current rows, for the session that scans
/// it (whose snapshot some relations read).
pub type RowsFn = Box<dyn Fn(&dyn Session) -> Result<RecordBatch> + Send + Sync>;

/// One system relation.
pub struct SystemRelation {
    schema: SchemaRef,
    rows: RowsFn,
}

impl std::fmt::Debug for SystemRelation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemRelation")
            .field("schema", &self.schema)
            .finish()
    }
}

impl SystemRelation {
    /// A relation of `schema` whose rows come from `rows` at each scan.
    pub fn new(schema: SchemaRef, rows: RowsFn) -> Self {
        Self { schema, rows }
    }
}

#[async_trait]
impl TableProvider for SystemRelation {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let batch = (self.rows)(state).map_err(|e| DataFusionError::Execution(e.to_string()))?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
