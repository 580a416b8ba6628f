//! Decoding record payloads straight into Arrow columns.
//!
//! A poll's worth of payloads is decoded in one pass by arrow-json's or
//! arrow-csv's decoder, which read only the declared columns. One bad
//! payload must not cost the good ones: when the batch decode fails, the
//! batch is decoded again one payload at a time, which finds the bad ones
//! and their reasons. That slow path runs only for batches that hold a bad
//! record.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{MillraceError, Result};

/// A payload encoding.
#[derive(Debug, Clone)]
pub enum Encoding {
    /// One JSON object per record.
    Json,
    /// One CSV line per record, fields in column order.
    Csv {
        /// The field delimiter.
        delimiter: u8,
    },
}

/// The outcome of decoding a batch of payloads.
pub struct Decoded {
    /// One row per good payload, in order.
    pub rows: RecordBatch,
    /// For each row, the index of its payload.
    pub good: Vec<u32>,
    /// Payloads that failed: index and reason.
    pub bad: Vec<(usize, String)>,
}

/// Decodes payloads of one encoding into rows of one schema.
pub struct PayloadDecoder {
    schema: SchemaRef,
    encoding: Encoding,
}

enum Inner {
    Json(datafusion::arrow::json::reader::Decoder),
    Csv(Box<datafusion::arrow::csv::reader::Decoder>),
}

impl Inner {
    fn decode(&mut self, buf: &[u8]) -> std::result::Result<usize, String> {
        match self {
            Inner::Json(d) => d.decode(buf),
            Inner::Csv(d) => d.decode(buf),
        }
        .map_err(|e| e.to_string())
    }

    fn buffered(&self) -> usize {
        match self {
            Inner::Json(d) => d.len(),
            // The CSV decoder counts rows only on flush; every payload is
            // checked to hold exactly one line before it gets here.
            Inner::Csv(_) => 0,
        }
    }

    fn partial(&self) -> bool {
        match self {
            Inner::Json(d) => d.has_partial_record(),
            Inner::Csv(_) => false,
        }
    }

    fn flush(&mut self) -> std::result::Result<Option<RecordBatch>, String> {
        match self {
            Inner::Json(d) => d.flush(),
            Inner::Csv(d) => d.flush(),
        }
        .map_err(|e| e.to_string())
    }
}

impl PayloadDecoder {
    /// A decoder for `schema`; fails if a column's type cannot be decoded
    /// from this encoding.
    pub fn try_new(schema: SchemaRef, encoding: Encoding) -> Result<Self> {
        let decoder = Self { schema, encoding };
        decoder.inner(1).map_err(|e| {
            MillraceError::not_supported(format!("a column type in this encoding: {e}"))
        })?;
        Ok(decoder)
    }

