//! The `nexmark` connector: the standard Nexmark streams (person, auction,
//! bid) from the `nexmark` crate, deterministic for given options.
//!
//! ```sql
//! CREATE SOURCE bid WITH (
//!   connector = 'nexmark',
//!   nexmark.table.type = 'bid',          -- bid | auction | person
//!   nexmark.event.num = '10000000',      -- events of all types to walk through
//!   nexmark.max.chunk.size = '8192',     -- rows per batch
//!   nexmark.min.event.gap.in.ns = '0'    -- pacing; 0 = as fast as possible
//! );
//! ```
//!
//! The columns may be omitted (the table type implies them) or declared as a
//! subset of them, in any order; only declared columns are built.
//! `nexmark.event.num` counts events of all three types, as in RisingWave:
//! with the default mix, 92% of them are bids. Event times start at
//! `nexmark.base.time` (milliseconds since the epoch; fixed by default so that
//! runs repeat exactly).

mod bid;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use nexmark::config::NexmarkConfig;
use nexmark::event::{Event, EventType};
use nexmark::EventGenerator;

use super::options::{invalid, Options};
use super::{BatchGenerator, SourceSpec};
use crate::error::Result;
use crate::stream::change::ChangeBatch;

/// Default event-time origin: 2023-11-14 22:13:20 UTC.
pub const DEFAULT_BASE_TIME_MS: u64 = 1_700_000_000_000;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// The full schema of a Nexmark table type.
pub fn table_schema(kind: EventType) -> SchemaRef {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    let text = DataType::Utf8;
    let int = DataType::Int64;
    Arc::new(Schema::new(match kind {
        EventType::Person => vec![
            f("id", int.clone()),
            f("name", text.clone()),
            f("email_address", text.clone()),
            f("credit_card", text.clone()),
            f("city", text.clone()),
            f("state", text.clone()),
            f("date_time", ts()),
            f("extra", text),
        ],
        EventType::Auction => vec![
            f("id", int.clone()),
            f("item_name", text.clone()),
            f("description", text.clone()),
            f("initial_bid", int.clone()),
            f("reserve", int.clone()),
            f("date_time", ts()),
            f("expires", ts()),
            f("seller", int.clone()),
            f("category", int),
            f("extra", text),
        ],
        EventType::Bid => vec![
            f("auction", int.clone()),
            f("bidder", int.clone()),
            f("price", int),
            f("channel", text.clone()),
            f("url", text.clone()),
            f("date_time", ts()),
            f("extra", text),
        ],
    }))
}

fn parse_type(text: &str) -> Result<EventType> {
    match text.to_ascii_lowercase().as_str() {
        "bid" => Ok(EventType::Bid),
        "auction" => Ok(EventType::Auction),
        "person" => Ok(EventType::Person),
        other => Err(invalid(format!(
            "nexmark.table.type must be bid, auction or person, not '{other}'"
        ))),
    }
}

/// Settings of one Nexmark stream.
#[derive(Debug, Clone)]
pub struct NexmarkSettings {
    /// Which table.
    pub kind: EventType,
    /// Events (all types) to walk through; `None` for endless.
    pub event_num: Option<u64>,
    /// Rows per batch.
    pub chunk: usize,
    /// Minimum gap between events, in nanoseconds (0: unpaced).
    pub gap_ns: u64,
    /// Event-time origin in milliseconds.
    pub base_time_ms: u64,
    /// Generators sharing the stream (one thread each).
    pub split: usize,
}

