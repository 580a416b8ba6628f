//! Lowering: turns an optimized DataFusion [`LogicalPlan`] into a
//! [`Dataflow`] of incremental operators.
//!
//! The plan is first checked by small named passes ([`reject_volatile`]),
//! then walked once, bottom-up, emitting one operator per plan node. Plan
//! nodes that only rename (`SubqueryAlias`) or order an unordered result
//! (`Sort` without a limit) emit nothing. Anything the engine cannot maintain
//! incrementally is refused with [`MillraceError::NotSupported`] naming the
//! construct; it is never computed wrongly.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, NullEquality, ScalarValue};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Distinct, Expr, JoinType, LogicalPlan};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};

use super::aggregate::{AggregateKind, AggregateOperator, AggregateSpec};
use super::change::batch_from_columns;
use super::constant::ConstantOperator;
use super::filter::FilterOperator;
use super::graph::{Dataflow, NodeInput};
use super::join::{JoinKind, JoinOperator, StateBound};
use super::operator::Operator;
use super::over::OverOperator;
use super::partition::PartitionedOperator;
use super::project::ProjectOperator;
use super::scan::ScanOperator;
use super::temporal::{
    clock_comparison, contains_view_clock, describe_expr, TemporalBound, TemporalFilterOperator,
    INSTANT_FUNCTIONS,
};
use super::topn::{Ranking, TopNOperator, TopNSpec};
use super::union::UnionOperator;
use super::watermark::{
    MarkMap, RelationMarks, WatermarkEntry, WatermarkProgress, WatermarkRule, WatermarkTracker,
};
use crate::error::{MillraceError, Result};

/// Worker threads each keyed stateful operator is split across, unless
/// `MILLRACE_WORKERS` says otherwise.
pub const DEFAULT_WORKERS: usize = 2;

/// Worker threads per keyed stateful operator.
pub fn workers() -> usize {
    std::env::var("MILLRACE_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_WORKERS)
        .clamp(1, 64)
}

/// Builds the dataflow that maintains `plan` incrementally. Table scans
/// become inputs named by the scanned relation's bare table name.
/// `relation_grows` says which relations only ever grow (see
/// [`is_append_only`]); operators over growing inputs keep less state.
pub fn lower_plan(plan: &LogicalPlan, relation_grows: &dyn Fn(&str) -> bool) -> Result<Dataflow> {
    lower_plan_marked(
        plan,
        &RelationInfo {
            grows: relation_grows,
            marks: &|_| RelationMarks::None,
            keyed: &|_| false,
        },
        false,
    )
}

/// What lowering needs to know about the relations a plan reads.
pub struct RelationInfo<'a> {
    /// Whether a relation only ever grows (inserts, no retractions).
    pub grows: &'a dyn Fn(&str) -> bool,
    /// Which relations declare a watermark, and which columns of the views
    /// read carry one.
    pub marks: &'a dyn Fn(&str) -> RelationMarks,
    /// Whether a relation is a keyed source: its batches are records with
    /// their keys ([`super::upsert`]), which an upsert turns into changes.
    pub keyed: &'a dyn Fn(&str) -> bool,
}

/// [`lower_plan`] for inputs that may carry watermarks or be keyed
/// sources, as `relations` says. With `emit_on_window_close`, the view's rows are held back
/// until the watermark of a window column of its output passes them;
/// refused when its output has no such column.
pub fn lower_plan_marked(
    plan: &LogicalPlan,
    relations: &RelationInfo<'_>,
    emit_on_window_close: bool,
) -> Result<Dataflow> {
    reject_volatile(plan)?;
    let mut lowering = Lowering {
        graph: Dataflow::new(),
        props: ExecutionProps::new(),
        workers: workers(),
        relation_grows: relations.grows,
        relation_marks: relations.marks,
        relation_keyed: relations.keyed,
        upserts: HashMap::new(),
        shared: HashMap::new(),
        trackers: Vec::new(),
        rank_bounds: Vec::new(),
    };
    let output = lowering.node(plan)?;
    if emit_on_window_close {
        let columns = lowering.graph.marked_columns(output).to_vec();
        let Some(&column) = columns.first() else {
            return Err(MillraceError::plan(
                "EMIT ON WINDOW CLOSE needs a column of the view's output that carries a watermark: select the window_start or window_end of a TUMBLE or HOP over a relation declared with WATERMARK FOR, and group by it",
            ));
        };
        let op = super::emit::EmitOnCloseOperator::try_new(arrow_schema(plan.schema()), column)?;
        let rules = columns
            .iter()
            .map(|&c| WatermarkRule::identity(c, 0, c))
            .collect();
        lowering
            .graph
            .add_marked(Box::new(op), vec![NodeInput::Node(output)], rules, vec![])?;
    }
    let Lowering {
        mut graph,
        trackers,
        ..
    } = lowering;
    graph.set_watermark_entries(trackers);
    Ok(graph)
}

/// The one column `e` is non-decreasing in, and whether `e` is that column
/// itself: a column, a cast of it to a time or integer type, plus or minus
/// a constant, `date_bin(constant, it [, constant])` or
/// `date_trunc(constant, it)`.
pub(crate) fn monotone_in(e: &Expr, schema: &DFSchema) -> Option<(usize, bool)> {
    use datafusion::logical_expr::Operator as BinaryOp;
    let constant = |e: &Expr| matches!(e, Expr::Literal(..));
    match e {
        Expr::Column(c) => schema.index_of_column(c).ok().map(|i| (i, true)),
        Expr::Alias(a) => monotone_in(&a.expr, schema),
        Expr::Cast(c) if order_preserving_target(c.field.data_type()) => {
            monotone_in(&c.expr, schema).map(|(i, _)| (i, false))
        }
        Expr::BinaryExpr(b) => match b.op {
            BinaryOp::Plus if constant(&b.right) => {
                monotone_in(&b.left, schema).map(|(i, _)| (i, false))
            }
            BinaryOp::Plus if constant(&b.left) => {
                monotone_in(&b.right, schema).map(|(i, _)| (i, false))
            }
            BinaryOp::Minus if constant(&b.right) => {
                monotone_in(&b.left, schema).map(|(i, _)| (i, false))
            }
            _ => None,
        },
        Expr::ScalarFunction(f) => {
            let name = f.func.name().to_ascii_lowercase();
            let args = &f.args;
            let time = match name.as_str() {
                "date_bin" if (2..=3).contains(&args.len()) => 1,
                "date_trunc" if args.len() == 2 => 1,
                _ => return None,
            };
            let others_constant = args
                .iter()
                .enumerate()
                .all(|(i, a)| i == time || constant(a));
            if !others_constant {
                return None;
            }
            monotone_in(&args[time], schema).map(|(i, _)| (i, false))
        }
        _ => None,
    }
}

/// Whether casting a time or integer value to `t` keeps its order.
fn order_preserving_target(t: &datafusion::arrow::datatypes::DataType) -> bool {
    use datafusion::arrow::datatypes::DataType;
    matches!(
        t,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 | DataType::Int64
    )
}

