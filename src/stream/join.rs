//! Equi-join (inner, left, right or full outer), maintained incrementally.
//!
//! Weights: a left row `l` (weight `a`) and a right row `r` (weight `b`) with
//! equal keys produce the joined row `l ++ r` with weight `a * b`. Join is
//! bilinear, so for deltas `dL`, `dR` the output delta is
//! `dL ⋈ R + L' ⋈ dR`, where `R` is the right side before this epoch and
//! `L' = L + dL` the left side after it. Each side is indexed by join key,
//! holding its rows in Arrow row format with their weights. Rows whose key
//! contains NULL never match (SQL `=`), unless the join compares keys with
//! `IS NOT DISTINCT FROM`. An optional residual predicate filters the
//! joined rows (inner joins only).
//!
//! An outer join adds, for its preserved side `P` and other side `O`, every
//! row of `P` whose key has no rows in `O`, padded with NULLs, at the row's
//! own weight. Per epoch, for each key the epoch touched: if `O` had no rows
//! for it before and has none after, the padded rows change by `dP` of that
//! key; if `O` gains its first rows, the padded rows of the old `P` are
//! retracted; if `O` loses its last rows, the rows of the new `P` come back
//! padded. Rows of `P` with a NULL key are always padded.
//!
//! A semi join emits each row of its side `P` (weight as in `P`) while its
//! key has rows in `O`; an anti join while it has none. Their changes follow
//! the same per-key comparison as the padding of an outer join (the anti
//! join's output is exactly the padded rows, without the padding; the semi
//! join's is the complement within `P`).
//!
//! An inner join may drop state that watermarks show can no longer match:
//! when the condition implies `x >= y` for a column `x` of side `X` and `y`
//! of side `Y` (an equal key, or an interval bound such as `b.ts >=
//! w.window_start`), a row of `X` with `x` below both `X`'s watermark on `x`
//! and `Y`'s on `y` can meet no future row of `Y` and will not change any
//! more itself, so it leaves the state (see [`StateBound`]). Nothing is
//! emitted for it: its joined rows stay as they are.
//!
//! An outer join (left, right, full) may too, by its equal keys only (it
//! takes no other condition): when `x = y` is one of the keys, every row of
//! a key whose `x` is below both watermarks leaves both sides at once. No
//! row of that key can arrive on either side any more, so its padded rows
//! are final and stay in the output; nothing is emitted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, Int64Array, UInt32Array};
use datafusion::arrow::compute::{concat, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::RandomState;
use datafusion::physical_expr::PhysicalExpr;

use super::change::{batch_from_columns, evaluate_keys, row_converter, ChangeBatch};
use super::filter::evaluate_predicate;
use super::operator::{codec, Operator, OperatorStats, StateChanges, StateEntry};
use super::watermark::{least_mark, values_as_i64, Watermarks};
use crate::error::{MillraceError, Result};

/// Rows (row format) with their weights, sharing one join key. Most keys
/// of a join on a near-unique column (q7's prices) hold one row, which is
/// kept in place: a table is allocated only for a second row.
enum Bucket {
    /// One row and its weight; weight 0 means no row (a bucket just
    /// emptied, which its index removes).
    One(Box<[u8]>, i64),
    /// Two rows or more.
    Many(HashMap<Box<[u8]>, i64, RandomState>),
}

/// The rows of a [`Bucket`] with their weights.
#[derive(Clone)]
enum BucketRows<'a> {
    One(Option<(&'a [u8], i64)>),
    Many(std::collections::hash_map::Iter<'a, Box<[u8]>, i64>),
}

impl<'a> Iterator for BucketRows<'a> {
    type Item = (&'a [u8], i64);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            BucketRows::One(row) => row.take(),
            BucketRows::Many(rows) => rows.next().map(|(r, w)| (r.as_ref(), *w)),
        }
    }
}

impl Bucket {
    /// Distinct rows held.
    fn len(&self) -> usize {
        match self {
            Bucket::One(_, w) => usize::from(*w != 0),
            Bucket::Many(rows) => rows.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> BucketRows<'_> {
        match self {
            Bucket::One(row, w) => BucketRows::One((*w != 0).then_some((row.as_ref(), *w))),
            Bucket::Many(rows) => BucketRows::Many(rows.iter()),
        }
    }

    /// Adds `weight` to `row`'s; a row whose weight reaches 0 leaves.
    fn add(&mut self, row: &[u8], weight: i64) {
        match self {
            Bucket::One(r, w) if *w == 0 => {
                *r = row.into();
                *w = weight;
            }
            Bucket::One(r, w) if r.as_ref() == row => *w += weight,
            Bucket::One(..) => self.insert_new(row.into(), weight),
            Bucket::Many(rows) => match rows.get_mut(row) {
                Some(w) => {
                    *w += weight;
                    if *w == 0 {
                        rows.remove(row);
                    }
                }
                None => {
                    rows.insert(row.into(), weight);
                }
            },
        }
    }

    /// Adds `row`, which the bucket does not hold, with `weight`.
    fn insert_new(&mut self, row: Box<[u8]>, weight: i64) {
        match self {
            Bucket::One(r, w) if *w == 0 => {
                *r = row;
                *w = weight;
            }
            Bucket::One(r, w) => {
                let mut rows = HashMap::with_capacity_and_hasher(2, RandomState::default());
                rows.insert(std::mem::take(r), *w);
                rows.insert(row, weight);
                *self = Bucket::Many(rows);
            }
            Bucket::Many(rows) => {
                rows.insert(row, weight);
            }
        }
    }

    /// Moves every row out, to `take`, leaving the bucket empty.
    fn drain_into(&mut self, mut take: impl FnMut(Box<[u8]>, i64)) {
        match self {
            Bucket::One(r, w) => {
                if *w != 0 {
                    take(std::mem::take(r), std::mem::replace(w, 0));
                }
            }
            Bucket::Many(rows) => {
                for (r, w) in rows.drain() {
                    take(r, w);
                }
            }
        }
    }
}

/// One side of the join: its rows indexed by key.
struct JoinSide {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    rows: RowConverter,
    index: HashMap<Box<[u8]>, Bucket, RandomState>,
    schema: SchemaRef,
    /// Keys whose rows changed since the last checkpoint, when checkpoints
    /// are taken.
    changed: Option<HashSet<Box<[u8]>, RandomState>>,
}

impl JoinSide {
    /// Notes that the rows of `key` changed, for the next checkpoint.
    fn touch(&mut self, key: &[u8]) {
        if let Some(changed) = &mut self.changed {
            if !changed.contains(key) {
                changed.insert(key.into());
            }
        }
    }

    /// [`JoinSide::touch`] for a key the side no longer holds: its
    /// allocation is kept rather than copied.
    fn touch_owned(&mut self, key: Box<[u8]>) {
        if let Some(changed) = &mut self.changed {
            if !changed.contains(&key) {
                changed.insert(key);
            }
        }
    }

    /// Writes each changed key's rows (or its deletion) under `tag`.
    fn checkpoint(&mut self, tag: u8, out: &mut StateChanges) {
        let Some(changed) = &mut self.changed else {
            return;
        };
        for key in changed.drain() {
            let store_key: [&[u8]; 2] = [&[tag], &key];
            match self.index.get(&key) {
                None => out.op(&store_key, None),
                Some(bucket) => out.put_weighted_rows(&store_key, bucket.iter()),
            }
        }
    }

    /// The rows of checkpointed buckets `values` as one change.
    fn decode(&self, values: &[&[u8]]) -> Result<Option<ChangeBatch>> {
        codec::decode_weighted_rows(values.iter().copied(), &self.rows, &self.schema)
    }
}

/// A bound on the state of one side of an inner join: rows of that side
/// whose `column` is below the least watermark of the `by` columns (input
/// 0 is the left side, 1 the right) are dropped. Sound when the join
/// condition implies `column >= y` for some `y` of the other side, and
/// `by` holds both this column's own watermark and `y`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateBound {
    /// The side whose rows are dropped: left when true.
    pub left: bool,
    /// The column of that side compared.
    pub column: usize,
    /// The `(input, column)` watermarks whose least value is the bound.
    pub by: Vec<(usize, usize)>,
}

/// A [`StateBound`] in force: the keys of the side's rows by their value
/// in the bounded column (as `i64`). Rows with equal values (one
/// timestamp) share an entry.
struct Expiry {
    bound: StateBound,
    by_value: BTreeMap<i64, KeyList>,
}

/// Join keys back to back in one buffer: an expiry entry per inserted row
/// without an allocation per row.
#[derive(Default)]
struct KeyList {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl KeyList {
    fn push(&mut self, key: &[u8]) {
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len());
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(start, &end)| &self.bytes[start..end])
    }
}

/// Which sides of a join keep their unmatched rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Matched pairs only.
    Inner,
    /// Also unmatched left rows, padded with NULLs.
    Left,
    /// Also unmatched right rows, padded with NULLs.
    Right,
    /// Also unmatched rows of both sides.
    Full,
    /// Left rows that have a match, once each (`IN`, `EXISTS`).
    LeftSemi,
    /// Left rows without a match (`NOT EXISTS`).
    LeftAnti,
    /// Right rows that have a match, once each.
    RightSemi,
    /// Right rows without a match.
    RightAnti,
}

