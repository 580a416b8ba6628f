//! Change batches into keyed JSON messages, per sink format.
//!
//! Weights: in `PLAIN`, a row of weight +n is n messages (a negative
//! weight is refused: such relations cannot have a plain sink). In
//! `UPSERT`, per key, a row with positive weight is the key's new value,
//! and a key with only a retraction gets a tombstone (a null value). In
//! `DEBEZIUM`, a retraction and an insertion of the same key become one
//! `u` event; other retractions are `d` and other insertions `c`, repeated
//! |weight| times.

use std::collections::{HashMap, HashSet};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};

use super::SinkFormat;
use crate::error::{MillraceError, Result};
use crate::stream::change::ChangeBatch;

/// One message: key and value (`None` value: a tombstone).
pub type Message = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A batch's rows as JSON objects, in one buffer.
struct JsonRows {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl JsonRows {
    fn encode(batch: &RecordBatch) -> Result<Self> {
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(Vec::new());
        writer.write(batch)?;
        writer.finish()?;
        let buf = writer.into_inner();
        // JSON escapes newlines inside strings: every newline ends a row.
        let ends: Vec<usize> = buf
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i)
            .collect();
        if ends.len() != batch.num_rows() {
            return Err(MillraceError::execution("JSON encoding lost rows"));
        }
        Ok(Self { buf, ends })
    }

    fn row(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        &self.buf[start..self.ends[i]]
    }
}