/// The first expression node anywhere in `plan` (subqueries included)
/// that `found` describes.
fn find_expression(
    plan: &LogicalPlan,
    mut found: impl FnMut(&Expr) -> Option<String>,
) -> Result<Option<String>> {
    let mut first: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            e.apply(|x| {
                first = found(x);
                Ok(match first {
                    Some(_) => TreeNodeRecursion::Stop,
                    None => TreeNodeRecursion::Continue,
                })
            })?;
            if first.is_some() {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(first)
}

/// Pass: refuses volatile functions (`random()`...), whose re-evaluation on a
/// delete would not retract what the insert produced.
pub fn reject_volatile(plan: &LogicalPlan) -> Result<()> {
    // The view's clock is volatile by design (see `temporal`).
    let volatile =
        |x: &Expr| (x.is_volatile_node() && !contains_view_clock(x)).then(|| x.to_string());
    match find_expression(plan, volatile)? {
        Some(e) => Err(MillraceError::not_supported(format!(
            "volatile function in a materialized view: {e}"
        ))),
        None => Ok(()),
    }
}

/// Functions that read the clock as a date or a time of day, which a
/// temporal filter does not accept. They and the instant functions
/// ([`super::temporal::INSTANT_FUNCTIONS`]) are stable within one query,
/// so the optimizer folds them into the time the view was created.
const CALENDAR_CLOCK_FUNCTIONS: &[&str] = &["current_date", "current_time", "localtime"];

/// Pass (on the plan before optimization, after
/// [`super::temporal::rewrite_clock`]): refuses the functions that read the
/// clock and are not part of a temporal filter, whose value in a view would
/// be the creation time forever.
pub fn reject_clock(plan: &LogicalPlan) -> Result<()> {
    let clock = |x: &Expr| match x {
        Expr::ScalarFunction(f) if !contains_view_clock(x) => {
            let name = f.func.name().to_ascii_lowercase();
            (INSTANT_FUNCTIONS.contains(&name.as_str())
                || CALENDAR_CLOCK_FUNCTIONS.contains(&name.as_str()))
            .then_some(name)
        }
        _ => None,
    };
    let found = find_expression(plan, clock)?;
    match found {
        Some(f) => Err(MillraceError::not_supported(format!(
            "{f}() in a materialized view outside a temporal filter: it would be evaluated once, when the view is created, and never again. A WHERE condition may compare now() with a timestamp of the row (ts > now() - INTERVAL '1' HOUR); elsewhere, apply the clock in the SELECT that reads the view"
        ))),
        None => Ok(()),
    }
}

/// Sort expressions with their directions.
type SortKeys = Vec<(
    Arc<dyn PhysicalExpr>,
    datafusion::arrow::compute::SortOptions,
)>;

struct Lowering<'a> {
    graph: Dataflow,
    props: ExecutionProps,
    workers: usize,
    relation_grows: &'a dyn Fn(&str) -> bool,
    relation_marks: &'a dyn Fn(&str) -> RelationMarks,
    relation_keyed: &'a dyn Fn(&str) -> bool,
    /// The upsert node of each keyed source read, shared by its scans.
    upserts: HashMap<String, usize>,
    /// The graph node of each scan, projection, filter, union and
    /// aggregate lowered so far, by what it computes, so that a subquery
    /// written twice is maintained once.
    shared: HashMap<SharedKey, usize>,
    /// The declared watermarks this graph applies, one per relation.
    trackers: Vec<WatermarkEntry>,
    /// Rank ranges found in filters over window nodes, by the window
    /// node's address, for the window's top-N operator to keep only them.
    rank_bounds: Vec<(*const LogicalPlan, (u64, u64))>,
}

/// What a plan node computes, for sharing one graph node between copies of
/// a subquery (q5 reads the same windowed count twice): the node's kind,
/// the graph nodes of its inputs, and its expressions with every column
/// named by its position in the input and aliases removed, since the
/// optimizer names two copies' columns differently (`__common_expr_1`,
/// `__common_expr_6`). Two nodes with equal keys compute the same changes
/// from the same input changes. Only node kinds whose whole meaning is
/// these expressions get a key; anything else (joins, windows with rank
/// bounds, top-N) is lowered once per occurrence.
#[derive(PartialEq, Eq, Hash)]
struct SharedKey {
    kind: &'static str,
    inputs: Vec<usize>,
    exprs: Vec<Expr>,
    detail: String,
}

impl SharedKey {
    /// The key of a node of `kind` over graph nodes `inputs` computing
    /// `exprs` over rows of `schema`; `None` when a column cannot be placed
    /// (the node is then not shared).
    fn positional(
        kind: &'static str,
        inputs: Vec<usize>,
        exprs: &[Expr],
        schema: &DFSchema,
    ) -> Option<SharedKey> {
        let exprs = exprs
            .iter()
            .map(|e| {
                let e = e.clone().unalias_nested().data;
                e.transform_up(|e| match e {
                    Expr::Column(c) => {
                        let position = schema.index_of_column(&c)?;
                        Ok(datafusion::common::tree_node::Transformed::yes(
                            Expr::Column(datafusion::common::Column::from_name(format!(
                                "#{position}"
                            ))),
                        ))
                    }
                    other => Ok(datafusion::common::tree_node::Transformed::no(other)),
                })
                .map(|t| t.data)
                .ok()
            })
            .collect::<Option<Vec<_>>>()?;
        Some(SharedKey {
            kind,
            inputs,
            exprs,
            detail: String::new(),
        })
    }
}

fn arrow_schema(schema: &DFSchema) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