    /// The rows' schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn inner(&self, capacity: usize) -> std::result::Result<Inner, String> {
        use datafusion::arrow::{csv, json};
        Ok(match &self.encoding {
            Encoding::Json => Inner::Json(
                json::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(capacity.max(1))
                    .with_coerce_primitive(true)
                    .with_strict_mode(false)
                    .build_decoder()
                    .map_err(|e| e.to_string())?,
            ),
            Encoding::Csv { delimiter } => Inner::Csv(Box::new(
                csv::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(capacity.max(1))
                    .with_header(false)
                    .with_delimiter(*delimiter)
                    .build_decoder(),
            )),
        })
    }

    /// Decodes `payloads`, one row each.
    pub fn decode(&self, payloads: &[&[u8]]) -> Result<Decoded> {
        if payloads.is_empty() {
            return Ok(Decoded {
                rows: RecordBatch::new_empty(self.schema.clone()),
                good: vec![],
                bad: vec![],
            });
        }
        if let Ok(rows) = self.decode_all(payloads, false) {
            if rows.num_rows() == payloads.len() {
                return Ok(Decoded {
                    rows,
                    good: (0..payloads.len() as u32).collect(),
                    bad: vec![],
                });
            }
        }
        // Some payload is bad: find which, one at a time.
        let mut parts = Vec::new();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            match self.decode_all(std::slice::from_ref(payload), true) {
                Ok(rows) if rows.num_rows() == 1 => {
                    parts.push(rows);
                    good.push(i as u32);
                }
                Ok(rows) => bad.push((i, format!("{} rows in one record", rows.num_rows()))),
                Err(reason) => bad.push((i, reason)),
            }
        }
        let rows = concat_batches(&self.schema, &parts)?;
        Ok(Decoded { rows, good, bad })
    }

    /// Decodes every payload into one batch, or fails on the first problem.
    /// `check_utf8` checks each payload's encoding first, for a precise
    /// reason; without it the decoders still refuse invalid UTF-8 (arrow's
    /// JSON and CSV decoders validate their whole buffer), only with a
    /// vaguer message, so the whole-poll attempt skips the extra pass.
    fn decode_all(
        &self,
        payloads: &[&[u8]],
        check_utf8: bool,
    ) -> std::result::Result<RecordBatch, String> {
        let mut inner = self.inner(payloads.len())?;
        for payload in payloads {
            check_framing(payload, &self.encoding, check_utf8)?;
            let before = inner.buffered();
            let used = inner.decode(payload)?;
            if used != payload.len() {
                return Err("more than one record in the payload".into());
            }
            if let Inner::Csv(_) = inner {
                if !payload.ends_with(b"\n") {
                    inner.decode(b"\n")?;
                }
            } else if inner.partial() {
                return Err("truncated JSON".into());
            } else if inner.buffered() != before + 1 {
                return Err("not one JSON value".into());
            }
        }
        Ok(inner
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }
}

/// Refuses payloads that cannot hold exactly one record.
fn check_framing(
    payload: &[u8],
    encoding: &Encoding,
    check_utf8: bool,
) -> std::result::Result<(), String> {
    let text = payload.trim_ascii();
    if text.is_empty() {
        return Err("empty payload".into());
    }
    if check_utf8 && std::str::from_utf8(payload).is_err() {
        return Err("payload is not valid UTF-8".into());
    }
    match encoding {
        Encoding::Json if !text.starts_with(b"{") => Err("payload is not a JSON object".into()),
        Encoding::Csv { .. } if text.contains(&b'\n') => {
            Err("more than one CSV line in the payload".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ]))
    }

    #[test]
    fn json_good_and_bad_payloads_are_told_apart() {
        let d = PayloadDecoder::try_new(schema(), Encoding::Json).unwrap();
        let payloads: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": "a", "ts": "2024-01-01T00:00:00Z", "extra": [1]}"#,
            br#"{"id": "2", "name": 5}"#,
            b"{not json",
            b"",
            br#"{"id": "x"}"#,
            b"\xff\xfe",
            br#"{"id": 3}{"id": 4}"#,
            b"[1, 2]",
            br#"{"id": 5, "name": null}"#,
        ];
        let out = d.decode(&payloads).unwrap();
        assert_eq!(out.good, vec![0, 1, 8]);
        let bad: Vec<usize> = out.bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![2, 3, 4, 5, 6, 7]);
        let lines = crate::stream::pretty::batch_lines(&out.rows).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains('5'), "{lines:?}");
    }

    #[test]
    fn csv_lines_decode_by_position() {
        let d = PayloadDecoder::try_new(schema(), Encoding::Csv { delimiter: b',' }).unwrap();
        let payloads: Vec<&[u8]> = vec![
            b"1,a,2024-01-01T00:00:00Z",
            b"2,,\n",
            b"x,b,",
            b"3,c,\n4,d,",
        ];
        let out = d.decode(&payloads).unwrap();
        assert_eq!(out.good, vec![0, 1]);
        assert_eq!(out.bad.len(), 2);
    }
}