/// Encodes `change` as messages in `format`, keyed by `key_columns` (none:
/// no key).
pub fn encode_change(
    change: &ChangeBatch,
    format: SinkFormat,
    key_columns: &[usize],
    now_ms: i64,
) -> Result<Vec<Message>> {
    let data = change.data();
    let weights = change.weights();
    let values = JsonRows::encode(data)?;
    let keys = if key_columns.is_empty() {
        None
    } else {
        Some(JsonRows::encode(&data.project(key_columns)?)?)
    };
    let key_of = |i: usize| keys.as_ref().map(|k| k.row(i).to_vec());
    let mut out = Vec::new();
    match format {
        SinkFormat::Plain => {
            for i in 0..data.num_rows() {
                let w = weights.value(i);
                if w < 0 {
                    return Err(MillraceError::execution(
                        "a PLAIN sink received a retraction",
                    ));
                }
                for _ in 0..w {
                    out.push((key_of(i), Some(values.row(i).to_vec())));
                }
            }
        }
        SinkFormat::Upsert => {
            let keys = keys
                .as_ref()
                .ok_or_else(|| MillraceError::execution("an UPSERT sink without a key"))?;
            let inserted: HashSet<&[u8]> = (0..data.num_rows())
                .filter(|&i| weights.value(i) > 0)
                .map(|i| keys.row(i))
                .collect();
            for i in 0..data.num_rows() {
                if weights.value(i) < 0 && !inserted.contains(keys.row(i)) {
                    out.push((Some(keys.row(i).to_vec()), None));
                }
            }
            for i in 0..data.num_rows() {
                if weights.value(i) > 0 {
                    out.push((Some(keys.row(i).to_vec()), Some(values.row(i).to_vec())));
                }
            }
        }
        SinkFormat::Debezium => {
            let event = |before: Option<&[u8]>, after: Option<&[u8]>, op: &str| {
                let mut v = Vec::with_capacity(64);
                v.extend_from_slice(b"{\"before\":");
                v.extend_from_slice(before.unwrap_or(b"null"));
                v.extend_from_slice(b",\"after\":");
                v.extend_from_slice(after.unwrap_or(b"null"));
                v.extend_from_slice(format!(",\"op\":\"{op}\",\"ts_ms\":{now_ms}}}").as_bytes());
                v
            };
            // Retractions by key, to pair with insertions into updates.
            let mut retracted: HashMap<&[u8], Vec<usize>> = HashMap::new();
            if let Some(keys) = &keys {
                for i in 0..data.num_rows() {
                    if weights.value(i) < 0 {
                        for _ in 0..-weights.value(i) {
                            retracted.entry(keys.row(i)).or_default().push(i);
                        }
                    }
                }
            }
            let mut paired: Vec<usize> = Vec::new();
            for i in 0..data.num_rows() {
                let w = weights.value(i);
                for _ in 0..w.max(0) {
                    let before = keys
                        .as_ref()
                        .and_then(|k| retracted.get_mut(k.row(i)))
                        .and_then(|v| v.pop());
                    match before {
                        Some(b) => {
                            paired.push(b);
                            out.push((
                                key_of(i),
                                Some(event(Some(values.row(b)), Some(values.row(i)), "u")),
                            ));
                        }
                        None => out.push((key_of(i), Some(event(None, Some(values.row(i)), "c")))),
                    }
                }
            }
            // Unpaired retractions are deletes.
            let mut unpaired: Vec<usize> = Vec::new();
            for i in 0..data.num_rows() {
                let w = weights.value(i);
                for _ in 0..(-w).max(0) {
                    unpaired.push(i);
                }
            }
            for b in paired {
                if let Some(pos) = unpaired.iter().position(|&u| u == b) {
                    unpaired.swap_remove(pos);
                }
            }
            unpaired.sort_unstable();
            let mut deletes: Vec<Message> = unpaired
                .into_iter()
                .map(|i| (key_of(i), Some(event(Some(values.row(i)), None, "d"))))
                .collect();
            // Deletes go first, as a key's delete must precede its re-insert.
            deletes.append(&mut out);
            out = deletes;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::pretty::from_pretty;

    fn text(m: &[Message]) -> Vec<String> {
        m.iter()
            .map(|(k, v)| {
                format!(
                    "{} => {}",
                    k.as_ref()
                        .map_or("-".into(), |k| String::from_utf8_lossy(k).to_string()),
                    v.as_ref()
                        .map_or("null".into(), |v| String::from_utf8_lossy(v).to_string())
                )
            })
            .collect()
    }

    #[test]
    fn upsert_pairs_and_tombstones() {
        let change = from_pretty(
            "I T
             1 a -1
             1 b +1
             2 c -1
             3 d +1",
        )
        .unwrap();
        let m = encode_change(&change, SinkFormat::Upsert, &[0], 0).unwrap();
        assert_eq!(
            text(&m),
            vec![
                r#"{"c0":2} => null"#,
                r#"{"c0":1} => {"c0":1,"c1":"b"}"#,
                r#"{"c0":3} => {"c0":3,"c1":"d"}"#,
            ]
        );
    }

    #[test]
    fn debezium_updates_deletes_and_creates() {
        let change = from_pretty(
            "I T
             1 a -1
             1 b +1
             2 c -1
             3 . +2",
        )
        .unwrap();
        let m = encode_change(&change, SinkFormat::Debezium, &[0], 7).unwrap();
        assert_eq!(
            text(&m),
            vec![
                r#"{"c0":2} => {"before":{"c0":2,"c1":"c"},"after":null,"op":"d","ts_ms":7}"#,
                r#"{"c0":1} => {"before":{"c0":1,"c1":"a"},"after":{"c0":1,"c1":"b"},"op":"u","ts_ms":7}"#,
                r#"{"c0":3} => {"before":null,"after":{"c0":3,"c1":null},"op":"c","ts_ms":7}"#,
                r#"{"c0":3} => {"before":null,"after":{"c0":3,"c1":null},"op":"c","ts_ms":7}"#,
            ]
        );
        let plain = from_pretty("I\n1 +2").unwrap();
        assert_eq!(
            encode_change(&plain, SinkFormat::Plain, &[], 0)
                .unwrap()
                .len(),
            2
        );
        let bad = from_pretty("I\n1 -1").unwrap();
        assert!(encode_change(&bad, SinkFormat::Plain, &[], 0).is_err());
    }
}