impl Lowering<'_> {
    fn expr(&self, e: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        if let Some(what) = unsupported_expr(e) {
            return Err(MillraceError::not_supported(format!(
                "{what} in a materialized view"
            )));
        }
        Ok(create_physical_expr(
            e,
            schema,
            &self.props,
            &PhysicalPlanningContext::default(),
        )?)
    }

    /// The graph node already computing what `key` describes.
    fn shared_node(&self, key: &Option<SharedKey>) -> Option<usize> {
        key.as_ref().and_then(|k| self.shared.get(k).copied())
    }

    /// Records that graph node `id` computes what `key` describes.
    fn share(&mut self, key: Option<SharedKey>, id: usize) -> usize {
        if let Some(k) = key {
            self.shared.insert(k, id);
        }
        id
    }

    /// The upsert node that turns keyed source `relation`'s records into
    /// changes, added at its first scan.
    fn upsert(&mut self, relation: &str, schema: &SchemaRef) -> Result<usize> {
        if let Some(&id) = self.upserts.get(relation) {
            return Ok(id);
        }
        let op = super::upsert::UpsertOperator::try_new(relation.to_string(), schema.clone())?;
        let id = self.graph.add(
            Box::new(op),
            vec![NodeInput::Relation(relation.to_string())],
        )?;
        self.upserts.insert(relation.to_string(), id);
        Ok(id)
    }

    fn node(&mut self, plan: &LogicalPlan) -> Result<usize> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(MillraceError::not_supported("LIMIT in a materialized view"));
                }
                let full = scan.source.schema();
                let projection = scan
                    .projection
                    .clone()
                    .unwrap_or_else(|| (0..full.fields().len()).collect());
                let schema = arrow_schema(&scan.projected_schema);
                let relation = scan.table_name.table().to_string();
                let key = Some(SharedKey {
                    kind: "scan",
                    inputs: vec![],
                    exprs: scan.filters.clone(),
                    detail: format!("{relation} {projection:?}"),
                });
                if let Some(id) = self.shared_node(&key) {
                    return Ok(id);
                }
                let mut op =
                    ScanOperator::try_new(relation.clone(), projection.clone(), schema.clone())?;
                let mut rules = Vec::new();
                let mut own = Vec::new();
                match (self.relation_marks)(&relation) {
                    RelationMarks::None => {}
                    RelationMarks::Declared(spec) => {
                        // Several scans of one relation apply the same
                        // watermark to the same rows: only the first one's
                        // late rows are counted.
                        let progress = if self.trackers.iter().any(|t| t.relation == relation) {
                            Arc::new(WatermarkProgress::default())
                        } else {
                            let progress = Arc::new(WatermarkProgress::default());
                            self.trackers.push(WatermarkEntry {
                                relation: relation.clone(),
                                spec: spec.clone(),
                                progress: progress.clone(),
                            });
                            progress
                        };
                        op = op.with_watermark(WatermarkTracker::new(spec.clone(), progress));
                        if let Some(c) = op.marked_column() {
                            own.push(c);
                            // The end of the relation's stream.
                            rules.push(WatermarkRule::identity(c, 0, spec.column));
                        }
                    }
                    RelationMarks::Columns(columns) => {
                        for (out, source) in projection.iter().enumerate() {
                            if columns.contains(source) {
                                rules.push(WatermarkRule::identity(out, 0, *source));
                            }
                        }
                    }
                }
                let input = if (self.relation_keyed)(&relation) {
                    NodeInput::Node(self.upsert(&relation, &full)?)
                } else {
                    NodeInput::Relation(relation)
                };
                let mut id = self
                    .graph
                    .add_marked(Box::new(op), vec![input], rules, own)?;
                if let Some(predicate) = scan
                    .filters
                    .iter()
                    .cloned()
                    .reduce(datafusion::logical_expr::and)
                {
                    id = self.filter(&predicate, &scan.projected_schema, id)?;
                }
                Ok(self.share(key, id))
            }
            LogicalPlan::Projection(p) => {
                let input = self.node(&p.input)?;
                let key = SharedKey::positional("project", vec![input], &p.expr, p.input.schema());
                if let Some(id) = self.shared_node(&key) {
                    return Ok(id);
                }
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| self.expr(e, p.input.schema()))
                    .collect::<Result<Vec<_>>>()?;
                let op = ProjectOperator::try_new(exprs.clone(), arrow_schema(&p.schema))?;
                let rules = self.monotone_rules(input, &p.expr, &exprs, p.input.schema());
                let id = self.graph.add_marked(
                    Box::new(op),
                    vec![NodeInput::Node(input)],
                    rules,
                    vec![],
                )?;
                Ok(self.share(key, id))
            }
            LogicalPlan::Filter(f) => {
                if let Some((window, bounds)) = rank_filter(f) {
                    self.rank_bounds
                        .push((window as *const LogicalPlan, bounds));
                }
                let input = self.node(&f.input)?;
                let key = SharedKey::positional(
                    "filter",
                    vec![input],
                    std::slice::from_ref(&f.predicate),
                    f.input.schema(),
                );
                if let Some(id) = self.shared_node(&key) {
                    return Ok(id);
                }
                let id = self.filter(&f.predicate, f.input.schema(), input)?;
                Ok(self.share(key, id))
            }
            LogicalPlan::Aggregate(a) if first_row_order(a).is_some() => self.first_rows(a),
            LogicalPlan::Aggregate(a) => {
                let input = self.node(&a.input)?;
                let in_schema = a.input.schema();
                let key = SharedKey::positional(
                    "aggregate",
                    vec![input],
                    &[a.group_expr.as_slice(), a.aggr_expr.as_slice()].concat(),
                    in_schema,
                )
                .map(|k| SharedKey {
                    detail: a.group_expr.len().to_string(),
                    ..k
                });
                if let Some(id) = self.shared_node(&key) {
                    return Ok(id);
                }
                let group_exprs = a
                    .group_expr
                    .iter()
                    .map(|g| {
                        if matches!(g, Expr::GroupingSet(_)) {
                            return Err(MillraceError::not_supported(
                                "GROUPING SETS / CUBE / ROLLUP in a materialized view",
                            ));
                        }
                        self.expr(g, in_schema)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let aggregates = a
                    .aggr_expr
                    .iter()
                    .map(|e| self.aggregate_spec(e, in_schema))
                    .collect::<Result<Vec<_>>>()?;
                let input_schema = arrow_schema(in_schema);
                let append_only = is_append_only(&a.input, self.relation_grows);
                let rules = self.monotone_rules(input, &a.group_expr, &group_exprs, in_schema);
                let expiry_column = rules.first().map(|r| r.output);
                let make = || -> Result<Box<dyn Operator>> {
                    let op = AggregateOperator::try_new(
                        group_exprs.clone(),
                        aggregates.clone(),
                        &input_schema,
                        arrow_schema(&a.schema),
                        append_only,
                    )?;
                    Ok(Box::new(match expiry_column {
                        Some(c) => op.with_watermark_column(c)?,
                        None => op,
                    }))
                };
                let op = self.maybe_partitioned(
                    make,
                    vec![group_exprs.clone()],
                    &group_exprs,
                    &input_schema,
                )?;
                let id = self
                    .graph
                    .add_marked(op, vec![NodeInput::Node(input)], rules, vec![])?;
                Ok(self.share(key, id))
            }
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let id = self.node(input)?;
                let schema = arrow_schema(input.schema());
                let group_exprs = (0..schema.fields().len())
                    .map(|i| {
                        Ok(
                            Arc::new(datafusion::physical_expr::expressions::Column::new(
                                schema.field(i).name(),
                                i,
                            )) as Arc<dyn PhysicalExpr>,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let append_only = is_append_only(input, self.relation_grows);
                let op = AggregateOperator::try_new(
                    group_exprs,
                    vec![],
                    &schema,
                    schema.clone(),
                    append_only,
                )?;
                self.graph.add(Box::new(op), vec![NodeInput::Node(id)])
            }
            LogicalPlan::Distinct(Distinct::On(_)) => Err(MillraceError::not_supported(
                "DISTINCT ON in a materialized view",
            )),
            LogicalPlan::Join(j) => {
                let kind = match j.join_type {
                    JoinType::Inner => JoinKind::Inner,
                    JoinType::Left => JoinKind::Left,
                    JoinType::Right => JoinKind::Right,
                    JoinType::Full => JoinKind::Full,
                    JoinType::LeftSemi | JoinType::LeftAnti | JoinType::RightSemi | JoinType::RightAnti
                        if j.null_aware =>
                    {
                        return Err(MillraceError::not_supported(
                            "NOT IN over a subquery whose values may be NULL, in a materialized view (use NOT EXISTS)",
                        ))
                    }
                    JoinType::LeftSemi => JoinKind::LeftSemi,
                    JoinType::LeftAnti => JoinKind::LeftAnti,
                    JoinType::RightSemi => JoinKind::RightSemi,
                    JoinType::RightAnti => JoinKind::RightAnti,
                    other => {
                        return Err(MillraceError::not_supported(format!(
                            "{other} join in a materialized view (inner, outer, semi and anti joins are maintained)"
                        )))
                    }
                };
                // Checked here, before the filter is planned against the
                // join's output schema, which for these joins lacks the
                // columns of the side the filter correlates with.
                if j.filter.is_some() && kind.filtering().is_some() {
                    return Err(MillraceError::not_supported(
                        "a subquery (semi or anti join) correlated by more than equal keys, in a materialized view",
                    ));
                }
                let left = self.node(&j.left)?;
                let right = self.node(&j.right)?;
                let left_keys =
                    j.on.iter()
                        .map(|(l, _)| self.expr(l, j.left.schema()))
                        .collect::<Result<Vec<_>>>()?;
                let right_keys =
                    j.on.iter()
                        .map(|(_, r)| self.expr(r, j.right.schema()))
                        .collect::<Result<Vec<_>>>()?;
                let filter = j
                    .filter
                    .as_ref()
                    .map(|f| self.expr(f, &j.schema))
                    .transpose()?;
                let left_schema = arrow_schema(j.left.schema());
                let (rules, bounds) = match kind {
                    JoinKind::Inner => self.join_watermarks(j, left, right),
                    // Outer joins take no condition beyond their equal keys
                    // (refused by the operator), so only those bound them.
                    JoinKind::Left | JoinKind::Right | JoinKind::Full if j.filter.is_none() => {
                        self.join_watermarks(j, left, right)
                    }
                    _ => (vec![], vec![]),
                };
                let make = || -> Result<Box<dyn Operator>> {
                    Ok(Box::new(
                        JoinOperator::try_new(
                            &left_schema,
                            &arrow_schema(j.right.schema()),
                            left_keys.clone(),
                            right_keys.clone(),
                            j.null_equality == NullEquality::NullEqualsNull,
                            filter.clone(),
                            arrow_schema(&j.schema),
                        )?
                        .with_kind(kind)?
                        .with_state_bounds(bounds.clone())?,
                    ))
                };
                let op = self.maybe_partitioned(
                    make,
                    vec![left_keys.clone(), right_keys.clone()],
                    &left_keys,
                    &left_schema,
                )?;
                self.graph.add_marked(
                    op,
                    vec![NodeInput::Node(left), NodeInput::Node(right)],
                    rules,
                    vec![],
                )
            }
            LogicalPlan::Union(u) => {
                let inputs = u
                    .inputs
                    .iter()
                    .map(|i| self.node(i))
                    .collect::<Result<Vec<_>>>()?;
                let key = Some(SharedKey {
                    kind: "union",
                    inputs: inputs.clone(),
                    exprs: vec![],
                    detail: String::new(),
                });
                if let Some(id) = self.shared_node(&key) {
                    return Ok(id);
                }
                let inputs: Vec<NodeInput> = inputs.into_iter().map(NodeInput::Node).collect();
                let op = UnionOperator::try_new(arrow_schema(&u.schema))?;
                // A column carries the least watermark of its inputs', when
                // every input has one.
                let rules = (0..u.schema.fields().len())
                    .filter_map(|c| {
                        let all = inputs.iter().all(|i| match i {
                            NodeInput::Node(n) => self.graph.marked_columns(*n).contains(&c),
                            NodeInput::Relation(_) => false,
                        });
                        all.then(|| WatermarkRule {
                            output: c,
                            sources: (0..inputs.len()).map(|i| (i, c)).collect(),
                            map: None,
                        })
                    })
                    .collect();
                let id = self.graph.add_marked(Box::new(op), inputs, rules, vec![])?;
                Ok(self.share(key, id))
            }
            LogicalPlan::SubqueryAlias(s) => self.node(&s.input),
            LogicalPlan::Sort(s) => match s.fetch {
                Some(n) => self.top_n(&s.input, &s.expr, 1, n as u64),
                // A materialized view is an unordered collection; ORDER BY
                // belongs to the SELECT that reads it.
                None => self.node(&s.input),
            },
            LogicalPlan::Limit(l) => {
                use datafusion::logical_expr::{FetchType, SkipType};
                let LogicalPlan::Sort(sort) = l.input.as_ref() else {
                    return Err(MillraceError::not_supported(
                        "LIMIT / OFFSET without ORDER BY in a materialized view (which rows it keeps would be arbitrary)",
                    ));
                };
                let (SkipType::Literal(skip), FetchType::Literal(fetch)) =
                    (l.get_skip_type()?, l.get_fetch_type()?)
                else {
                    return Err(MillraceError::not_supported(
                        "LIMIT / OFFSET other than constants in a materialized view",
                    ));
                };
                let first = skip as u64 + 1;
                let last = fetch.map_or(u64::MAX, |f| (skip + f) as u64);
                if last < first {
                    // LIMIT 0: always empty.
                    return self.top_n(&sort.input, &sort.expr, 1, 0);
                }
                self.top_n(&sort.input, &sort.expr, first, last)
            }
            LogicalPlan::EmptyRelation(e) => {
                let schema = arrow_schema(&e.schema);
                let rows = usize::from(e.produce_one_row);
                let columns = schema
                    .fields()
                    .iter()
                    .map(|f| Ok(ScalarValue::try_from(f.data_type())?.to_array_of_size(rows)?))
                    .collect::<Result<Vec<_>>>()?;
                let batch = batch_from_columns(schema, columns, rows)?;
                let op = ConstantOperator::try_new(batch)?;
                self.graph.add(Box::new(op), vec![])
            }
            LogicalPlan::Values(v) => {
                let schema = arrow_schema(&v.schema);
                let one_row = RecordBatch::try_new_with_options(
                    Arc::new(Schema::empty()),
                    vec![],
                    &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
                )?;
                let empty = DFSchema::empty();
                let mut columns = Vec::new();
                for (c, field) in schema.fields().iter().enumerate() {
                    let mut values = Vec::new();
                    for row in &v.values {
                        let e = self.expr(&row[c], &empty)?;
                        let array = e.evaluate(&one_row)?.into_array(1)?;
                        values.push(ScalarValue::try_from_array(&array, 0)?);
                    }
                    let array = ScalarValue::iter_to_array(values)?;
                    columns.push(datafusion::arrow::compute::cast(&array, field.data_type())?);
                }
                let batch = batch_from_columns(schema, columns, v.values.len())?;
                let op = ConstantOperator::try_new(batch)?;
                self.graph.add(Box::new(op), vec![])
            }
            LogicalPlan::Window(w) => self.ranking_window(plan, w),
            LogicalPlan::Unnest(_) => Err(MillraceError::not_supported(
                "UNNEST in a materialized view",
            )),
            LogicalPlan::RecursiveQuery(_) => Err(MillraceError::not_supported(
                "WITH RECURSIVE in a materialized view",
            )),
            other => Err(MillraceError::not_supported(format!(
                "{} in a materialized view",
                other.display()
            ))),
        }
    }

    /// The watermarks of an inner or outer join's output and the bounds on
    /// its state. An equal-key pair of columns that both carry watermarks gives
    /// both output columns the least of the two. Every comparison the
    /// condition implies, `x >= y` for `x` of one side and `y` of the other
    /// (each side of an equal key, `>=`, `>`, and the flipped `<=`, `<`),
    /// bounds `x`'s side when both carry watermarks.
    fn join_watermarks(
        &self,
        j: &datafusion::logical_expr::Join,
        left: usize,
        right: usize,
    ) -> (Vec<WatermarkRule>, Vec<StateBound>) {
        use datafusion::logical_expr::Operator as BinaryOp;
        let left_marked = self.graph.marked_columns(left);
        let right_marked = self.graph.marked_columns(right);
        if left_marked.is_empty() || right_marked.is_empty() {
            return (vec![], vec![]);
        }
        let nl = j.left.schema().fields().len();
        let column_of = |e: &Expr, schema: &DFSchema| match e {
            Expr::Column(c) => schema.index_of_column(c).ok(),
            _ => None,
        };
        // A join output column's position within its own side.
        let side = |i: usize| if i < nl { i } else { i - nl };
        let mut rules = Vec::new();
        // (x on the left?, x, y): the condition implies x >= y.
        let mut at_least: Vec<(bool, usize, usize)> = Vec::new();
        for (l, r) in &j.on {
            let (Some(lc), Some(rc)) = (
                column_of(l, j.left.schema()),
                column_of(r, j.right.schema()),
            ) else {
                continue;
            };
            at_least.push((true, lc, rc));
            at_least.push((false, rc, lc));
            if left_marked.contains(&lc) && right_marked.contains(&rc) {
                let sources = vec![(0, lc), (1, rc)];
                for output in [lc, nl + rc] {
                    rules.push(WatermarkRule {
                        output,
                        sources: sources.clone(),
                        map: None,
                    });
                }
            }
        }
        if let Some(filter) = &j.filter {
            for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
                let Expr::BinaryExpr(b) = conjunct else {
                    continue;
                };
                let (Some(a), Some(c)) = (
                    column_of(&b.left, &j.schema),
                    column_of(&b.right, &j.schema),
                ) else {
                    continue;
                };
                // Columns from opposite sides only, as (greater, smaller).
                let (big, small) = match b.op {
                    BinaryOp::Gt | BinaryOp::GtEq => (a, c),
                    BinaryOp::Lt | BinaryOp::LtEq => (c, a),
                    BinaryOp::Eq => {
                        for (x, y) in [(a, c), (c, a)] {
                            if (x < nl) != (y < nl) {
                                at_least.push((x < nl, side(x), side(y)));
                            }
                        }
                        continue;
                    }
                    _ => continue,
                };
                if (big < nl) == (small < nl) {
                    continue;
                }
                at_least.push((big < nl, side(big), side(small)));
            }
        }
        let mut bounds: Vec<StateBound> = Vec::new();
        for (x_left, x, y) in at_least {
            let (own, other) = if x_left {
                ((0, x), (1, y))
            } else {
                ((1, x), (0, y))
            };
            let marked = |(input, column): (usize, usize)| {
                if input == 0 {
                    left_marked.contains(&column)
                } else {
                    right_marked.contains(&column)
                }
            };
            if marked(own) && marked(other) {
                let bound = StateBound {
                    left: x_left,
                    column: x,
                    by: vec![own, other],
                };
                if !bounds.contains(&bound) {
                    bounds.push(bound);
                }
            }
        }
        (rules, bounds)
    }

    /// Adds `op`, which keeps its input's columns and rows' values (a
    /// filter), over node `input`: the input's watermarks pass through.
    /// Filters node `input` (rows of `schema`) by `predicate`: its
    /// conditions on the clock go to a temporal filter after the others.
    fn filter(&mut self, predicate: &Expr, schema: &DFSchema, input: usize) -> Result<usize> {
        let (timed, plain): (Vec<&Expr>, Vec<&Expr>) =
            datafusion::logical_expr::utils::split_conjunction(predicate)
                .into_iter()
                .partition(|c| contains_view_clock(c));
        let mut id = input;
        if let Some(p) = plain
            .into_iter()
            .cloned()
            .reduce(datafusion::logical_expr::and)
        {
            let p = self.expr(&p, schema)?;
            let op = FilterOperator::try_new(p, arrow_schema(schema))?;
            id = self.add_passthrough(Box::new(op), id)?;
        }
        if timed.is_empty() {
            return Ok(id);
        }
        let bounds = timed
            .iter()
            .map(|c| {
                let cmp = clock_comparison(c).ok_or_else(|| {
                    MillraceError::not_supported(format!(
                        "the condition {c} on now() in a materialized view"
                    ))
                })?;
                TemporalBound::try_new(
                    self.expr(cmp.row, schema)?,
                    schema.as_arrow(),
                    describe_expr(cmp.row),
                    cmp.op,
                    cmp.step,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let op = TemporalFilterOperator::try_new(bounds, arrow_schema(schema), self.graph.clock())?;
        // No watermark passes a temporal filter: it retracts rows that
        // are behind any watermark of its input.
        self.graph.add(Box::new(op), vec![NodeInput::Node(id)])
    }

    fn add_passthrough(&mut self, op: Box<dyn Operator>, input: usize) -> Result<usize> {
        let rules = self
            .graph
            .marked_columns(input)
            .iter()
            .map(|&c| WatermarkRule::identity(c, 0, c))
            .collect();
        self.graph
            .add_marked(op, vec![NodeInput::Node(input)], rules, vec![])
    }

    /// Watermark rules for output columns computed by `exprs` (`physical`,
    /// the same planned) over node `input`: an expression non-decreasing in
    /// one column that carries a watermark carries the watermark mapped by
    /// it.
    fn monotone_rules(
        &self,
        input: usize,
        exprs: &[Expr],
        physical: &[Arc<dyn PhysicalExpr>],
        schema: &DFSchema,
    ) -> Vec<WatermarkRule> {
        let marked = self.graph.marked_columns(input);
        if marked.is_empty() {
            return Vec::new();
        }
        let input_schema = arrow_schema(schema);
        exprs
            .iter()
            .zip(physical)
            .enumerate()
            .filter_map(|(out, (e, p))| {
                let (column, plain) = monotone_in(e, schema)?;
                if !marked.contains(&column) {
                    return None;
                }
                Some(WatermarkRule {
                    output: out,
                    sources: vec![(0, column)],
                    map: (!plain).then(|| MarkMap::new(p.clone(), &input_schema, column)),
                })
            })
            .collect()
    }

    /// `make()` split into `self.workers` copies by `keys` (one key list per
    /// input; `typed_keys` over `schema` give the key types), or a single
    /// copy when there is one worker or no key.
    /// `ORDER BY order LIMIT` over `input`: the rows ranked `first..=last`
    /// (no rank column). `last` 0 keeps nothing.
    fn top_n(
        &mut self,
        input: &LogicalPlan,
        order: &[datafusion::logical_expr::SortExpr],
        first: u64,
        last: u64,
    ) -> Result<usize> {
        let id = self.node(input)?;
        let schema = arrow_schema(input.schema());
        if last == 0 {
            let filter = FilterOperator::try_new(
                datafusion::physical_expr::expressions::lit(false),
                schema,
            )?;
            return self.graph.add(Box::new(filter), vec![NodeInput::Node(id)]);
        }
        let order = self.sort_exprs(order, input.schema())?;
        let op = TopNOperator::try_new(
            &schema,
            vec![],
            order,
            TopNSpec {
                ranking: None,
                first,
                last,
            },
            is_append_only(input, self.relation_grows),
            schema.clone(),
        )?;
        self.graph.add(Box::new(op), vec![NodeInput::Node(id)])
    }

    fn sort_exprs(
        &self,
        order: &[datafusion::logical_expr::SortExpr],
        schema: &DFSchema,
    ) -> Result<
        Vec<(
            Arc<dyn PhysicalExpr>,
            datafusion::arrow::compute::SortOptions,
        )>,
    > {
        order
            .iter()
            .map(|s| {
                Ok((
                    self.expr(&s.expr, schema)?,
                    datafusion::arrow::compute::SortOptions {
                        descending: !s.asc,
                        nulls_first: s.nulls_first,
                    },
                ))
            })
            .collect()
    }

    /// A window node computing one ranking function (`ROW_NUMBER`, `RANK`,
    /// `DENSE_RANK`): a top-N operator per partition, keeping the ranks a
    /// filter above asks for (every rank when none does). Other window
    /// functions go to [`Lowering::over`].
    fn ranking_window(
        &mut self,
        plan: &LogicalPlan,
        w: &datafusion::logical_expr::Window,
    ) -> Result<usize> {
        use datafusion::logical_expr::expr::WindowFunctionDefinition;
        let ranking = match w.window_expr.as_slice() {
            [expr] => match strip_alias(expr) {
                Expr::WindowFunction(f)
                    if f.params.args.is_empty() && f.params.filter.is_none() =>
                {
                    match &f.fun {
                        WindowFunctionDefinition::WindowUDF(udf) => Ranking::of(udf.name())
                            .map(|r| (r, f.params.partition_by.clone(), f.params.order_by.clone())),
                        _ => None,
                    }
                }
                _ => None,
            },
            _ => None,
        };
        let Some((ranking, partition_exprs, order_exprs)) = ranking else {
            return self.over(w);
        };
        let (first, last) = self
            .rank_bounds
            .iter()
            .find(|(p, _)| std::ptr::eq(*p, plan))
            .map(|(_, b)| *b)
            .unwrap_or((1, u64::MAX));
        let id = self.node(&w.input)?;
        let in_schema = w.input.schema();
        let input_schema = arrow_schema(in_schema);
        let (partition_by, order) = self.window_keys(&partition_exprs, &order_exprs, in_schema)?;
        let out_schema = arrow_schema(&w.schema);
        let append_only = is_append_only(&w.input, self.relation_grows);
        let expiry_column = self.watermarked_partition(id, &partition_exprs, in_schema);
        let make = || -> Result<Box<dyn Operator>> {
            let op = TopNOperator::try_new(
                &input_schema,
                partition_by.clone(),
                order.clone(),
                TopNSpec {
                    ranking: Some(ranking),
                    first,
                    last,
                },
                append_only,
                out_schema.clone(),
            )?;
            Ok(Box::new(match expiry_column {
                Some(c) => op.with_watermark_partition(c)?,
                None => op,
            }))
        };
        self.add_partitioned_marked(id, &partition_by, &input_schema, expiry_column, make)
    }

    /// A partition expression that is a plain column of input node `input`
    /// carrying a watermark: partitions behind it can no longer change.
    fn watermarked_partition(
        &self,
        input: usize,
        partition_exprs: &[Expr],
        schema: &DFSchema,
    ) -> Option<usize> {
        let marked = self.graph.marked_columns(input);
        partition_exprs.iter().find_map(|e| match e {
            Expr::Column(c) => schema
                .index_of_column(c)
                .ok()
                .filter(|i| marked.contains(i)),
            _ => None,
        })
    }

    /// Window functions other than one filtered ranking: every function of
    /// the node (all over the same partitions and order) evaluated per
    /// partition by the window operator.
    fn over(&mut self, w: &datafusion::logical_expr::Window) -> Result<usize> {
        let mut spec: Option<(&[Expr], &[datafusion::logical_expr::SortExpr])> = None;
        for e in &w.window_expr {
            let Expr::WindowFunction(f) = strip_alias(e) else {
                return Err(MillraceError::not_supported(format!(
                    "window expression {e} in a materialized view"
                )));
            };
            let this = (
                f.params.partition_by.as_slice(),
                f.params.order_by.as_slice(),
            );
            match spec {
                None => spec = Some(this),
                Some(s) if s == this => {}
                Some(_) => {
                    return Err(MillraceError::not_supported(
                        "window functions over different PARTITION BY or ORDER BY in one materialized view step",
                    ))
                }
            }
        }
        let Some((partition_exprs, order_exprs)) = spec else {
            return Err(MillraceError::plan("a window node without functions"));
        };
        let in_schema = w.input.schema();
        let input_schema = arrow_schema(in_schema);
        let id = self.node(&w.input)?;
        let (partition_by, order) = self.window_keys(partition_exprs, order_exprs, in_schema)?;
        let window = w
            .window_expr
            .iter()
            .map(|e| {
                Ok(datafusion::physical_planner::create_window_expr(
                    e,
                    in_schema,
                    &self.props,
                    &PhysicalPlanningContext::default(),
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        let out_schema = arrow_schema(&w.schema);
        let expiry_column = self.watermarked_partition(id, partition_exprs, in_schema);
        let make = || -> Result<Box<dyn Operator>> {
            let op = OverOperator::try_new(
                &input_schema,
                partition_by.clone(),
                order.clone(),
                window.clone(),
                out_schema.clone(),
            )?;
            Ok(Box::new(match expiry_column {
                Some(c) => op.with_watermark_partition(c)?,
                None => op,
            }))
        };
        self.add_partitioned_marked(id, &partition_by, &input_schema, expiry_column, make)
    }

    /// `GROUP BY g` with only `first_value(x ORDER BY o)` aggregates (how
    /// `DISTINCT ON (g) ... ORDER BY g, o` is planned): the top row of each
    /// group by `o`, then its `g` and `x`. `last_value` is the top row in
    /// the reverse order.
    fn first_rows(&mut self, a: &datafusion::logical_expr::Aggregate) -> Result<usize> {
        let Some((order, reverse)) = first_row_order(a) else {
            return Err(MillraceError::plan("not a first-row aggregate"));
        };
        let in_schema = a.input.schema();
        let input_schema = arrow_schema(in_schema);
        let id = self.node(&a.input)?;
        let group_exprs = a
            .group_expr
            .iter()
            .map(|g| self.expr(g, in_schema))
            .collect::<Result<Vec<_>>>()?;
        let mut order = self.sort_exprs(&order, in_schema)?;
        if reverse {
            for (_, o) in &mut order {
                *o = !*o;
            }
        }
        let append_only = is_append_only(&a.input, self.relation_grows);
        let make = || -> Result<Box<dyn Operator>> {
            Ok(Box::new(TopNOperator::try_new(
                &input_schema,
                group_exprs.clone(),
                order.clone(),
                TopNSpec {
                    ranking: None,
                    first: 1,
                    last: 1,
                },
                append_only,
                input_schema.clone(),
            )?))
        };
        let top = self.add_partitioned(id, &group_exprs, &input_schema, make)?;
        let mut outputs = group_exprs.clone();
        for e in &a.aggr_expr {
            let inner = match e {
                Expr::Alias(al) => al.expr.as_ref(),
                other => other,
            };
            let Expr::AggregateFunction(f) = inner else {
                return Err(MillraceError::plan("not a first-row aggregate"));
            };
            let [arg] = f.params.args.as_slice() else {
                return Err(MillraceError::plan("first_value takes one argument"));
            };
            outputs.push(self.expr(arg, in_schema)?);
        }
        let project = ProjectOperator::try_new(outputs, arrow_schema(&a.schema))?;
        self.graph
            .add(Box::new(project), vec![NodeInput::Node(top)])
    }

    /// Adds the stateful operator `make` builds over node `input`, split
    /// across workers by `partition_by` (one instance without keys).
    fn add_partitioned(
        &mut self,
        input: usize,
        partition_by: &[Arc<dyn PhysicalExpr>],
        schema: &SchemaRef,
        make: impl Fn() -> Result<Box<dyn Operator>>,
    ) -> Result<usize> {
        self.add_partitioned_marked(input, partition_by, schema, None, make)
    }

    /// [`Lowering::add_partitioned`] for an operator whose output keeps its
    /// input's columns first and whose partitions expire by input column
    /// `expiry_column`: that column's watermark passes through. A row of
    /// the output changes only with its partition, whose value in that
    /// column is not behind the input's watermark.
    fn add_partitioned_marked(
        &mut self,
        input: usize,
        partition_by: &[Arc<dyn PhysicalExpr>],
        schema: &SchemaRef,
        expiry_column: Option<usize>,
        make: impl Fn() -> Result<Box<dyn Operator>>,
    ) -> Result<usize> {
        let op = self.maybe_partitioned(make, vec![partition_by.to_vec()], partition_by, schema)?;
        let rules = expiry_column
            .map(|c| vec![WatermarkRule::identity(c, 0, c)])
            .unwrap_or_default();
        self.graph
            .add_marked(op, vec![NodeInput::Node(input)], rules, vec![])
    }

    /// A window's `PARTITION BY` and `ORDER BY`, as physical expressions.
    fn window_keys(
        &self,
        partition_by: &[Expr],
        order_by: &[datafusion::logical_expr::SortExpr],
        schema: &DFSchema,
    ) -> Result<(Vec<Arc<dyn PhysicalExpr>>, SortKeys)> {
        let partition = partition_by
            .iter()
            .map(|e| self.expr(e, schema))
            .collect::<Result<Vec<_>>>()?;
        Ok((partition, self.sort_exprs(order_by, schema)?))
    }

    fn maybe_partitioned(
        &self,
        make: impl Fn() -> Result<Box<dyn Operator>>,
        keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
        typed_keys: &[Arc<dyn PhysicalExpr>],
        schema: &SchemaRef,
    ) -> Result<Box<dyn Operator>> {
        if self.workers <= 1 || typed_keys.is_empty() {
            return make();
        }
        let key_types = typed_keys
            .iter()
            .map(|e| Ok(e.data_type(schema)?))
            .collect::<Result<Vec<_>>>()?;
        let shards = (0..self.workers)
            .map(|_| make())
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(PartitionedOperator::try_new(
            shards, keys, key_types,
        )?))
    }

    fn aggregate_spec(&self, e: &Expr, schema: &DFSchema) -> Result<AggregateSpec> {
        let display = e.schema_name().to_string();
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let Expr::AggregateFunction(f) = inner else {
            return Err(MillraceError::not_supported(format!(
                "aggregate expression {display} in a materialized view"
            )));
        };
        let params = &f.params;
        let name = f.func.name().to_ascii_lowercase();
        if !params.order_by.is_empty() {
            return Err(MillraceError::not_supported(format!(
                "ORDER BY inside {name}() in a materialized view"
            )));
        }
        let kind = match (name.as_str(), params.distinct) {
            ("count", false) => AggregateKind::Count,
            ("count", true) => AggregateKind::CountDistinct,
            ("sum", false) => AggregateKind::Sum,
            ("avg" | "mean", false) => AggregateKind::Avg,
            ("min", _) => AggregateKind::Min,
            ("max", _) => AggregateKind::Max,
            ("bool_and", _) => AggregateKind::BoolAnd,
            ("bool_or", _) => AggregateKind::BoolOr,
            ("string_agg", false) => AggregateKind::StringAgg,
            (other, distinct) => {
                return Err(MillraceError::not_supported(format!(
                    "aggregate function {}{other}() in a materialized view",
                    if distinct { "DISTINCT " } else { "" }
                )))
            }
        };
        let arg = match params.args.first() {
            Some(a) => Some(self.expr(a, schema)?),
            None => None,
        };
        let delimiter = if kind == AggregateKind::StringAgg {
            match params.args.get(1) {
                Some(Expr::Literal(ScalarValue::Utf8(Some(d)), _))
                | Some(Expr::Literal(ScalarValue::LargeUtf8(Some(d)), _))
                | Some(Expr::Literal(ScalarValue::Utf8View(Some(d)), _)) => d.clone(),
                Some(Expr::Literal(v, _)) if v.is_null() => String::new(),
                _ => {
                    return Err(MillraceError::not_supported(
                        "string_agg with a non-constant delimiter in a materialized view",
                    ))
                }
            }
        } else {
            String::new()
        };
        let filter = params
            .filter
            .as_ref()
            .map(|f| self.expr(f, schema))
            .transpose()?;
        Ok(AggregateSpec {
            kind,
            arg,
            filter,
            delimiter,
            display,
        })
    }
}

/// Names an expression form the operators cannot evaluate, if `e` holds one.
fn unsupported_expr(e: &Expr) -> Option<&'static str> {
    let mut found = None;
    let _ = e.apply(|node| {
        let what = match node {
            Expr::ScalarSubquery(_) => Some("scalar subquery"),
            Expr::Exists(_) => Some("EXISTS subquery"),
            Expr::InSubquery(_) => Some("IN subquery"),
            Expr::OuterReferenceColumn(..) => Some("correlated subquery"),
            Expr::WindowFunction(_) => Some("window function"),
            _ if contains_view_clock(node) => {
                Some("now() outside the conditions of a WHERE or HAVING clause")
            }
            _ => None,
        };
        if what.is_some() {
            found = what;
            Ok(TreeNodeRecursion::Stop)
        } else {
            Ok(TreeNodeRecursion::Continue)
        }
    });
    found
}

/// Whether the result of `plan` only ever grows (receives only positive
/// weights), given which relations only ever grow. Filters, projections,
/// unions and inner joins of growing inputs grow; aggregates, distinct and
/// outer joins can retract what they emitted.
pub fn is_append_only(plan: &LogicalPlan, relation_grows: &dyn Fn(&str) -> bool) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => {
            relation_grows(scan.table_name.table()) && !scan.filters.iter().any(contains_view_clock)
        }
        // A temporal filter expires rows.
        LogicalPlan::Filter(f) if contains_view_clock(&f.predicate) => false,
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Union(_) => plan
            .inputs()
            .iter()
            .all(|i| is_append_only(i, relation_grows)),
        // An outer join retracts a NULL-padded row when a match arrives.
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner => plan
            .inputs()
            .iter()
            .all(|i| is_append_only(i, relation_grows)),
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => true,
        _ => false,
    }
}

/// The range of ranks a filter keeps, when it filters the ranking column
/// of a window node directly below it (or below a projection that passes
/// columns through): `rn <= 3`, `rn < 4`, `rn = 1`, `rn > 1`, `3 >= rn`,
/// and conjunctions of them. Returns the window node and `(first, last)`.
fn rank_filter(f: &datafusion::logical_expr::Filter) -> Option<(&LogicalPlan, (u64, u64))> {
    use datafusion::logical_expr::{BinaryExpr, Operator as Op};
    let mut below = f.input.as_ref();
    // The window column's name as the filter sees it.
    let mut names: Vec<String> = vec![];
    if let LogicalPlan::Projection(p) = below {
        for e in &p.expr {
            match e {
                Expr::Column(_) => {}
                Expr::Alias(a) if matches!(a.expr.as_ref(), Expr::Column(_)) => {}
                _ => return None,
            }
        }
        below = p.input.as_ref();
        if let LogicalPlan::Window(w) = below {
            let window_column = w.schema.field(w.schema.fields().len() - 1).name().clone();
            for (e, field) in p.expr.iter().zip(p.schema.fields()) {
                let source = match e {
                    Expr::Column(c) => &c.name,
                    Expr::Alias(a) => match a.expr.as_ref() {
                        Expr::Column(c) => &c.name,
                        _ => continue,
                    },
                    _ => continue,
                };
                if *source == window_column {
                    names.push(field.name().clone());
                }
            }
        }
    }
    let LogicalPlan::Window(w) = below else {
        return None;
    };
    if w.window_expr.len() != 1 {
        return None;
    }
    if names.is_empty() {
        names.push(w.schema.field(w.schema.fields().len() - 1).name().clone());
    }
    let literal = |e: &Expr| match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::UInt64(Some(n)) => Some(*n as i128),
            ScalarValue::Int64(Some(n)) => Some(*n as i128),
            ScalarValue::Int32(Some(n)) => Some(*n as i128),
            ScalarValue::UInt32(Some(n)) => Some(*n as i128),
            _ => None,
        },
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Literal(ScalarValue::Int64(Some(n)), _) => Some(*n as i128),
            _ => None,
        },
        _ => None,
    };
    let is_rank = |e: &Expr| match e {
        Expr::Column(c) => names.contains(&c.name),
        Expr::Cast(c) => matches!(c.expr.as_ref(), Expr::Column(col) if names.contains(&col.name)),
        _ => false,
    };
    let mut first: i128 = 1;
    let mut last: i128 = u64::MAX as i128;
    for conjunct in datafusion::logical_expr::utils::split_conjunction(&f.predicate) {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else {
            continue;
        };
        // Normalized to `rank <op> n`.
        let (op, n) = if is_rank(left) {
            match literal(right) {
                Some(n) => (*op, n),
                None => continue,
            }
        } else if is_rank(right) {
            let Some(n) = literal(left) else { continue };
            let flipped = match op {
                Op::Lt => Op::Gt,
                Op::LtEq => Op::GtEq,
                Op::Gt => Op::Lt,
                Op::GtEq => Op::LtEq,
                other => *other,
            };
            (flipped, n)
        } else {
            continue;
        };
        match op {
            Op::Lt => last = last.min(n - 1),
            Op::LtEq => last = last.min(n),
            Op::Gt => first = first.max(n + 1),
            Op::GtEq => first = first.max(n),
            Op::Eq => {
                first = first.max(n);
                last = last.min(n);
            }
            _ => {}
        }
    }
    if last < first || last < 1 {
        // Nothing passes; keep the first rank only and let the filter
        // above remove it.
        return Some((below, (1, 1)));
    }
    let first = u64::try_from(first.max(1)).ok()?;
    let last = u64::try_from(last).unwrap_or(u64::MAX);
    Some((below, (first, last)))
}

