//! The catalog: every table and view Millrace knows, with the SQL that
//! created it and what it depends on. Entries are persisted as JSON in the
//! state store and replayed in creation order on start.

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use super::statement::ObjectKind;
use crate::error::{MillraceError, Result};

/// State-store namespace of catalog entries (key: big-endian id).
pub const CATALOG_NAMESPACE: &str = "catalog";

/// One relation in the catalog.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// Creation order; also the persistence key.
    pub id: u64,
    /// Relation name (lower case unless quoted at creation).
    pub name: String,
    /// Table, view or materialized view.
    pub kind: ObjectKind,
    /// Output columns.
    pub schema: SchemaRef,
    /// The normalized `CREATE` statement.
    pub create_sql: String,
    /// Relations this one reads (empty for tables).
    pub depends_on: Vec<String>,
    /// `COMMENT ON` the relation and its columns.
    pub comments: Comments,
}

/// Comments set with `COMMENT ON`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comments {
    /// On the relation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    /// On columns, by column name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    id: u64,
    name: String,
    kind: String,
    create_sql: String,
    #[serde(default)]
    comments: Comments,
}

impl CatalogEntry {
    /// The persisted form.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let stored = StoredEntry {
            id: self.id,
            name: self.name.clone(),
            kind: self.kind.sql_name().to_string(),
            create_sql: self.create_sql.clone(),
            comments: self.comments.clone(),
        };
        serde_json::to_vec(&stored).map_err(MillraceError::storage)
    }

    /// The key under [`CATALOG_NAMESPACE`].
    pub fn key(&self) -> Vec<u8> {
        self.id.to_be_bytes().to_vec()
    }
}

/// A catalog entry read back from the store: enough to replay its creation.
pub struct StoredCatalogEntry {
    /// Creation order.
    pub id: u64,
    /// Relation name.
    pub name: String,
    /// The `CREATE` statement.
    pub create_sql: String,
    /// Comments to restore after the statement is replayed.
    pub comments: Comments,
}

/// Decodes a persisted entry.
pub fn decode_entry(bytes: &[u8]) -> Result<StoredCatalogEntry> {
    let s: StoredEntry = serde_json::from_slice(bytes)
        .map_err(|e| MillraceError::storage(format!("unreadable catalog entry: {e}")))?;
    Ok(StoredCatalogEntry {
        id: s.id,
        name: s.name,
        create_sql: s.create_sql,
        comments: s.comments,
    })
}

/// Namespace holding a table's rows (key: row in row format, value: count).
pub fn rows_namespace(id: u64) -> String {
    format!("rows/{id}")
}
