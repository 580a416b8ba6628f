//! A compact text form for change batches, so operator tests read as tables.
//!
//! The first line lists one type code per column (`i` Int32, `I` Int64,
//! `F` Float64, `T` Utf8, `B` Boolean); every further line is a row whose last
//! token is its weight. `.` is NULL. Columns are named `c0`, `c1`, ...
//!
//! ```text
//! I T   F
//! 1 a   1.5 +1
//! 2 .   .   -1
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::change::ChangeBatch;
use crate::error::{MillraceError, Result};

/// Parses the text form described in the module documentation.
pub fn from_pretty(text: &str) -> Result<ChangeBatch> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header = lines
        .next()
        .ok_or_else(|| MillraceError::execution("pretty batch needs a header line"))?;
    let types = header
        .split_whitespace()
        .map(|code| match code {
            "i" => Ok(DataType::Int32),
            "I" => Ok(DataType::Int64),
            "F" => Ok(DataType::Float64),
            "T" => Ok(DataType::Utf8),
            "B" => Ok(DataType::Boolean),
            other => Err(MillraceError::execution(format!(
                "unknown type code {other}"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut cells: Vec<Vec<Option<String>>> = vec![Vec::new(); types.len()];
    let mut weights = Vec::new();
    for line in lines {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.len() != types.len() + 1 {
            return Err(MillraceError::execution(format!(
                "row '{line}' needs {} values and a weight",
                types.len()
            )));
        }
        for (i, t) in tokens[..types.len()].iter().enumerate() {
            cells[i].push((*t != ".").then(|| t.to_string()));
        }
        let w = tokens[types.len()]
            .trim_start_matches('+')
            .parse::<i64>()
            .map_err(|e| MillraceError::execution(format!("bad weight in '{line}': {e}")))?;
        weights.push(w);
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (i, (ty, col)) in types.iter().zip(cells).enumerate() {
        fields.push(Field::new(format!("c{i}"), ty.clone(), true));
        let bad = |v: &str| MillraceError::execution(format!("bad {ty} value {v}"));
        let array: ArrayRef = match ty {
            DataType::Int32 => Arc::new(
                col.iter()
                    .map(|v| {
                        v.as_deref()
                            .map(|s| s.parse::<i32>().map_err(|_| bad(s)))
                            .transpose()
                    })
                    .collect::<Result<Int32Array>>()?,
            ),
            DataType::Int64 => Arc::new(
                col.iter()
                    .map(|v| {
                        v.as_deref()
                            .map(|s| s.parse::<i64>().map_err(|_| bad(s)))
                            .transpose()
                    })
                    .collect::<Result<Int64Array>>()?,
            ),
            DataType::Float64 => Arc::new(
                col.iter()
                    .map(|v| {
                        v.as_deref()
                            .map(|s| s.parse::<f64>().map_err(|_| bad(s)))
                            .transpose()
                    })
                    .collect::<Result<Float64Array>>()?,
            ),
            DataType::Boolean => Arc::new(
                col.iter()
                    .map(|v| {
                        v.as_deref()
                            .map(|s| Ok::<_, MillraceError>(s == "t" || s == "true"))
                            .transpose()
                    })
                    .collect::<Result<BooleanArray>>()?,
            ),
            _ => Arc::new(col.iter().map(|v| v.as_deref()).collect::<StringArray>()),
        };
        columns.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let data = super::change::batch_from_columns(schema, columns, weights.len())?;
    ChangeBatch::try_new(data, Int64Array::from(weights))
}

/// Renders a batch as sorted lines `v0 v1 ... | w` after consolidation, so
/// two batches meaning the same Z-set render identically.
pub fn to_pretty_lines(batch: &ChangeBatch) -> Result<Vec<String>> {
    let batch = batch.consolidate()?;
    let options = FormatOptions::default().with_null(".");
    let formatters = batch
        .data()
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut lines: Vec<String> = (0..batch.num_rows())
        .map(|row| {
            let values: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            format!("{} | {:+}", values.join(" "), batch.weights().value(row))
        })
        .collect();
    lines.sort();
    Ok(lines)
}

/// Convenience: the pretty lines of a whole record batch with weight +1 each.
pub fn batch_lines(batch: &RecordBatch) -> Result<Vec<String>> {
    to_pretty_lines(&ChangeBatch::with_uniform_weight(batch.clone(), 1))
}