/// When every aggregate of `a` is `first_value(x ORDER BY o)` with the same
/// `o` (or every one `last_value`), that order and whether it is reversed
/// (`last_value`).
fn first_row_order(
    a: &datafusion::logical_expr::Aggregate,
) -> Option<(Vec<datafusion::logical_expr::SortExpr>, bool)> {
    let mut found: Option<(Vec<datafusion::logical_expr::SortExpr>, bool)> = None;
    if a.aggr_expr.is_empty() {
        return None;
    }
    for e in &a.aggr_expr {
        let inner = match e {
            Expr::Alias(al) => al.expr.as_ref(),
            other => other,
        };
        let Expr::AggregateFunction(f) = inner else {
            return None;
        };
        let reverse = match f.func.name() {
            "first_value" => false,
            "last_value" => true,
            _ => return None,
        };
        if f.params.order_by.is_empty()
            || f.params.distinct
            || f.params.filter.is_some()
            || f.params.args.len() != 1
        {
            return None;
        }
        match &found {
            None => found = Some((f.params.order_by.clone(), reverse)),
            Some((order, r)) if *order == f.params.order_by && *r == reverse => {}
            Some(_) => return None,
        }
    }
    found
}

/// An expression without its alias.
fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => a.expr.as_ref(),
        other => other,
    }
}