impl JoinKind {
    /// For semi and anti joins: the side whose rows are emitted (true for
    /// left) and whether the matched ones (true) or the unmatched ones.
    pub fn filtering(self) -> Option<(bool, bool)> {
        match self {
            JoinKind::LeftSemi => Some((true, true)),
            JoinKind::LeftAnti => Some((true, false)),
            JoinKind::RightSemi => Some((false, true)),
            JoinKind::RightAnti => Some((false, false)),
            _ => None,
        }
    }
}

/// For one preserved side, what an epoch's padding needs from before it:
/// each touched key, whether the other side had rows for it, and (when it
/// had none) the preserved side's rows of that key.
struct PadBefore {
    keys: Vec<Box<[u8]>>,
    other_had: Vec<bool>,
    old_rows: Vec<Vec<(Box<[u8]>, i64)>>,
}

/// Incremental equi-join; see the module documentation.
pub struct JoinOperator {
    left: JoinSide,
    right: JoinSide,
    kind: JoinKind,
    key_types: Vec<DataType>,
    key_converter: Option<RowConverter>,
    nulls_equal: bool,
    filter: Option<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    stats: OperatorStats,
    expiries: Vec<Expiry>,
}

/// The join keys of one delta's rows, in row format, without a copy per
/// row.
#[derive(Default)]
struct KeyRows {
    /// `None` when the join has no keys (every key is empty).
    rows: Option<datafusion::arrow::row::Rows>,
    /// Whether each row's key can match (it has no NULL, or NULLs match).
    matches: Vec<bool>,
}

impl KeyRows {
    /// Each row's key, `None` where it never matches.
    fn iter(&self) -> impl Iterator<Item = Option<&[u8]>> + '_ {
        self.matches.iter().enumerate().map(|(i, &m)| {
            m.then(|| match &self.rows {
                Some(rows) => rows.row(i).data(),
                None => &[][..],
            })
        })
    }
}