/// Builds a `nexmark` source.
pub fn build(
    declared: Option<SchemaRef>,
    options: &BTreeMap<String, String>,
) -> Result<SourceSpec> {
    let opts = Options::new(options);
    let kind = parse_type(
        opts.get("nexmark.table.type")
            .ok_or_else(|| invalid("a nexmark source needs nexmark.table.type"))?,
    )?;
    let settings = NexmarkSettings {
        kind,
        event_num: opts.parse("nexmark.event.num")?,
        chunk: opts
            .parse_or("nexmark.max.chunk.size", 8192usize)?
            .clamp(1, 1 << 20),
        gap_ns: opts.parse_or("nexmark.min.event.gap.in.ns", 100_000u64)?,
        base_time_ms: opts.parse_or("nexmark.base.time", DEFAULT_BASE_TIME_MS)?,
        split: opts.parse_or("nexmark.split.num", 2usize)?.clamp(1, 64),
    };
    opts.reject_unknown()?;
    let full = table_schema(kind);
    let schema = match declared.filter(|s| !s.fields().is_empty()) {
        None => full.clone(),
        Some(d) => {
            for f in d.fields() {
                if full.field_with_name(f.name()).is_err() {
                    let names: Vec<&str> =
                        full.fields().iter().map(|f| f.name().as_str()).collect();
                    return Err(invalid(format!(
                        "nexmark {} has no column {} (columns: {})",
                        kind_name(kind),
                        f.name(),
                        names.join(", ")
                    )));
                }
            }
            d
        }
    };
    let gen_schema = schema.clone();
    Ok(SourceSpec {
        connector: "nexmark".into(),
        schema,
        append_only: true,
        keyed: false,
        make_generators: Box::new(move |_: &super::ReaderContext| {
            Ok((0..settings.split)
                .map(|k| {
                    Box::new(NexmarkGenerator::new(
                        settings.clone(),
                        gen_schema.clone(),
                        k,
                    )) as Box<dyn BatchGenerator>
                })
                .collect())
        }),
    })
}

fn kind_name(kind: EventType) -> &'static str {
    match kind {
        EventType::Person => "person",
        EventType::Auction => "auction",
        EventType::Bid => "bid",
    }
}

/// Generates Nexmark rows of one table type as Arrow batches.
pub struct NexmarkGenerator {
    settings: NexmarkSettings,
    generator: EventGenerator,
    schema: SchemaRef,
    /// For each output column, its index in the table's full schema.
    columns: Vec<usize>,
    /// Bids built without the crate's per-event structs, when the
    /// configuration allows (see [`bid`]).
    bids: Option<bid::BidMaker>,
    /// Next bid offset of this generator, for `bids`.
    bid_offset: u64,
    done: bool,
}

impl NexmarkGenerator {
    /// Generator `part` of `settings.split`, producing the columns of
    /// `schema`: it takes every `split`-th event of the stream from `part` on.
    pub fn new(settings: NexmarkSettings, schema: SchemaRef, part: usize) -> Self {
        let config = NexmarkConfig {
            base_time: settings.base_time_ms,
            ..Default::default()
        };
        let full = table_schema(settings.kind);
        let columns = schema
            .fields()
            .iter()
            .map(|f| full.index_of(f.name()).unwrap_or(0))
            .collect();
        let bids = match settings.kind {
            EventType::Bid => bid::BidMaker::new(&config),
            _ => None,
        };
        let generator = EventGenerator::new(config)
            .with_type_filter(settings.kind)
            .with_offset(part as u64)
            .with_step(settings.split.max(1) as u64);
        Self {
            settings,
            generator,
            schema,
            columns,
            bids,
            bid_offset: part as u64,
            done: false,
        }
    }

    /// Appends up to `n` bids to `builders` through the fast path; returns
    /// how many.
    fn fast_bids(&mut self, builders: &mut [Builder], n: usize) -> usize {
        let Some(maker) = self.bids.as_mut() else {
            return 0;
        };
        // `extra` is drawn last, so leaving it out changes nothing else.
        let with_extra = self.columns.contains(&BID_EXTRA);
        let step = self.settings.split.max(1) as u64;
        let mut rows = 0;
        while rows < n {
            if let Some(limit) = self.settings.event_num {
                if maker.global_offset(self.bid_offset) >= limit {
                    self.done = true;
                    break;
                }
            }
            let bid = maker.bid(self.bid_offset, with_extra);
            self.bid_offset += step;
            for (b, &c) in builders.iter_mut().zip(&self.columns) {
                match c {
                    0 => b.int(bid.auction),
                    1 => b.int(bid.bidder),
                    2 => b.int(bid.price),
                    3 => b.text(bid.channel),
                    4 => b.text(bid.url),
                    5 => b.time_ms(bid.date_time_ms),
                    _ => b.text(bid.extra),
                }
            }
            rows += 1;
        }
        rows
    }
}

