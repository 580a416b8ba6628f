//! The `datagen` connector: rows made up from per-column generators, at a
//! configured rate, repeatable from a seed.
//!
//! ```sql
//! CREATE SOURCE clicks (id bigint, page varchar, ts timestamptz) WITH (
//!   connector = 'datagen',
//!   datagen.rows.per.second = '100',      -- 0: as fast as possible
//!   datagen.rows.limit = '100000',        -- stop after this many rows
//!   datagen.seed = '7',
//!   fields.id.kind = 'sequence', fields.id.start = '1',
//!   fields.page.values = 'home,cart,checkout',
//!   fields.ts.kind = 'now'
//! );
//! ```
//!
//! Per column `fields.<col>.`: `kind` = `sequence` (integers and text:
//! `start`, `end`; the source ends when a sequence does), `random` (numbers:
//! `min`, `max`; text: `length`, or `values` = comma-separated choices;
//! timestamps: `max_past` seconds before now), `now` (timestamps: wall clock)
//! or `clock` (timestamps: event time from `start`, advancing `step.ms` per
//! row). `seed` overrides the source seed for one column.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::options::{invalid, Options};
use super::{BatchGenerator, SourceSpec};
use crate::error::{MillraceError, Result};
use crate::stream::change::ChangeBatch;

/// Largest batch the generator hands over at once.
const MAX_BATCH_ROWS: usize = 8192;

enum ColumnGen {
    IntSequence {
        next: i64,
        end: Option<i64>,
    },
    IntRandom {
        min: i64,
        max: i64,
        rng: StdRng,
    },
    FloatRandom {
        min: f64,
        max: f64,
        rng: StdRng,
    },
    DecimalRandom {
        min: i128,
        max: i128,
        rng: StdRng,
        precision: u8,
        scale: i8,
    },
    Bool {
        rng: StdRng,
    },
    TextRandom {
        length: usize,
        rng: StdRng,
    },
    TextValues {
        values: Vec<String>,
        rng: StdRng,
    },
    TextSequence {
        next: i64,
        end: Option<i64>,
    },
    TimeNow,
    TimeClock {
        next_us: i64,
        step_us: i64,
    },
    TimeRandomPast {
        max_past_us: i64,
        rng: StdRng,
    },
}

struct Datagen {
    schema: SchemaRef,
    columns: Vec<ColumnGen>,
    rows_per_second: Option<f64>,
    remaining: Option<u64>,
    done: bool,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn column_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the column name, mixed with the source seed: columns get
    // independent but repeatable streams.
    let mut h: u64 = 0xcbf29ce484222325 ^ seed;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn parse_timestamp_micros(text: &str, key: &str) -> Result<i64> {
    let text = text.trim();
    let parsed = chrono::DateTime::parse_from_rfc3339(text)
        .map(|d| d.timestamp_micros())
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
                .map(|d| d.and_utc().timestamp_micros())
        });
    parsed.map_err(|_| {
        invalid(format!(
            "invalid timestamp '{text}' for option {key} (use 'YYYY-MM-DD HH:MM:SS' or RFC 3339)"
        ))
    })
}

