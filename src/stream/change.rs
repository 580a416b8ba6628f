//! Change batches: the unit of data flowing between incremental operators.
//!
//! A [`ChangeBatch`] is an Arrow [`RecordBatch`] whose rows each carry a signed
//! weight: `+n` means "n more copies of this row", `-n` means "n fewer". A
//! collection is the sum of all batches ever applied to it (a Z-set, as in
//! DBSP and differential dataflow); rows whose summed weight is zero are absent.

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::RandomState;

use crate::error::{MillraceError, Result};

/// An Arrow batch of rows, each with a signed multiplicity (weight).
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    data: RecordBatch,
    weights: Int64Array,
}

impl ChangeBatch {
    /// Pairs `data` with `weights`; both must have the same length and the
    /// weights no nulls.
    pub fn try_new(data: RecordBatch, weights: Int64Array) -> Result<Self> {
        if data.num_rows() != weights.len() {
            return Err(MillraceError::execution(format!(
                "change batch has {} rows but {} weights",
                data.num_rows(),
                weights.len()
            )));
        }
        if weights.null_count() > 0 {
            return Err(MillraceError::execution(
                "change batch weights contain NULL",
            ));
        }
        Ok(Self { data, weights })
    }

    /// Every row of `data` with the same weight `weight`.
    pub fn with_uniform_weight(data: RecordBatch, weight: i64) -> Self {
        let weights = Int64Array::from_value(weight, data.num_rows());
        Self { data, weights }
    }

    /// An empty batch of the given schema.
    pub fn empty(schema: SchemaRef) -> Self {
        Self {
            data: RecordBatch::new_empty(schema),
            weights: Int64Array::from(Vec::<i64>::new()),
        }
    }

    /// The rows.
    pub fn data(&self) -> &RecordBatch {
        &self.data
    }

    /// The weight of each row.
    pub fn weights(&self) -> &Int64Array {
        &self.weights
    }

    /// The schema of the rows.
    pub fn schema(&self) -> SchemaRef {
        self.data.schema()
    }

    /// Number of rows (not the sum of weights).
    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    /// True when the batch holds no rows.
    pub fn is_empty(&self) -> bool {
        self.data.num_rows() == 0
    }

    /// Splits into rows and weights.
    pub fn into_parts(self) -> (RecordBatch, Int64Array) {
        (self.data, self.weights)
    }

    /// The same rows with every weight negated (a retraction of this batch).
    pub fn negate(&self) -> Self {
        let weights: Int64Array = self.weights.iter().map(|w| w.map(|w| -w)).collect();
        Self {
            data: self.data.clone(),
            weights,
        }
    }

    /// The same weights over new column data (same row count); used by
    /// operators that transform rows one to one.
    pub fn with_data(&self, data: RecordBatch) -> Result<Self> {
        Self::try_new(data, self.weights.clone())
    }

    /// The `len` rows from `offset` on, without copying.
    pub fn slice(&self, offset: usize, len: usize) -> Self {
        Self {
            data: self.data.slice(offset, len),
            weights: self.weights.slice(offset, len),
        }
    }

    /// Keeps the rows where `mask` is true (NULL counts as false).
    pub fn filter(&self, mask: &datafusion::arrow::array::BooleanArray) -> Result<Self> {
        let mask = if mask.null_count() > 0 {
            datafusion::arrow::compute::prep_null_mask_filter(mask)
        } else {
            mask.clone()
        };
        let data = filter_record_batch(&self.data, &mask)?;
        let weights = datafusion::arrow::compute::filter(&self.weights, &mask)?;
        let weights = downcast_weights(&weights)?;
        Self::try_new(data, weights)
    }

    /// Takes the rows at `indices`, in that order.
    pub fn take(&self, indices: &UInt32Array) -> Result<Self> {
        let columns = self
            .data
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let data = RecordBatch::try_new_with_options(
            self.data.schema(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(indices.len())),
        )?;
        let weights = take(&self.weights, indices, None)?;
        Self::try_new(data, downcast_weights(&weights)?)
    }

    /// Concatenates batches of one schema into one.
    pub fn concat(schema: SchemaRef, batches: &[ChangeBatch]) -> Result<Self> {
        match batches {
            [] => Ok(Self::empty(schema)),
            [one] => Ok(one.clone()),
            many => {
                let data = concat_batches(&schema, many.iter().map(|b| &b.data))?;
                let weights: Int64Array = many
                    .iter()
                    .flat_map(|b| b.weights.values().iter().copied())
                    .map(Some)
                    .collect();
                Self::try_new(data, weights)
            }
        }
    }