/// Index of `extra` in the bid schema.
const BID_EXTRA: usize = 6;

enum Builder {
    Int(Int64Builder),
    Text(StringBuilder),
    Time(TimestampMicrosecondBuilder),
}

impl Builder {
    fn for_type(t: &DataType, n: usize) -> Self {
        match t {
            DataType::Int64 => Builder::Int(Int64Builder::with_capacity(n)),
            DataType::Utf8 => Builder::Text(StringBuilder::with_capacity(n, n * 64)),
            _ => Builder::Time(TimestampMicrosecondBuilder::with_capacity(n)),
        }
    }

    fn int(&mut self, v: u64) {
        if let Builder::Int(b) = self {
            b.append_value(v as i64)
        }
    }

    fn text(&mut self, v: &str) {
        if let Builder::Text(b) = self {
            b.append_value(v)
        }
    }

    fn time_ms(&mut self, ms: u64) {
        if let Builder::Time(b) = self {
            b.append_value(ms as i64 * 1000)
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Int(mut b) => Arc::new(b.finish()),
            Builder::Text(mut b) => Arc::new(b.finish()),
            Builder::Time(mut b) => Arc::new(b.finish()),
        }
    }
}

impl BatchGenerator for NexmarkGenerator {
    /// Nexmark events are a function of their number: a jump moves the
    /// offsets (in units of this generator's type, every `split`-th).
    fn skip(&mut self, rows: u64) -> bool {
        let by = rows.saturating_mul(self.settings.split.max(1) as u64);
        self.bid_offset = self.bid_offset.saturating_add(by);
        let offset = self.generator.offset().saturating_add(by);
        self.generator = self.generator.clone().with_offset(offset);
        true
    }