fn column_gen(opts: &Options, name: &str, ty: &DataType, seed: u64) -> Result<ColumnGen> {
    let key = |k: &str| format!("fields.{name}.{k}");
    let seed = opts.parse_or(&key("seed"), column_seed(seed, name))?;
    let rng = StdRng::seed_from_u64(seed);
    let kind = opts.get(&key("kind")).map(|k| k.to_ascii_lowercase());
    let bad_kind = |k: &str| {
        invalid(format!(
            "datagen: kind '{k}' does not apply to column {name} of type {ty}"
        ))
    };
    Ok(match ty {
        DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            match kind.as_deref().unwrap_or("random") {
                "sequence" => ColumnGen::IntSequence {
                    next: opts.parse_or(&key("start"), 1i64)?,
                    end: opts.parse(&key("end"))?,
                },
                "random" => {
                    let max_default = match ty {
                        DataType::Int16 => i16::MAX as i64,
                        DataType::Int32 => i32::MAX as i64,
                        _ => i64::MAX,
                    };
                    let min = opts.parse_or(&key("min"), 0i64)?;
                    let max = opts.parse_or(&key("max"), max_default)?;
                    if min < -max_default - 1 || max > max_default {
                        return Err(invalid(format!(
                            "datagen: {min}..{max} does not fit column {name} of type {ty}"
                        )));
                    }
                    if min > max {
                        return Err(invalid(format!("datagen: {} > {}", key("min"), key("max"))));
                    }
                    ColumnGen::IntRandom { min, max, rng }
                }
                k => return Err(bad_kind(k)),
            }
        }
        DataType::Float32 | DataType::Float64 => match kind.as_deref().unwrap_or("random") {
            "random" => {
                let min = opts.parse_or(&key("min"), 0f64)?;
                let max = opts.parse_or(&key("max"), 1f64)?;
                if !min.is_finite() || !max.is_finite() {
                    return Err(invalid(format!(
                        "datagen: {} and {} must be finite",
                        key("min"),
                        key("max")
                    )));
                }
                if min > max {
                    return Err(invalid(format!("datagen: {} > {}", key("min"), key("max"))));
                }
                ColumnGen::FloatRandom { min, max, rng }
            }
            k => return Err(bad_kind(k)),
        },
        DataType::Decimal128(p, s) => match kind.as_deref().unwrap_or("random") {
            "random" => {
                let scale = 10f64.powi(*s as i32);
                let min_value: f64 = opts.parse_or(&key("min"), 0f64)?;
                let max_value: f64 = opts.parse_or(&key("max"), 100f64)?;
                if !min_value.is_finite() || !max_value.is_finite() {
                    return Err(invalid(format!(
                        "datagen: {} and {} must be finite",
                        key("min"),
                        key("max")
                    )));
                }
                let min = (min_value * scale).round() as i128;
                let max = (max_value * scale).round() as i128;
                if min > max {
                    return Err(invalid(format!("datagen: {} > {}", key("min"), key("max"))));
                }
                ColumnGen::DecimalRandom {
                    min,
                    max,
                    rng,
                    precision: *p,
                    scale: *s,
                }
            }
            k => return Err(bad_kind(k)),
        },
        DataType::Boolean => match kind.as_deref().unwrap_or("random") {
            "random" => ColumnGen::Bool { rng },
            k => return Err(bad_kind(k)),
        },
        DataType::Utf8 => match kind.as_deref().unwrap_or("random") {
            "sequence" => ColumnGen::TextSequence {
                next: opts.parse_or(&key("start"), 1i64)?,
                end: opts.parse(&key("end"))?,
            },
            "random" => match opts.get(&key("values")) {
                Some(v) => {
                    let values: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                    if values.iter().all(|s| s.is_empty()) {
                        return Err(invalid(format!("datagen: {} is empty", key("values"))));
                    }
                    ColumnGen::TextValues { values, rng }
                }
                None => {
                    let length = opts.parse_or(&key("length"), 10usize)?;
                    if length > 1 << 20 {
                        return Err(invalid(format!("datagen: {} is over 1 MiB", key("length"))));
                    }
                    ColumnGen::TextRandom { length, rng }
                }
            },
            k => return Err(bad_kind(k)),
        },
        DataType::Timestamp(TimeUnit::Microsecond, _) => match kind.as_deref().unwrap_or("now") {
            "now" => ColumnGen::TimeNow,
            "clock" => {
                let start = match opts.get(&key("start")) {
                    Some(t) => parse_timestamp_micros(t, &key("start"))?,
                    None => now_micros(),
                };
                let step_ms: f64 = opts.parse_or(&key("step.ms"), 1000.0)?;
                if !step_ms.is_finite() {
                    return Err(invalid(format!(
                        "datagen: {} must be finite",
                        key("step.ms")
                    )));
                }
                ColumnGen::TimeClock {
                    next_us: start,
                    step_us: (step_ms * 1000.0) as i64,
                }
            }
            "random" => {
                let past: f64 = opts.parse_or(&key("max_past"), 3600.0)?;
                if !(0.0..=1e10).contains(&past) {
                    return Err(invalid(format!(
                        "datagen: {} must be between 0 and 1e10 seconds",
                        key("max_past")
                    )));
                }
                ColumnGen::TimeRandomPast {
                    max_past_us: (past * 1e6) as i64,
                    rng,
                }
            }
            k => return Err(bad_kind(k)),
        },
        other => {
            return Err(MillraceError::not_supported(format!(
                "datagen column {name} of type {other}"
            )))
        }
    })
}