impl JoinOperator {
    /// Joins rows of `left_schema` and `right_schema` on
    /// `left_keys[i] = right_keys[i]`, emitting rows of `schema` (left
    /// columns then right columns) that pass `filter`.
    pub fn try_new(
        left_schema: &SchemaRef,
        right_schema: &SchemaRef,
        left_keys: Vec<Arc<dyn PhysicalExpr>>,
        right_keys: Vec<Arc<dyn PhysicalExpr>>,
        nulls_equal: bool,
        filter: Option<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    ) -> Result<Self> {
        let key_types = left_keys
            .iter()
            .map(|e| Ok(e.data_type(left_schema)?))
            .collect::<Result<Vec<_>>>()?;
        let key_converter = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                key_types
                    .iter()
                    .map(|t| SortField::new(t.clone()))
                    .collect(),
            )?)
        };
        Ok(Self {
            left: JoinSide {
                keys: left_keys,
                rows: row_converter(left_schema)?,
                index: HashMap::default(),
                schema: left_schema.clone(),
                changed: None,
            },
            right: JoinSide {
                keys: right_keys,
                rows: row_converter(right_schema)?,
                index: HashMap::default(),
                schema: right_schema.clone(),
                changed: None,
            },
            kind: JoinKind::Inner,
            key_types,
            key_converter,
            nulls_equal,
            filter,
            schema,
            stats: OperatorStats::default(),
            expiries: Vec::new(),
        })
    }

    /// The same join dropping state by `bounds` as watermarks advance.
    /// Inner and outer joins take them; for an outer join they must come
    /// from equal keys (see the module docs). Semi and anti joins take
    /// none.
    pub fn with_state_bounds(mut self, bounds: Vec<StateBound>) -> Result<Self> {
        if bounds.is_empty() {
            return Ok(self);
        }
        if self.kind.filtering().is_some() {
            return Err(MillraceError::plan(
                "state bounds apply to inner and outer joins only",
            ));
        }
        for b in &bounds {
            let side = self.side(b.left);
            if b.column >= side.schema.fields().len() {
                return Err(MillraceError::plan("state bound column out of range"));
            }
        }
        self.expiries = bounds
            .into_iter()
            .map(|bound| Expiry {
                bound,
                by_value: BTreeMap::new(),
            })
            .collect();
        Ok(self)
    }

    /// Rows held on each side (left, right), counting each distinct row
    /// once.
    pub fn state_rows(&self) -> (usize, usize) {
        let count = |s: &JoinSide| s.index.values().map(Bucket::len).sum();
        (count(&self.left), count(&self.right))
    }

    /// Records the bounded-column values of the rows `delta` inserts on
    /// side `left`, for the expiries of that side.
    fn track(&mut self, delta: &ChangeBatch, keys: &KeyRows, left: bool) -> Result<()> {
        for e in self.expiries.iter_mut().filter(|e| e.bound.left == left) {
            let values = values_as_i64(delta.data().column(e.bound.column))?;
            let mut last: Option<(i64, &mut KeyList)> = None;
            for (i, (key, w)) in keys.iter().zip(delta.weights().values()).enumerate() {
                let (Some(key), true, true) = (key, *w > 0, values.is_valid(i)) else {
                    continue;
                };
                let value = values.value(i);
                // Consecutive rows mostly share a time: one map lookup each.
                match &mut last {
                    Some((v, keys)) if *v == value => keys.push(key),
                    _ => {
                        let keys = e.by_value.entry(value).or_default();
                        keys.push(key);
                        last = Some((value, keys));
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops the rows of every bounded side that the inputs' watermarks
    /// put behind their bound.
    fn expire(&mut self, inputs: &[&Watermarks]) -> Result<()> {
        for i in 0..self.expiries.len() {
            let bound = &self.expiries[i].bound;
            let Some(mark) = least_mark(inputs, &bound.by) else {
                continue;
            };
            let (left, column) = (bound.left, bound.column);
            // `None`: the streams ended, every row goes.
            let limit = mark.as_i64(self.side(left).schema.field(column).data_type())?;
            let by_value = &mut self.expiries[i].by_value;
            let expired = match limit {
                None => std::mem::take(by_value),
                Some(l) => {
                    let kept = by_value.split_off(&l);
                    std::mem::replace(by_value, kept)
                }
            };
            if expired.is_empty() {
                continue;
            }
            let side = if left {
                &mut self.left
            } else {
                &mut self.right
            };
            // Each touched key's entry is taken out of the index (one
            // lookup; a key listed again finds nothing), its rows judged
            // in one batch, and only the entries with rows left go back:
            // no row is copied.
            let mut taken: Vec<(Box<[u8]>, Bucket)> = Vec::new();
            for keys in expired.values() {
                for key in keys.iter() {
                    if let Some(entry) = side.index.remove_entry(key) {
                        taken.push(entry);
                    }
                }
            }
            let mut drained: Vec<(u32, Box<[u8]>, i64)> = Vec::new();
            for (k, (_, bucket)) in taken.iter_mut().enumerate() {
                bucket.drain_into(|r, w| drained.push((k as u32, r, w)));
            }
            if !drained.is_empty() {
                let parser = side.rows.parser();
                let columns = side
                    .rows
                    .convert_rows(drained.iter().map(|(_, r, _)| parser.parse(r)))?;
                let behind = mark.behind(&columns[column], false)?;
                self.stats.state_touched += drained.len() as u64;
                for ((k, row, w), gone) in drained.into_iter().zip(behind.values().iter()) {
                    if !gone {
                        taken[k as usize].1.insert_new(row, w);
                    }
                }
            }
            for (key, bucket) in taken {
                if bucket.is_empty() {
                    side.touch_owned(key);
                } else {
                    side.touch(&key);
                    side.index.insert(key, bucket);
                }
            }
        }
        Ok(())
    }

    /// The same join keeping unmatched rows as `kind` says. Outer joins
    /// take no residual predicate (it would decide which pairs match).
    pub fn with_kind(mut self, kind: JoinKind) -> Result<Self> {
        if kind != JoinKind::Inner && self.filter.is_some() {
            let what = if kind.filtering().is_some() {
                "a subquery (semi or anti join) correlated by more than equal keys"
            } else {
                "an outer join whose ON condition compares more than equal keys"
            };
            return Err(crate::error::MillraceError::not_supported(format!(
                "{what}, in a materialized view"
            )));
        }
        self.kind = kind;
        Ok(self)
    }

    fn side(&self, left: bool) -> &JoinSide {
        if left {
            &self.left
        } else {
            &self.right
        }
    }

    /// Before an epoch changes the state: what padding for preserved side
    /// `left` (or right) will need, for every key in `keys` (the keys of both
    /// deltas).
    ///
    /// With `matched`, the rows tracked are those whose key has rows on the
    /// other side (a semi join) instead of those without.
    fn pad_before(&self, left: bool, keys: &[&KeyRows], matched: bool) -> PadBefore {
        let (preserved, other) = (self.side(left), self.side(!left));
        let mut seen: HashSet<&[u8], RandomState> = HashSet::default();
        let mut before = PadBefore {
            keys: Vec::new(),
            other_had: Vec::new(),
            old_rows: Vec::new(),
        };
        for key in keys.iter().flat_map(|k| k.iter()).flatten() {
            if !seen.insert(key) {
                continue;
            }
            // `had`: the key's rows were not tracked before.
            let had = other.index.contains_key(key) != matched;
            let old = if had {
                Vec::new()
            } else {
                preserved.index.get(key).map_or_else(Vec::new, |bucket| {
                    bucket.iter().map(|(r, w)| (Box::from(r), w)).collect()
                })
            };
            before.keys.push(key.into());
            before.other_had.push(had);
            before.old_rows.push(old);
        }
        before
    }

    /// After an epoch changed the state: the change of the padded rows of
    /// preserved side `left` (or right), given its delta `delta` (with keys
    /// `delta_keys`) and what [`JoinOperator::pad_before`] saw.
    fn pad_after(
        &self,
        left: bool,
        before: PadBefore,
        delta: Option<(&ChangeBatch, &KeyRows)>,
    ) -> Result<Option<ChangeBatch>> {
        let Some((columns, weights)) = self.tracked_change(left, before, delta, false)? else {
            return Ok(None);
        };
        let n = weights.len();
        let nulls: Vec<ArrayRef> = self
            .side(!left)
            .schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), n))
            .collect();
        let columns = if left {
            [columns, nulls].concat()
        } else {
            [nulls, columns].concat()
        };
        let data = batch_from_columns(self.schema.clone(), columns, n)?;
        Ok(Some(ChangeBatch::try_new(data, Int64Array::from(weights))?))
    }

    /// The change, over one epoch, of the rows of side `left` (or right)
    /// whose key has no rows on the other side (or, with `matched`, has
    /// some): their columns and weights.
    fn tracked_change(
        &self,
        left: bool,
        before: PadBefore,
        delta: Option<(&ChangeBatch, &KeyRows)>,
        matched: bool,
    ) -> Result<Option<(Vec<ArrayRef>, Vec<i64>)>> {
        let (preserved, other) = (self.side(left), self.side(!left));
        // Delta rows by key, and those whose key never matches.
        let mut delta_rows: HashMap<&[u8], Vec<u32>, RandomState> = HashMap::default();
        let mut from_delta: Vec<u32> = Vec::new();
        if let Some((_, keys)) = delta {
            for (i, key) in keys.iter().enumerate() {
                match key {
                    Some(k) => delta_rows.entry(k).or_default().push(i as u32),
                    // A NULL key never matches.
                    None if !matched => from_delta.push(i as u32),
                    None => {}
                }
            }
        }
        let mut from_state: Vec<(&[u8], i64)> = Vec::new();
        for ((key, had), old) in before
            .keys
            .iter()
            .zip(&before.other_had)
            .zip(&before.old_rows)
        {
            let has = other.index.contains_key(key) != matched;
            match (had, has) {
                (false, false) => {
                    if let Some(rows) = delta_rows.get(key.as_ref()) {
                        from_delta.extend(rows);
                    }
                }
                (false, true) => from_state.extend(old.iter().map(|(r, w)| (r.as_ref(), -w))),
                (true, false) => {
                    if let Some(bucket) = preserved.index.get(key) {
                        from_state.extend(bucket.iter());
                    }
                }
                (true, true) => {}
            }
        }
        if from_delta.is_empty() && from_state.is_empty() {
            return Ok(None);
        }
        // The preserved side's columns: chosen delta rows, then state rows.
        let indices = UInt32Array::from(from_delta);
        let mut weights: Vec<i64> = Vec::with_capacity(indices.len() + from_state.len());
        let mut parts: Vec<Vec<ArrayRef>> = Vec::new();
        if let (Some((delta, _)), false) = (delta, indices.is_empty()) {
            let dw = delta.weights().values();
            weights.extend(indices.values().iter().map(|&i| dw[i as usize]));
            parts.push(
                delta
                    .data()
                    .columns()
                    .iter()
                    .map(|c| take(c.as_ref(), &indices, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            );
        }
        if !from_state.is_empty() {
            let parser = preserved.rows.parser();
            parts.push(
                preserved
                    .rows
                    .convert_rows(from_state.iter().map(|(r, _)| parser.parse(r)))?,
            );
            weights.extend(from_state.iter().map(|(_, w)| *w));
        }
        let preserved_cols = (0..preserved.schema.fields().len())
            .map(|c| {
                let pieces: Vec<&dyn Array> = parts.iter().map(|p| p[c].as_ref()).collect();
                Ok(concat(&pieces)?)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(Some((preserved_cols, weights)))
    }

    /// One epoch of a semi (`matched`) or anti join emitting side `left`.
    fn step_filtering(
        &mut self,
        left: bool,
        matched: bool,
        dl: Option<ChangeBatch>,
        dr: Option<ChangeBatch>,
        lkeys: KeyRows,
        rkeys: KeyRows,
    ) -> Result<Option<ChangeBatch>> {
        let before = self.pad_before(left, &[&lkeys, &rkeys], matched);
        for (delta, keys, is_left) in [(&dl, &lkeys, true), (&dr, &rkeys, false)] {
            if let Some(d) = delta {
                self.stats.rows_in += d.num_rows() as u64;
                self.absorb(d, keys, is_left)?;
            }
        }
        let (delta, keys) = if left { (&dl, &lkeys) } else { (&dr, &rkeys) };
        let Some((columns, weights)) =
            self.tracked_change(left, before, delta.as_ref().map(|d| (d, keys)), matched)?
        else {
            return Ok(None);
        };
        let n = weights.len();
        let data = batch_from_columns(self.schema.clone(), columns, n)?;
        self.stats.rows_out += n as u64;
        Ok(Some(ChangeBatch::try_new(data, Int64Array::from(weights))?))
    }

    /// Encodes the key of every row of `delta` read through `keys`.
    fn key_rows(&self, keys: &[Arc<dyn PhysicalExpr>], delta: &ChangeBatch) -> Result<KeyRows> {
        let n = delta.num_rows();
        let Some(conv) = &self.key_converter else {
            return Ok(KeyRows {
                rows: None,
                matches: vec![true; n],
            });
        };
        let arrays = evaluate_keys(keys, &self.key_types, delta.data())?;
        let rows = conv.convert_columns(&arrays)?;
        let matches = if self.nulls_equal || arrays.iter().all(|a| a.null_count() == 0) {
            vec![true; n]
        } else {
            (0..n)
                .map(|i| !arrays.iter().any(|a| a.is_null(i)))
                .collect()
        };
        Ok(KeyRows {
            rows: Some(rows),
            matches,
        })
    }

    /// Joins `delta` (on side `delta_is_left`) against the other side's state.
    fn probe(
        &mut self,
        delta: &ChangeBatch,
        keys: &KeyRows,
        delta_is_left: bool,
    ) -> Result<Option<ChangeBatch>> {
        let other = if delta_is_left {
            &self.right
        } else {
            &self.left
        };
        let mut delta_idx: Vec<u32> = Vec::new();
        let mut other_rows: Vec<&[u8]> = Vec::new();
        let mut weights: Vec<i64> = Vec::new();
        let dw = delta.weights().values();
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            if let Some(matches) = other.index.get(key) {
                self.stats.state_touched += matches.len() as u64;
                for (row, w) in matches.iter() {
                    delta_idx.push(i as u32);
                    other_rows.push(row);
                    weights.push(dw[i] * w);
                }
            }
        }
        if weights.is_empty() {
            return Ok(None);
        }
        let indices = UInt32Array::from(delta_idx);
        let delta_cols = delta
            .data()
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let parser = other.rows.parser();
        let other_cols = other
            .rows
            .convert_rows(other_rows.iter().map(|r| parser.parse(r)))?;
        let columns = if delta_is_left {
            [delta_cols, other_cols].concat()
        } else {
            [other_cols, delta_cols].concat()
        };
        let data = batch_from_columns(self.schema.clone(), columns, weights.len())?;
        Ok(Some(ChangeBatch::try_new(data, Int64Array::from(weights))?))
    }

    /// Adds `delta` to one side's index.
    fn absorb(&mut self, delta: &ChangeBatch, keys: &KeyRows, left: bool) -> Result<()> {
        let side = if left {
            &mut self.left
        } else {
            &mut self.right
        };
        let rows = side.rows.convert_columns(delta.data().columns())?;
        for (i, (key, w)) in keys.iter().zip(delta.weights().values()).enumerate() {
            let Some(key) = key else { continue };
            let row = super::change::row_bytes(&rows, i);
            side.touch(key);
            match side.index.get_mut(key) {
                Some(bucket) => {
                    bucket.add(row, *w);
                    if bucket.is_empty() {
                        side.index.remove(key);
                    }
                }
                None if *w != 0 => {
                    side.index.insert(key.into(), Bucket::One(row.into(), *w));
                }
                None => {}
            }
        }
        self.stats.state_touched += delta.num_rows() as u64;
        Ok(())
    }
}

impl Operator for JoinOperator {
    fn describe(&self) -> String {
        let on: Vec<String> = self
            .left
            .keys
            .iter()
            .zip(&self.right.keys)
            .map(|(l, r)| format!("{l} = {r}"))
            .collect();
        let kind = format!("{:?}", self.kind).to_lowercase();
        let mut text = match &self.filter {
            Some(f) => format!("Join {kind} on=[{}] filter={f}", on.join(", ")),
            None => format!("Join {kind} on=[{}]", on.join(", ")),
        };
        if !self.expiries.is_empty() {
            let bounded: Vec<String> = self
                .expiries
                .iter()
                .map(|e| {
                    let side = if e.bound.left { "left" } else { "right" };
                    let name = self.side(e.bound.left).schema.field(e.bound.column).name();
                    format!("{side}.{name}")
                })
                .collect();
            text.push_str(&format!(" expires=[{}]", bounded.join(", ")));
        }
        text
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, inputs: &[Option<ChangeBatch>]) -> Result<Option<ChangeBatch>> {
        let dl = inputs.first().cloned().flatten();
        let dr = inputs.get(1).cloned().flatten();
        let lkeys = match &dl {
            Some(d) => self.key_rows(&self.left.keys.clone(), d)?,
            None => KeyRows::default(),
        };
        let rkeys = match &dr {
            Some(d) => self.key_rows(&self.right.keys.clone(), d)?,
            None => KeyRows::default(),
        };
        if let Some((left, matched)) = self.kind.filtering() {
            return self.step_filtering(left, matched, dl, dr, lkeys, rkeys);
        }
        let pad_left = matches!(self.kind, JoinKind::Left | JoinKind::Full)
            .then(|| self.pad_before(true, &[&lkeys, &rkeys], false));
        let pad_right = matches!(self.kind, JoinKind::Right | JoinKind::Full)
            .then(|| self.pad_before(false, &[&lkeys, &rkeys], false));
        let mut parts = Vec::new();
        if let Some(dl) = &dl {
            self.stats.rows_in += dl.num_rows() as u64;
            if let Some(out) = self.probe(dl, &lkeys, true)? {
                parts.push(out);
            }
            self.absorb(dl, &lkeys, true)?;
            self.track(dl, &lkeys, true)?;
        }
        if let Some(dr) = &dr {
            self.stats.rows_in += dr.num_rows() as u64;
            if let Some(out) = self.probe(dr, &rkeys, false)? {
                parts.push(out);
            }
            self.absorb(dr, &rkeys, false)?;
            self.track(dr, &rkeys, false)?;
        }
        if let Some(filter) = &self.filter {
            if !parts.is_empty() {
                let joined = ChangeBatch::concat(self.schema.clone(), &parts)?;
                let mask = evaluate_predicate(filter, joined.data())?;
                parts = vec![joined.filter(&mask)?];
            }
        }
        if let Some(before) = pad_left {
            let delta = dl.as_ref().map(|d| (d, &lkeys));
            if let Some(out) = self.pad_after(true, before, delta)? {
                parts.push(out);
            }
        }
        if let Some(before) = pad_right {
            let delta = dr.as_ref().map(|d| (d, &rkeys));
            if let Some(out) = self.pad_after(false, before, delta)? {
                parts.push(out);
            }
        }
        if parts.is_empty() {
            return Ok(None);
        }
        let out = ChangeBatch::concat(self.schema.clone(), &parts)?;
        self.stats.rows_out += out.num_rows() as u64;
        Ok(Some(out))
    }

    fn stats(&self) -> OperatorStats {
        self.stats
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn checkpointable(&self) -> bool {
        true
    }

    fn track_changes(&mut self) {
        for side in [&mut self.left, &mut self.right] {
            side.changed = Some(HashSet::with_hasher(RandomState::default()));
        }
    }

    /// Each key of each side is one entry: a side tag (0 left, 1 right)
    /// and the join key, holding the side's rows of that key with their
    /// weights.
    fn checkpoint(&mut self, out: &mut StateChanges) -> Result<()> {
        self.left.checkpoint(0, out);
        self.right.checkpoint(1, out);
        Ok(())
    }

    /// Puts the rows back by joining them in again: the left side's into
    /// an empty right side, then the right side's. What that emits is the
    /// output the view already holds, and is dropped.
    fn restore(&mut self, entries: Vec<StateEntry>) -> Result<()> {
        let mut left: Vec<&[u8]> = Vec::new();
        let mut right: Vec<&[u8]> = Vec::new();
        for (key, value) in &entries {
            match key.first() {
                Some(0) => left.push(value),
                Some(1) => right.push(value),
                _ => {
                    return Err(MillraceError::storage(
                        "a checkpointed join entry has no side tag",
                    ))
                }
            }
        }
        let left = self.left.decode(&left)?;
        let right = self.right.decode(&right)?;
        super::operator::replay(self, vec![vec![left, None], vec![None, right]])
    }

    fn advance(
        &mut self,
        inputs: &[&Watermarks],
        _output: &Watermarks,
    ) -> Result<Option<ChangeBatch>> {
        if !self.expiries.is_empty() {
            self.expire(inputs)?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::stream::pretty::{from_pretty, to_pretty_lines};

    /// Left columns then right columns.
    fn joined_schema(left: &SchemaRef, right: &SchemaRef) -> SchemaRef {
        let fields: Vec<Field> = left
            .fields()
            .iter()
            .chain(right.fields().iter())
            .map(|f| f.as_ref().clone())
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// A join of `I T` and `I I` batches on their first columns.
    fn join_of(kind: JoinKind) -> JoinOperator {
        let left = from_pretty("I T").unwrap().schema();
        let right = from_pretty("I I").unwrap().schema();
        let schema = if kind.filtering().is_some() {
            left.clone()
        } else {
            joined_schema(&left, &right)
        };
        on_first_columns(&left, &right, None, schema)
            .with_kind(kind)
            .unwrap()
    }

    /// A join of `left` and `right` on their first columns.
    fn on_first_columns(
        left: &SchemaRef,
        right: &SchemaRef,
        filter: Option<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    ) -> JoinOperator {
        JoinOperator::try_new(
            left,
            right,
            vec![Arc::new(Column::new("c0", 0))],
            vec![Arc::new(Column::new("c0", 0))],
            false,
            filter,
            schema,
        )
        .unwrap()
    }

    fn join() -> JoinOperator {
        join_of(JoinKind::Inner)
    }

    #[test]
    fn an_interval_join_drops_rows_that_can_no_longer_match() {
        use crate::stream::watermark::{Mark, Watermarks};
        use datafusion::common::ScalarValue;
        use datafusion::logical_expr::Operator as BinaryOp;
        use datafusion::physical_expr::expressions::binary;
        // Left (k, t), right (k, start): left.t >= right.start.
        let left = from_pretty("I I").unwrap().schema();
        let right = from_pretty("I I").unwrap().schema();
        let schema = joined_schema(&left, &right);
        let filter = binary(
            Arc::new(Column::new("c1", 1)),
            BinaryOp::GtEq,
            Arc::new(Column::new("c1", 3)),
            &schema,
        )
        .unwrap();
        let make = || {
            on_first_columns(&left, &right, Some(filter.clone()), schema.clone())
                .with_state_bounds(vec![StateBound {
                    left: true,
                    column: 1,
                    by: vec![(0, 1), (1, 1)],
                }])
                .unwrap()
        };
        let mut op = make();
        op.track_changes();
        // The checkpointed entries, as a store holds them.
        let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut checkpoint = |op: &mut JoinOperator| {
            let mut changes = StateChanges::default();
            op.checkpoint(&mut changes).unwrap();
            for (k, v) in changes.ops() {
                match v {
                    Some(v) => store.insert(k.to_vec(), v.to_vec()),
                    None => store.remove(k),
                };
            }
            store.clone()
        };
        step(
            &mut op,
            Some("I I\n 1 5 +1\n 1 15 +1"),
            Some("I I\n 1 0 +1"),
        );
        assert_eq!(op.state_rows(), (2, 1));
        checkpoint(&mut op);
        let mark = |v: i64| {
            let mut m = Watermarks::none();
            m.advance(1, Mark::Value(ScalarValue::Int64(Some(v))));
            m
        };
        // Right has no watermark yet: nothing can go.
        op.advance(&[&mark(20), &Watermarks::none()], &Watermarks::none())
            .unwrap();
        assert_eq!(op.state_rows(), (2, 1));
        // Left rows before 10 can meet no right row from now on.
        op.advance(&[&mark(20), &mark(10)], &Watermarks::none())
            .unwrap();
        assert_eq!(op.state_rows(), (1, 1));
        // The dropped row leaves the checkpoint too.
        let stored = checkpoint(&mut op);
        let mut restored = make();
        restored.restore(stored.into_iter().collect()).unwrap();
        assert_eq!(restored.state_rows(), (1, 1));
        for op in [&mut op, &mut restored] {
            assert_eq!(
                step(op, None, Some("I I\n 1 12 +1")),
                vec!["1 15 1 12 | +1"]
            );
        }
    }

    #[test]
    fn a_left_join_drops_keys_behind_both_watermarks_and_keeps_their_padding() {
        use crate::stream::watermark::{Mark, Watermarks};
        use datafusion::common::ScalarValue;
        // Left (k, t) LEFT JOIN right (k, t) ON both columns.
        let left = from_pretty("I I").unwrap().schema();
        let right = from_pretty("I I").unwrap().schema();
        let schema = joined_schema(&left, &right);
        let keys = || -> Vec<Arc<dyn PhysicalExpr>> {
            vec![
                Arc::new(Column::new("c0", 0)),
                Arc::new(Column::new("c1", 1)),
            ]
        };
        let bound = |left: bool| StateBound {
            left,
            column: 1,
            by: vec![(0, 1), (1, 1)],
        };
        let mut op = JoinOperator::try_new(&left, &right, keys(), keys(), false, None, schema)
            .unwrap()
            .with_kind(JoinKind::Left)
            .unwrap()
            .with_state_bounds(vec![bound(true), bound(false)])
            .unwrap();
        assert_eq!(
            step(
                &mut op,
                Some("I I\n 1 5 +1\n 1 15 +1\n 2 5 +1"),
                Some("I I\n 2 5 +1")
            ),
            vec!["1 15 . . | +1", "1 5 . . | +1", "2 5 2 5 | +1"]
        );
        assert_eq!(op.state_rows(), (3, 1));
        let mark = |v: i64| {
            let mut m = Watermarks::none();
            m.advance(1, Mark::Value(ScalarValue::Int64(Some(v))));
            m
        };
        // One side's watermark alone moves nothing.
        let emitted = op
            .advance(&[&mark(10), &Watermarks::none()], &Watermarks::none())
            .unwrap();
        assert!(emitted.is_none());
        assert_eq!(op.state_rows(), (3, 1));
        // Keys at t = 5 are behind both: they leave both sides, padded or
        // matched, and nothing is emitted.
        let emitted = op
            .advance(&[&mark(10), &mark(10)], &Watermarks::none())
            .unwrap();
        assert!(emitted.is_none());
        assert_eq!(op.state_rows(), (1, 0));
        // The key still held is maintained as before.
        assert_eq!(
            step(&mut op, None, Some("I I\n 1 15 +1")),
            vec!["1 15 . . | -1", "1 15 1 15 | +1"]
        );
        assert_eq!(
            step(&mut op, Some("I I\n 1 15 -1"), None),
            vec!["1 15 1 15 | -1"]
        );
    }

    fn step(op: &mut JoinOperator, left: Option<&str>, right: Option<&str>) -> Vec<String> {
        let l = left.map(|t| from_pretty(t).unwrap());
        let r = right.map(|t| from_pretty(t).unwrap());
        op.step(&[l, r])
            .unwrap()
            .map(|b| to_pretty_lines(&b).unwrap())
            .unwrap_or_default()
    }

    #[test]
    fn weights_multiply_and_both_sides_update() {
        let mut op = join();
        assert!(step(&mut op, Some("I T\n 1 a +2\n 2 b +1"), None).is_empty());
        assert_eq!(
            step(&mut op, None, Some("I I\n 1 10 +1\n 3 30 +1")),
            vec!["1 a 1 10 | +2"]
        );
        // Same epoch on both sides: dL ⋈ R + (L + dL) ⋈ dR.
        assert_eq!(
            step(
                &mut op,
                Some("I T\n 1 a -1\n 3 c +1"),
                Some("I I\n 1 11 +1")
            ),
            vec!["1 a 1 10 | -1", "1 a 1 11 | +1", "3 c 3 30 | +1"]
        );
    }

    #[test]
    fn null_keys_never_match() {
        let mut op = join();
        step(&mut op, Some("I T\n . a +1"), None);
        assert!(step(&mut op, None, Some("I I\n . 5 +1")).is_empty());
    }

    #[test]
    fn left_join_pads_unmatched_rows_and_retracts_the_padding_on_a_match() {
        let mut op = join_of(JoinKind::Left);
        assert_eq!(
            step(&mut op, Some("I T\n 1 a +1\n . n +1"), None),
            vec![". n . . | +1", "1 a . . | +1"]
        );
        // The first match retracts the padded row; a second adds a pair.
        assert_eq!(
            step(&mut op, None, Some("I I\n 1 10 +1")),
            vec!["1 a . . | -1", "1 a 1 10 | +1"]
        );
        assert_eq!(
            step(&mut op, None, Some("I I\n 1 11 +1")),
            vec!["1 a 1 11 | +1"]
        );
        // A new left row of a matched key is matched; the last right row
        // leaving brings the padding back for both.
        assert_eq!(
            step(
                &mut op,
                Some("I T\n 1 b +1"),
                Some("I I\n 1 10 -1\n 1 11 -1")
            ),
            vec![
                "1 a . . | +1",
                "1 a 1 10 | -1",
                "1 a 1 11 | -1",
                "1 b . . | +1"
            ]
        );
    }

    #[test]
    fn full_join_pads_both_sides() {
        let mut op = join_of(JoinKind::Full);
        assert_eq!(
            step(&mut op, Some("I T\n 1 a +1"), Some("I I\n 2 20 +1")),
            vec![". . 2 20 | +1", "1 a . . | +1"]
        );
        assert_eq!(
            step(&mut op, Some("I T\n 2 b +1"), None),
            vec![". . 2 20 | -1", "2 b 2 20 | +1"]
        );
    }

    #[test]
    fn semi_and_anti_joins_follow_whether_a_key_has_matches() {
        let mut semi = join_of(JoinKind::LeftSemi);
        let mut anti = join_of(JoinKind::LeftAnti);
        // (left delta, right delta, semi output, anti output)
        type Epoch<'a> = (Option<&'a str>, Option<&'a str>, Vec<&'a str>, Vec<&'a str>);
        let epochs: [Epoch; 4] = [
            (
                Some("I T\n 1 a +1\n 2 b +2\n . n +1"),
                None,
                vec![],
                vec![". n | +1", "1 a | +1", "2 b | +2"],
            ),
            // Two matches for key 1: the semi join emits its row once.
            (
                None,
                Some("I I\n 1 10 +1\n 1 11 +1"),
                vec!["1 a | +1"],
                vec!["1 a | -1"],
            ),
            // One match leaves: nothing changes; the last leaves: back.
            (None, Some("I I\n 1 10 -1"), vec![], vec![]),
            (
                None,
                Some("I I\n 1 11 -1"),
                vec!["1 a | -1"],
                vec!["1 a | +1"],
            ),
        ];
        for (l, r, want_semi, want_anti) in epochs {
            assert_eq!(step(&mut semi, l, r), want_semi);
            assert_eq!(step(&mut anti, l, r), want_anti);
        }
    }

    #[test]
    fn a_restored_join_goes_on_exactly_like_the_original() {
        let b = |t: &str| Some(from_pretty(t).unwrap());
        let epochs = vec![
            vec![b("I T\n 1 a +1\n 2 b +1"), None],
            vec![None, b("I I\n 1 10 +1\n 3 30 +1")],
            vec![b("I T\n 3 c +1\n 1 a -1"), b("I I\n 2 20 +2")],
            vec![b("I T\n 1 z +1"), b("I I\n 3 30 -1")],
            vec![b("I T\n 2 b -1"), b("I I\n 1 11 +1")],
        ];
        for kind in [JoinKind::Inner, JoinKind::Full, JoinKind::LeftAnti] {
            crate::stream::operator::checkpoint_testing::assert_restores_exactly(
                || Box::new(join_of(kind)),
                &epochs,
            );
        }
    }
}
