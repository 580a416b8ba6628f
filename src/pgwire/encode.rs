//! Encoding Arrow batches into `DataRow` messages.
//!
//! Values go through `arrow-pg`'s per-type encoder, with three exceptions
//! handled here: NULLs (that encoder does not check validity for every type,
//! intervals among them), and, in text format, floating-point and
//! time/timestamp values, which are written the way PostgreSQL writes them
//! (`2` not `2.0`, `Infinity`, `03:04:05` without trailing zero fractions,
//! `+00` for UTC).

use std::sync::Arc;

use arrow_pg::encoder::{encode_value, Encoder};
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveTime};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions as PgFormatOptions;
use pgwire::types::ToSqlText;
use postgres_types::{to_sql_checked, IsNull, ToSql};

use crate::sql::types::{is_varchar, SQL_TYPE_KEY};

/// The wire description of result columns: `arrow-pg`'s mapping, with
/// columns declared `jsonb` or `varchar` (stored as text) reported as
/// such.
pub fn pg_fields(
    schema: &datafusion::arrow::datatypes::Schema,
    format: &Format,
) -> PgWireResult<Vec<FieldInfo>> {
    let fields = arrow_pg::datatypes::arrow_schema_to_pg_fields(schema, format, None)?;
    Ok(fields
        .into_iter()
        .zip(schema.fields())
        .map(|(info, f)| {
            let declared = if is_jsonb(f) {
                Some(Type::JSONB)
            } else if is_varchar(f) {
                Some(Type::VARCHAR)
            } else {
                None
            };
            match declared {
                Some(ty) => FieldInfo::new(info.name().to_string(), None, None, ty, info.format()),
                None => info,
            }
        })
        .collect())
}

fn is_jsonb(field: &datafusion::arrow::datatypes::Field) -> bool {
    field
        .metadata()
        .get(SQL_TYPE_KEY)
        .is_some_and(|t| t == "jsonb")
}

/// JSON text as a `jsonb` value: the text itself in text format, a version
/// byte and the text in binary format.
#[derive(Debug)]
struct JsonbText<'a>(&'a str);

impl ToSql for JsonbText<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.put_u8(1);
        }
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

impl ToSqlText for JsonbText<'_> {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _format_options: &PgFormatOptions,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

/// Encodes every row of `batch` for the given result fields.
pub fn encode_batch(
    fields: &Arc<Vec<FieldInfo>>,
    batch: &RecordBatch,
) -> Vec<PgWireResult<DataRow>> {
    let mut encoder = DataRowEncoder::new(fields.clone());
    let schema = batch.schema();
    let mut rows = Vec::with_capacity(batch.num_rows());
    'rows: for row in 0..batch.num_rows() {
        for (col, array) in batch.columns().iter().enumerate() {
            let pg_field = &fields[col];
            let result = if array.is_null(row) {
                Encoder::encode_field(&mut encoder, &None::<i8>, pg_field)
            } else if *pg_field.datatype() == Type::JSONB {
                match array.as_string_opt::<i32>() {
                    Some(strings) => Encoder::encode_field(
                        &mut encoder,
                        &JsonbText(strings.value(row)),
                        pg_field,
                    ),
                    None => encode_value(&mut encoder, array, row, schema.field(col), pg_field),
                }
            } else if pg_field.format() == FieldFormat::Text {
                match postgres_text(array.as_ref(), row) {
                    Some(text) => Encoder::encode_field(&mut encoder, &text, pg_field),
                    None => encode_value(&mut encoder, array, row, schema.field(col), pg_field),
                }
            } else {
                encode_value(&mut encoder, array, row, schema.field(col), pg_field)
            };
            if let Err(e) = result {
                rows.push(Err(e));
                break 'rows;
            }
        }
        rows.push(Ok(encoder.take_row()));
    }
    rows
}

