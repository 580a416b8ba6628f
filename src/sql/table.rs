//! A table's state: its rows, and the constraints checked before a change
//! is accepted (NOT NULL, PRIMARY KEY).

use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::{MillraceError, Result};
use crate::sql::types::varchar_length;
use crate::stream::materialize::Contents;
use crate::stream::ChangeBatch;

/// Primary-key index: key in row format to the number of rows holding it (0 or 1).
pub type KeyIndex = imbl::HashMap<Arc<[u8]>, i64>;

/// A table: contents plus constraint state.
pub struct TableState {
    /// Table name.
    pub name: String,
    /// Catalog id.
    pub id: u64,
    /// The rows.
    pub contents: Contents,
    /// Indices of the primary-key columns (empty without a key).
    pub primary_key: Vec<usize>,
    key_converter: Option<RowConverter>,
    /// Primary keys present.
    pub key_index: KeyIndex,
}

impl TableState {
    /// An empty table.
    pub fn try_new(
        name: String,
        id: u64,
        schema: SchemaRef,
        primary_key: Vec<usize>,
    ) -> Result<Self> {
        let key_converter = if primary_key.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                primary_key
                    .iter()
                    .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                    .collect(),
            )?)
        };
        Ok(Self {
            name,
            id,
            contents: Contents::try_new(schema)?,
            primary_key,
            key_converter,
            key_index: KeyIndex::new(),
        })
    }

    /// Rebuilds the key index from the contents (after a restore).
    pub fn rebuild_key_index(&mut self) -> Result<()> {
        self.key_index = KeyIndex::new();
        for batch in self.contents.as_change_batches()? {
            let checked = self.check(&batch)?;
            self.key_index = checked;
        }
        Ok(())
    }

    /// Checks a change against the constraints; returns the key index as it
    /// will be once the change is applied. Nothing is modified.
    pub fn check(&self, delta: &ChangeBatch) -> Result<KeyIndex> {
        let schema = self.contents.schema();
        for (i, field) in schema.fields().iter().enumerate() {
            if !field.is_nullable() {
                let col = delta.data().column(i);
                if col.null_count() > 0 {
                    let weights = delta.weights().values();
                    if (0..col.len()).any(|r| col.is_null(r) && weights[r] > 0) {
                        return Err(MillraceError::NotNullViolation {
                            table: self.name.clone(),
                            column: field.name().clone(),
                        });
                    }
                }
            }
        }
        for (i, field) in schema.fields().iter().enumerate() {
            if let Some(max) = varchar_length(field) {
                check_length(delta, i, max)?;
            }
        }
        let Some(conv) = &self.key_converter else {
            return Ok(self.key_index.clone());
        };
        let key_cols: Vec<_> = self
            .primary_key
            .iter()
            .map(|&i| delta.data().column(i).clone())
            .collect();
        let keys = conv.convert_columns(&key_cols)?;
        let mut index = self.key_index.clone();
        let weights = delta.weights().values();
        // Removals first, so an UPDATE that keeps its key is not a conflict.
        for pass_removals in [true, false] {
            for (r, w) in weights.iter().enumerate() {
                if (*w < 0) != pass_removals || *w == 0 {
                    continue;
                }
                let key = keys.row(r).data();
                let now = index.get(key).copied().unwrap_or(0) + w;
                if now > 1 {
                    let options = FormatOptions::default().with_null("NULL");
                    let values = key_cols
                        .iter()
                        .map(|c| {
                            ArrayFormatter::try_new(c.as_ref(), &options)
                                .map(|f| f.value(r).to_string())
                        })
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    let names: Vec<&str> = self
                        .primary_key
                        .iter()
                        .map(|&i| schema.field(i).name().as_str())
                        .collect();
                    return Err(MillraceError::UniqueViolation {
                        constraint: format!("{}_pkey", self.name),
                        detail: format!(
                            "Key ({})=({}) already exists.",
                            names.join(", "),
                            values.join(", ")
                        ),
                    });
                }
                if now <= 0 {
                    index.remove(key);
                } else {
                    index.insert(Arc::from(key), now);
                }
            }
        }
        Ok(index)
    }
}

/// PostgreSQL's check of a `varchar(n)` column: an inserted value longer
/// than `n` characters is refused. (PostgreSQL silently cuts excess
/// characters that are all spaces; Millrace refuses those too.)
fn check_length(delta: &ChangeBatch, column: usize, max: usize) -> Result<()> {
    use datafusion::arrow::array::AsArray;
    let Some(values) = delta.data().column(column).as_string_opt::<i32>() else {
        return Ok(());
    };
    let weights = delta.weights().values();
    for (r, v) in values.iter().enumerate() {
        if let Some(v) = v {
            // Byte length bounds the character count: only long values
            // need counting.
            if v.len() > max && weights[r] > 0 && v.chars().count() > max {
                return Err(MillraceError::Data {
                    sqlstate: "22001",
                    message: format!("value too long for type character varying({max})"),
                });
            }
        }
    }
    Ok(())
}
