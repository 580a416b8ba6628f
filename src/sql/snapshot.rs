//! Consistent reads: a [`Snapshot`] is every relation's contents at one
//! epoch. A query's session carries one snapshot as a config extension, and
//! every [`RelationProvider`] it scans reads from that same snapshot, so a
//! `SELECT` never sees half of a change.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::pg_catalog::PgCatalogInfo;
use crate::stream::materialize::RelationData;

/// All relations' contents at one epoch.
#[derive(Default)]
pub struct Snapshot {
    /// The epoch: how many changes have been committed before it.
    pub epoch: u64,
    /// Contents by relation name.
    pub relations: HashMap<String, Arc<RelationData>>,
    /// The catalog as `pg_catalog` describes it.
    pub catalog: Arc<PgCatalogInfo>,
}

/// A table or materialized view as DataFusion sees it. It holds no data: at
/// scan time it reads the snapshot attached to the query's session.
#[derive(Debug)]
pub struct RelationProvider {
    name: String,
    schema: SchemaRef,
    table_type: TableType,
}

impl RelationProvider {
    /// A provider for relation `name` with `schema`.
    pub fn new(name: String, schema: SchemaRef, table_type: TableType) -> Self {
        Self {
            name,
            schema,
            table_type,
        }
    }
}

#[async_trait]
impl TableProvider for RelationProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.table_type
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let snapshot = state.config().get_extension::<Snapshot>().ok_or_else(|| {
            DataFusionError::Internal("query has no snapshot attached".to_string())
        })?;
        let data = snapshot.relations.get(&self.name).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "relation \"{}\" is not visible at epoch {}",
                self.name, snapshot.epoch
            ))
        })?;
        let batches = data
            .batches()
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        // Two partitions let DataFusion use both cores on large scans.
        let partitions = split_partitions(batches);
        Ok(MemorySourceConfig::try_new_exec(
            &partitions,
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

fn split_partitions(
    batches: Vec<datafusion::arrow::array::RecordBatch>,
) -> Vec<Vec<datafusion::arrow::array::RecordBatch>> {
    if batches.len() < 2 {
        return vec![batches];
    }
    let mut parts = vec![Vec::new(), Vec::new()];
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % 2].push(b);
    }
    parts
}

/// A source as DataFusion sees it: it has a schema, so views can be planned
/// over it, but it holds no rows to scan.
#[derive(Debug)]
pub struct SourceProvider {
    name: String,
    schema: SchemaRef,
}

impl SourceProvider {
    /// A provider for source `name` with `schema`.
    pub fn new(name: String, schema: SchemaRef) -> Self {
        Self { name, schema }
    }
}

#[async_trait]
impl TableProvider for SourceProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::NotImplemented(format!(
            "reading source \"{}\" directly: a source is a stream and keeps no rows; \
             create a materialized view over it and query that",
            self.name
        )))
    }
}