/// Builds a `datagen` source.
pub fn build(
    declared: Option<SchemaRef>,
    options: &BTreeMap<String, String>,
) -> Result<SourceSpec> {
    let schema = declared
        .filter(|s| !s.fields().is_empty())
        .ok_or_else(|| invalid("a datagen source needs its columns declared"))?;
    // Validate every option now, so CREATE SOURCE fails rather than the thread.
    {
        let opts = Options::new(options);
        make(&schema, &opts)?;
        opts.reject_unknown()?;
    }
    let options = options.clone();
    let schema_for_gen = schema.clone();
    Ok(SourceSpec {
        connector: "datagen".into(),
        schema,
        // One generator: sequences and clocks are ordered.
        append_only: true,
        keyed: false,
        make_generators: Box::new(move |_: &super::ReaderContext| {
            let opts = Options::new(&options);
            Ok(vec![
                Box::new(make(&schema_for_gen, &opts)?) as Box<dyn BatchGenerator>
            ])
        }),
    })
}

fn make(schema: &SchemaRef, opts: &Options) -> Result<Datagen> {
    let seed = opts.parse_or("datagen.seed", 0u64)?;
    let rps: f64 = opts.parse_or("datagen.rows.per.second", 10.0)?;
    if rps < 0.0 || rps.is_nan() {
        return Err(invalid(
            "datagen.rows.per.second must be 0 (unpaced) or positive",
        ));
    }
    let remaining = opts.parse::<u64>("datagen.rows.limit")?;
    let _ = opts.get("datagen.split.num");
    let columns = schema
        .fields()
        .iter()
        .map(|f| column_gen(opts, f.name(), f.data_type(), seed))
        .collect::<Result<Vec<_>>>()?;
    Ok(Datagen {
        schema: schema.clone(),
        columns,
        rows_per_second: (rps > 0.0).then_some(rps),
        remaining,
        done: false,
    })
}

fn random_text(rng: &mut StdRng, length: usize) -> String {
    (0..length)
        .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
        .collect()
}

impl Datagen {
    fn batch_rows(&self) -> usize {
        let paced = match self.rows_per_second {
            // About twenty batches a second keeps a paced stream smooth.
            Some(rps) => ((rps / 20.0).ceil() as usize).clamp(1, MAX_BATCH_ROWS),
            None => MAX_BATCH_ROWS,
        };
        match self.remaining {
            Some(r) => paced.min(r as usize),
            None => paced,
        }
    }

    /// Rows left before a sequence column passes its end.
    fn sequence_room(&self) -> Option<usize> {
        self.columns
            .iter()
            .filter_map(|c| match c {
                ColumnGen::IntSequence {
                    next,
                    end: Some(end),
                }
                | ColumnGen::TextSequence {
                    next,
                    end: Some(end),
                } => Some(end.saturating_sub(*next).saturating_add(1).max(0) as usize),
                _ => None,
            })
            .min()
    }
}