    fn next_batch(&mut self) -> Result<Option<ChangeBatch>> {
        if self.done {
            return Ok(None);
        }
        let full = table_schema(self.settings.kind);
        let n = self.settings.chunk;
        let mut builders: Vec<Builder> = self
            .columns
            .iter()
            .map(|&c| Builder::for_type(full.field(c).data_type(), n))
            .collect();
        let mut rows = 0;
        if self.bids.is_some() {
            rows = self.fast_bids(&mut builders, n);
        }
        while rows < n && self.bids.is_none() {
            if let Some(limit) = self.settings.event_num {
                if self.generator.global_offset() >= limit {
                    self.done = true;
                    break;
                }
            }
            let Some(event) = self.generator.next() else {
                self.done = true;
                break;
            };
            for (b, &c) in builders.iter_mut().zip(&self.columns) {
                match &event {
                    Event::Bid(e) => match c {
                        0 => b.int(e.auction as u64),
                        1 => b.int(e.bidder as u64),
                        2 => b.int(e.price as u64),
                        3 => b.text(&e.channel),
                        4 => b.text(&e.url),
                        5 => b.time_ms(e.date_time),
                        _ => b.text(&e.extra),
                    },
                    Event::Auction(e) => match c {
                        0 => b.int(e.id as u64),
                        1 => b.text(&e.item_name),
                        2 => b.text(&e.description),
                        3 => b.int(e.initial_bid as u64),
                        4 => b.int(e.reserve as u64),
                        5 => b.time_ms(e.date_time),
                        6 => b.time_ms(e.expires),
                        7 => b.int(e.seller as u64),
                        8 => b.int(e.category as u64),
                        _ => b.text(&e.extra),
                    },
                    Event::Person(e) => match c {
                        0 => b.int(e.id as u64),
                        1 => b.text(&e.name),
                        2 => b.text(&e.email_address),
                        3 => b.text(&e.credit_card),
                        4 => b.text(&e.city),
                        5 => b.text(&e.state),
                        6 => b.time_ms(e.date_time),
                        _ => b.text(&e.extra),
                    },
                }
            }
            rows += 1;
        }
        if rows == 0 {
            return Ok(None);
        }
        let arrays = builders
            .into_iter()
            .zip(self.schema.fields())
            .map(|(b, f)| {
                let a = b.finish();
                if a.data_type() == f.data_type() {
                    Ok(a)
                } else {
                    Ok(cast(&a, f.data_type())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ChangeBatch::with_uniform_weight(
            RecordBatch::try_new(self.schema.clone(), arrays)?,
            1,
        )))
    }

    fn in_lockstep(&self) -> bool {
        true
    }

    fn rows_per_second(&self) -> Option<f64> {
        (self.settings.gap_ns > 0)
            .then(|| 1e9 / self.settings.gap_ns as f64 / self.settings.split.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bids_are_deterministic_and_bounded() {
        let map: BTreeMap<String, String> = [
            ("connector", "nexmark"),
            ("nexmark.table.type", "Bid"),
            ("nexmark.event.num", "1000"),
            ("nexmark.min.event.gap.in.ns", "0"),
            ("nexmark.max.chunk.size", "100"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let run = || {
            let spec = build(None, &map).unwrap();
            let mut lines = Vec::new();
            for mut g in (spec.make_generators)(&Default::default()).unwrap() {
                while let Some(b) = g.next_batch().unwrap() {
                    assert!(b.num_rows() <= 100);
                    lines.extend(crate::stream::pretty::batch_lines(b.data()).unwrap());
                }
            }
            lines.sort();
            lines
        };
        let a = run();
        assert_eq!(a, run());
        // 46 of every 50 events are bids.
        assert_eq!(a.len(), 920);
        // Split into one generator or three, the stream is the same.
        let collect = |split: &str| {
            let mut m = map.clone();
            m.insert("nexmark.split.num".into(), split.into());
            let mut lines = Vec::new();
            for mut g in (build(None, &m).unwrap().make_generators)(&Default::default()).unwrap() {
                while let Some(b) = g.next_batch().unwrap() {
                    lines.extend(crate::stream::pretty::batch_lines(b.data()).unwrap());
                }
            }
            lines.sort();
            lines
        };
        assert_eq!(collect("1"), a);
        assert_eq!(collect("3"), a);
    }

    /// A jump over `k` rows lands where producing and dropping them would,
    /// for every table type (bids take the fast path, the others the
    /// crate's generator), split or not, and stops at the event limit.
    #[test]
    fn a_skip_lands_where_producing_the_rows_would() {
        for (kind, split) in [
            ("Bid", "1"),
            ("Bid", "3"),
            ("Auction", "2"),
            ("Person", "1"),
        ] {
            let map: BTreeMap<String, String> = [
                ("connector", "nexmark"),
                ("nexmark.table.type", kind),
                ("nexmark.event.num", "5000"),
                ("nexmark.min.event.gap.in.ns", "0"),
                ("nexmark.max.chunk.size", "64"),
                ("nexmark.split.num", split),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let rows_after = |skip: u64, jump: bool| {
                let spec = build(None, &map).unwrap();
                let mut lines = Vec::new();
                for mut g in (spec.make_generators)(&Default::default()).unwrap() {
                    let mut to_drop = skip;
                    if jump {
                        assert!(g.skip(skip));
                        to_drop = 0;
                    }
                    while let Some(b) = g.next_batch().unwrap() {
                        let n = b.num_rows() as u64;
                        let keep = b.slice(to_drop.min(n) as usize, (n - to_drop.min(n)) as usize);
                        to_drop -= to_drop.min(n);
                        lines.extend(crate::stream::pretty::batch_lines(keep.data()).unwrap());
                    }
                }
                // Lines come sorted per batch, and a jump moves the batches'
                // boundaries.
                lines.sort();
                lines
            };
            for skip in [0, 1, 63, 64, 100, 100_000] {
                let jumped = rows_after(skip, true);
                let dropped = rows_after(skip, false);
                assert!(
                    jumped == dropped,
                    "{kind} split {split} skip {skip}: {} rows against {}",
                    jumped.len(),
                    dropped.len()
                );
                if skip == 100_000 {
                    assert!(jumped.is_empty());
                }
            }
        }
    }
}