    /// Sums the weights of identical rows and drops rows whose weight sums to
    /// zero. The result represents the same Z-set with each row at most once.
    pub fn consolidate(&self) -> Result<Self> {
        if self.is_empty() {
            return Ok(self.clone());
        }
        let converter = row_converter(&self.schema())?;
        let rows = converter.convert_columns(self.data.columns())?;
        let mut first_index: std::collections::HashMap<&[u8], usize, RandomState> =
            std::collections::HashMap::with_capacity_and_hasher(
                rows.num_rows(),
                RandomState::default(),
            );
        let mut order: Vec<u32> = Vec::new();
        let mut sums: Vec<i64> = Vec::new();
        for (i, w) in self.weights.values().iter().enumerate() {
            let key = row_bytes(&rows, i);
            match first_index.get(key) {
                Some(&slot) => sums[slot] += *w,
                None => {
                    first_index.insert(key, sums.len());
                    order.push(i as u32);
                    sums.push(*w);
                }
            }
        }
        let (keep_idx, keep_w): (Vec<u32>, Vec<i64>) =
            order.into_iter().zip(sums).filter(|(_, w)| *w != 0).unzip();
        let indices = UInt32Array::from(keep_idx);
        let mut out = self.take(&indices)?;
        out.weights = Int64Array::from(keep_w);
        Ok(out)
    }

    /// Replaces the schema (field names, nullability) keeping the columns;
    /// the column types must already match.
    pub fn with_schema(&self, schema: SchemaRef) -> Result<Self> {
        let data = RecordBatch::try_new_with_options(
            schema,
            self.data.columns().to_vec(),
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(self.num_rows())),
        )?;
        Self::try_new(data, self.weights.clone())
    }

    /// Total number of row copies added minus removed.
    pub fn weight_sum(&self) -> i64 {
        self.weights.values().iter().sum()
    }

    /// The change as Arrow IPC stream bytes: its columns, then its weights
    /// as a last column named `__weight`. Read back with
    /// [`ChangeBatch::from_ipc`].
    pub fn to_ipc(&self) -> Result<Vec<u8>> {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let mut fields: Vec<Field> = self
            .data
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("__weight", DataType::Int64, false));
        let mut columns = self.data.columns().to_vec();
        columns.push(std::sync::Arc::new(self.weights.clone()));
        let batch = RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)?;
        let mut out = Vec::new();
        {
            let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(
                &mut out,
                batch.schema_ref(),
            )?;
            writer.write(&batch)?;
            writer.finish()?;
        }
        Ok(out)
    }

    /// The change [`ChangeBatch::to_ipc`] wrote, with the columns of
    /// `schema`; bytes of another shape are an error.
    pub fn from_ipc(schema: &SchemaRef, bytes: &[u8]) -> Result<Self> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(bytes, None)?;
        let mut parts = Vec::new();
        for batch in reader {
            let batch = batch?;
            let n = batch.num_columns();
            if n != schema.fields().len() + 1 {
                return Err(MillraceError::storage(format!(
                    "a stored change has {} columns where {} were expected",
                    n.saturating_sub(1),
                    schema.fields().len()
                )));
            }
            let weights = batch
                .column(n - 1)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| MillraceError::storage("a stored change has no weights"))?
                .clone();
            let data = batch_from_columns(
                schema.clone(),
                batch.columns()[..n - 1].to_vec(),
                batch.num_rows(),
            )?;
            parts.push(Self::try_new(data, weights)?);
        }
        Self::concat(schema.clone(), &parts)
    }
}

fn downcast_weights(a: &ArrayRef) -> Result<Int64Array> {
    a.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| MillraceError::execution("weights are not Int64"))
}

/// The bytes of row `i` of `rows`. Arrow's row format encodes no rows at
/// all for zero columns, where every row is the same empty row.
pub fn row_bytes(rows: &datafusion::arrow::row::Rows, i: usize) -> &[u8] {
    if rows.num_rows() == 0 {
        &[]
    } else {
        rows.row(i).data()
    }
}

/// A row converter over every column of `schema` (Arrow's row format, whose
/// byte order equals the columns' sort order).
pub fn row_converter(schema: &SchemaRef) -> Result<RowConverter> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    Ok(RowConverter::new(fields)?)
}

/// Builds a record batch of `schema` from columns, allowing zero columns.
pub fn batch_from_columns(
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
    num_rows: usize,
) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(num_rows)),
    )?)
}

/// Evaluates key expressions over a batch, casting each to its key type so
/// that equal keys from inputs of different types compare equal.
pub fn evaluate_keys(
    exprs: &[std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>],
    types: &[datafusion::arrow::datatypes::DataType],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>> {
    let n = batch.num_rows();
    exprs
        .iter()
        .zip(types)
        .map(|(e, ty)| {
            let a = e.evaluate(batch)?.into_array(n)?;
            Ok(if a.data_type() == ty {
                a
            } else {
                datafusion::arrow::compute::cast(&a, ty)?
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::pretty::{from_pretty, to_pretty_lines};

    #[test]
    fn ipc_bytes_keep_rows_and_weights_and_refuse_another_shape() {
        let change = from_pretty("I T\n 1 a +2\n 2 b -1\n 3 . +1").unwrap();
        let back = ChangeBatch::from_ipc(&change.schema(), &change.to_ipc().unwrap()).unwrap();
        assert_eq!(
            to_pretty_lines(&back).unwrap(),
            to_pretty_lines(&change).unwrap()
        );
        let narrower = from_pretty("I\n 1 +1").unwrap();
        let err = ChangeBatch::from_ipc(&narrower.schema(), &change.to_ipc().unwrap()).unwrap_err();
        assert!(err.to_string().contains("2 columns where 1"), "{err}");
        assert!(ChangeBatch::from_ipc(&change.schema(), b"not ipc").is_err());
    }
}