impl BatchGenerator for Datagen {
    fn next_batch(&mut self) -> Result<Option<ChangeBatch>> {
        if self.done {
            return Ok(None);
        }
        let mut n = self.batch_rows();
        if let Some(room) = self.sequence_room() {
            n = n.min(room);
        }
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        let now = now_micros();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (gen, field) in self.columns.iter_mut().zip(self.schema.fields()) {
            let ty = field.data_type();
            let array: ArrayRef = match gen {
                ColumnGen::IntSequence { next, .. } => {
                    let start = *next;
                    *next = next.saturating_add(n as i64);
                    Arc::new(Int64Array::from_iter_values(
                        (0..n as i64).map(|i| start.saturating_add(i)),
                    ))
                }
                ColumnGen::IntRandom { min, max, rng } => Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|_| rng.random_range(*min..=*max)),
                )),
                ColumnGen::FloatRandom { min, max, rng } => {
                    Arc::new(Float64Array::from_iter_values((0..n).map(|_| {
                        if min == max {
                            *min
                        } else {
                            rng.random_range(*min..*max)
                        }
                    })))
                }
                ColumnGen::DecimalRandom {
                    min,
                    max,
                    rng,
                    precision,
                    scale,
                } => Arc::new(
                    Decimal128Array::from_iter_values(
                        (0..n).map(|_| rng.random_range(*min..=*max)),
                    )
                    .with_precision_and_scale(*precision, *scale)?,
                ),
                ColumnGen::Bool { rng } => Arc::new(BooleanArray::from_iter(
                    (0..n).map(|_| Some(rng.random_bool(0.5))),
                )),
                ColumnGen::TextRandom { length, rng } => {
                    let mut b = StringBuilder::with_capacity(n, n * *length);
                    for _ in 0..n {
                        b.append_value(random_text(rng, *length));
                    }
                    Arc::new(b.finish())
                }
                ColumnGen::TextValues { values, rng } => {
                    let mut b = StringBuilder::with_capacity(n, n * 8);
                    for _ in 0..n {
                        b.append_value(&values[rng.random_range(0..values.len())]);
                    }
                    Arc::new(b.finish())
                }
                ColumnGen::TextSequence { next, .. } => {
                    let mut b = StringBuilder::with_capacity(n, n * 8);
                    for i in 0..n as i64 {
                        b.append_value(next.saturating_add(i).to_string());
                    }
                    *next = next.saturating_add(n as i64);
                    Arc::new(b.finish())
                }
                ColumnGen::TimeNow => Arc::new(TimestampMicrosecondArray::from_value(now, n)),
                ColumnGen::TimeClock { next_us, step_us } => {
                    let start = *next_us;
                    *next_us = start.saturating_add(step_us.saturating_mul(n as i64));
                    let step = *step_us;
                    Arc::new(TimestampMicrosecondArray::from_iter_values(
                        (0..n as i64).map(|i| start.saturating_add(i.saturating_mul(step))),
                    ))
                }
                ColumnGen::TimeRandomPast { max_past_us, rng } => {
                    Arc::new(TimestampMicrosecondArray::from_iter_values(
                        (0..n).map(|_| now - rng.random_range(0..=*max_past_us)),
                    ))
                }
            };
            let array = if array.data_type() == ty {
                array
            } else {
                cast(&array, ty)?
            };
            arrays.push(array);
        }
        if let Some(r) = self.remaining.as_mut() {
            *r -= n as u64;
            if *r == 0 {
                self.done = true;
            }
        }
        Ok(Some(ChangeBatch::with_uniform_weight(
            RecordBatch::try_new(self.schema.clone(), arrays)?,
            1,
        )))
    }

    fn in_lockstep(&self) -> bool {
        true
    }

    fn rows_per_second(&self) -> Option<f64> {
        self.rows_per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};

    fn spec(opts: &[(&str, &str)]) -> SourceSpec {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let map: BTreeMap<String, String> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        build(Some(schema), &map).unwrap()
    }

    fn all_rows(spec: &SourceSpec) -> Vec<String> {
        let mut g = (spec.make_generators)(&Default::default())
            .unwrap()
            .remove(0);
        let mut out = Vec::new();
        while let Some(b) = g.next_batch().unwrap() {
            out.extend(crate::stream::pretty::batch_lines(b.data()).unwrap());
        }
        out
    }

    #[test]
    fn same_seed_same_rows_and_limits_hold() {
        let opts = [
            ("connector", "datagen"),
            ("datagen.rows.per.second", "0"),
            ("datagen.rows.limit", "100"),
            ("datagen.seed", "3"),
            ("fields.id.kind", "sequence"),
            ("fields.v.min", "5"),
            ("fields.v.max", "6"),
            ("fields.s.values", "a,b"),
        ];
        let a = all_rows(&spec(&opts));
        let b = all_rows(&spec(&opts));
        assert_eq!(a.len(), 100);
        assert_eq!(a, b);
        assert!(a.iter().all(|l| l.contains(" 5 ") || l.contains(" 6 ")));
    }

    #[test]
    fn sequence_end_stops_the_source() {
        let a = all_rows(&spec(&[
            ("connector", "datagen"),
            ("datagen.rows.per.second", "0"),
            ("fields.id.kind", "sequence"),
            ("fields.id.start", "10"),
            ("fields.id.end", "14"),
        ]));
        assert_eq!(a.len(), 5);
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let map: BTreeMap<String, String> =
            [("connector", "datagen"), ("fields.id.kind", "sideways")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let err = build(Some(schema.clone()), &map).err().unwrap().to_string();
        assert!(err.contains("sideways"), "{err}");
        let map: BTreeMap<String, String> =
            [("connector", "datagen"), ("datagen.rows.per.secnd", "5")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let err = build(Some(schema), &map).err().unwrap().to_string();
        assert!(err.contains("datagen.rows.per.secnd"), "{err}");
    }
}