/// PostgreSQL's text form of a value, for the types whose form differs from
/// what the generic encoder writes; `None` for every other type.
pub(crate) fn postgres_text(array: &dyn Array, row: usize) -> Option<String> {
    match array.data_type() {
        DataType::Float64 => Some(float_text(array.as_primitive::<Float64Type>().value(row))),
        DataType::Float32 => Some(float_text(
            array.as_primitive::<Float32Type>().value(row) as f64
        )),
        DataType::Time64(unit @ (TimeUnit::Microsecond | TimeUnit::Nanosecond)) => {
            let us = if *unit == TimeUnit::Microsecond {
                array.as_primitive::<Time64MicrosecondType>().value(row)
            } else {
                array
                    .as_primitive::<datafusion::arrow::datatypes::Time64NanosecondType>()
                    .value(row)
                    / 1_000
            };
            let secs = us.div_euclid(1_000_000);
            let frac = us.rem_euclid(1_000_000);
            let t = NaiveTime::from_num_seconds_from_midnight_opt(secs as u32, 0)?;
            Some(format!("{}{}", t.format("%H:%M:%S"), fraction(frac)))
        }
        DataType::Timestamp(unit, tz) => {
            let us = match unit {
                TimeUnit::Second => array
                    .as_primitive::<TimestampSecondType>()
                    .value(row)
                    .checked_mul(1_000_000)?,
                TimeUnit::Millisecond => array
                    .as_primitive::<TimestampMillisecondType>()
                    .value(row)
                    .checked_mul(1_000)?,
                TimeUnit::Microsecond => {
                    array.as_primitive::<TimestampMicrosecondType>().value(row)
                }
                TimeUnit::Nanosecond => {
                    array.as_primitive::<TimestampNanosecondType>().value(row) / 1_000
                }
            };
            let dt = DateTime::from_timestamp_micros(us)?;
            let frac = us.rem_euclid(1_000_000);
            let base = format!("{}{}", dt.format("%Y-%m-%d %H:%M:%S"), fraction(frac));
            // Time zones other than UTC are shown in UTC.
            Some(if tz.is_some() {
                format!("{base}+00")
            } else {
                base
            })
        }
        DataType::Struct(_) => Some(composite_text(array.as_struct(), row)),
        _ => None,
    }
}

/// A struct as PostgreSQL writes a composite value: `(a,b,)`, a NULL field
/// empty, a field quoted when it is empty or holds `,()"\` or spaces.
fn composite_text(array: &datafusion::arrow::array::StructArray, row: usize) -> String {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = String::from("(");
    for (i, child) in array.columns().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if child.is_null(row) {
            continue;
        }
        let text = postgres_text(child.as_ref(), row).unwrap_or_else(|| {
            ArrayFormatter::try_new(child.as_ref(), &FormatOptions::default())
                .map(|f| f.value(row).to_string())
                .unwrap_or_default()
        });
        let quote = text.is_empty()
            || text
                .chars()
                .any(|c| matches!(c, ',' | '(' | ')' | '"' | '\\') || c.is_whitespace());
        if quote {
            out.push('"');
            for c in text.chars() {
                if c == '"' || c == '\\' {
                    out.push(c);
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(&text);
        }
    }
    out.push(')');
    out
}

/// `.123` for 123000 microseconds; empty for zero.
fn fraction(micros: i64) -> String {
    if micros == 0 {
        return String::new();
    }
    let s = format!(".{micros:06}");
    s.trim_end_matches('0').to_string()
}

/// A float in PostgreSQL's shortest round-trip text form.
pub fn float_text(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let abs = v.abs();
    if abs != 0.0 && !(1e-4..1e15).contains(&abs) {
        // PostgreSQL switches to exponent form outside this range: 1e+20, 1.5e-05.
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_postgres() {
        assert_eq!(float_text(2.0), "2");
        assert_eq!(float_text(1.5), "1.5");
        assert_eq!(float_text(-0.25), "-0.25");
        assert_eq!(float_text(1e20), "1e+20");
        assert_eq!(float_text(1.5e-5), "1.5e-05");
        assert_eq!(float_text(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(float_text(f64::INFINITY), "Infinity");
    }

    #[test]
    fn fractions_drop_trailing_zeros() {
        assert_eq!(fraction(0), "");
        assert_eq!(fraction(120_000), ".12");
        assert_eq!(fraction(123_456), ".123456");
    }
}
