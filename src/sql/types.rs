//! The SQL types Millrace accepts in `CREATE TABLE`, and the Arrow type each
//! is stored as.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    CharacterLength, DataType as SqlType, ExactNumberInfo, TimezoneInfo,
};

use crate::error::{MillraceError, Result};

/// Precision and scale used for `numeric` without a declared precision.
pub const DEFAULT_NUMERIC: (u8, i8) = (38, 10);

/// Field metadata key recording the SQL type name a column was declared with
/// when Arrow cannot tell it apart (`jsonb` is stored as text).
pub const SQL_TYPE_KEY: &str = "millrace.sql_type";

/// Whether a text column was declared `varchar` or `varchar(n)`, which
/// PostgreSQL reports as `character varying`, not `text`.
pub fn is_varchar(field: &Field) -> bool {
    field
        .metadata()
        .get(SQL_TYPE_KEY)
        .is_some_and(|t| t == "varchar" || t.starts_with("varchar("))
}

/// The declared maximum length of a `varchar(n)` column.
pub fn varchar_length(field: &Field) -> Option<usize> {
    field
        .metadata()
        .get(SQL_TYPE_KEY)?
        .strip_prefix("varchar(")?
        .strip_suffix(')')?
        .parse()
        .ok()
}

/// The timezone of `timestamptz` values: stored as UTC instants.
pub const UTC: &str = "+00:00";

/// The Arrow type of `timestamptz`: microseconds, in UTC.
pub fn timestamptz() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC)))
}

/// Maps a declared SQL column type to its Arrow storage type, and an optional
/// SQL type name to remember in field metadata (`jsonb`, `varchar(50)`).
pub fn sql_to_arrow(ty: &SqlType) -> Result<(DataType, Option<String>)> {
    let arrow = match ty {
        SqlType::Boolean | SqlType::Bool => DataType::Boolean,
        SqlType::SmallInt(_) | SqlType::Int2(_) => DataType::Int16,
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => DataType::Int32,
        SqlType::BigInt(_) | SqlType::Int8(_) => DataType::Int64,
        SqlType::Real | SqlType::Float4 => DataType::Float32,
        SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 => DataType::Float64,
        SqlType::Float(info) => match info {
            ExactNumberInfo::Precision(p) | ExactNumberInfo::PrecisionAndScale(p, _)
                if *p <= 24 =>
            {
                DataType::Float32
            }
            _ => DataType::Float64,
        },
        SqlType::Numeric(info) | SqlType::Decimal(info) | SqlType::Dec(info) => {
            let (p, s) = match info {
                ExactNumberInfo::None => DEFAULT_NUMERIC,
                ExactNumberInfo::Precision(p) => (precision(*p)?, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => {
                    let p = precision(*p)?;
                    let s = i8::try_from(*s)
                        .ok()
                        .filter(|s| *s >= 0 && (*s as u8) <= p)
                        .ok_or_else(|| {
                            MillraceError::plan(format!(
                                "NUMERIC scale {s} must be between 0 and precision {p}"
                            ))
                        })?;
                    (p, s)
                }
            };
            DataType::Decimal128(p, s)
        }
        SqlType::Varchar(Some(CharacterLength::IntegerLength { length, .. }))
        | SqlType::CharVarying(Some(CharacterLength::IntegerLength { length, .. }))
        | SqlType::CharacterVarying(Some(CharacterLength::IntegerLength { length, .. })) => {
            if *length == 0 || *length > 10_485_760 {
                return Err(MillraceError::plan(format!(
                    "length for type varchar must be between 1 and 10485760, got {length}"
                )));
            }
            return Ok((DataType::Utf8, Some(format!("varchar({length})"))));
        }
        SqlType::Varchar(_) | SqlType::CharVarying(_) | SqlType::CharacterVarying(_) => {
            return Ok((DataType::Utf8, Some("varchar".into())));
        }
        SqlType::Text | SqlType::String(_) | SqlType::Char(_) | SqlType::Character(_) => {
            DataType::Utf8
        }
        SqlType::Date => DataType::Date32,
        SqlType::Time(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            DataType::Time64(TimeUnit::Microsecond)
        }
        SqlType::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        SqlType::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => timestamptz(),
        SqlType::TimestampNtz(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        SqlType::Interval { .. } => DataType::Interval(IntervalUnit::MonthDayNano),
        SqlType::Bytea => DataType::Binary,
        SqlType::Struct(fields, _) => {
            let mut arrow_fields = Vec::with_capacity(fields.len());
            for (i, f) in fields.iter().enumerate() {
                let name = f
                    .field_name
                    .as_ref()
                    .map(|n| {
                        if n.quote_style.is_some() {
                            n.value.clone()
                        } else {
                            n.value.to_ascii_lowercase()
                        }
                    })
                    .unwrap_or_else(|| format!("f{}", i + 1));
                let (ty, _) = sql_to_arrow(&f.field_type)?;
                arrow_fields.push(Field::new(name, ty, true));
            }
            DataType::Struct(arrow_fields.into())
        }
        SqlType::JSONB | SqlType::JSON => return Ok((DataType::Utf8, Some("jsonb".into()))),
        SqlType::Custom(name, _) => {
            let n = name.to_string().to_ascii_lowercase();
            match n.as_str() {
                "timestamptz" => timestamptz(),
                "int2" => DataType::Int16,
                "int4" => DataType::Int32,
                "float4" => DataType::Float32,
                "float8" => DataType::Float64,
                "bpchar" => DataType::Utf8,
                "jsonb" | "json" => return Ok((DataType::Utf8, Some("jsonb".into()))),
                _ => return Err(unsupported(ty)),
            }
        }
        other => return Err(unsupported(other)),
    };
    Ok((arrow, None))
}

fn precision(p: u64) -> Result<u8> {
    u8::try_from(p)
        .ok()
        .filter(|p| (1..=38).contains(p))
        .ok_or_else(|| {
            MillraceError::plan(format!("NUMERIC precision {p} must be between 1 and 38"))
        })
}

fn unsupported(ty: &SqlType) -> MillraceError {
    MillraceError::not_supported(format!("column type {ty}"))
}

/// The SQL name of an Arrow type, for `SHOW` output and error messages.
pub fn arrow_to_sql_name(ty: &DataType, sql_type: Option<&str>) -> String {
    if let Some(name) = sql_type {
        return name.to_string();
    }
    match ty {
        DataType::Boolean => "boolean".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Date32 => "date".into(),
        DataType::Time64(_) => "time".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Interval(_) => "interval".into(),
        DataType::Binary => "bytea".into(),
        DataType::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), arrow_to_sql_name(f.data_type(), None)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}
