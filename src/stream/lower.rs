//! Lowering: turns an optimized DataFusion [`LogicalPlan`] into a
//! [`Dataflow`] of incremental operators.
//!
//! The plan is first checked by small named passes ([`reject_volatile`]),
//! then walked once, bottom-up, emitting one operator per plan node. Plan
//! nodes that only rename (`SubqueryAlias`) or order an unordered result
//! (`Sort` without a limit) emit nothing. Anything the engine cannot maintain
//! incrementally is refused with [`MillraceError::NotSupported`] naming the
//! construct; it is never computed wrongly.

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
use super::join::{JoinKind, JoinOperator};
use super::operator::Operator;
use super::partition::PartitionedOperator;
use super::project::ProjectOperator;
use super::scan::ScanOperator;
use super::union::UnionOperator;
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
    reject_volatile(plan)?;
    let mut lowering = Lowering {
        graph: Dataflow::new(),
        props: ExecutionProps::new(),
        workers: workers(),
        relation_grows,
    };
    lowering.node(plan)?;
    Ok(lowering.graph)
}

/// Pass: refuses volatile functions (`random()`...), whose re-evaluation on a
/// delete would not retract what the insert produced.
pub fn reject_volatile(plan: &LogicalPlan) -> Result<()> {
    let mut found: Option<String> = None;
    plan.apply(|node| {
        for e in node.expressions() {
            if e.is_volatile() {
                found = Some(e.to_string());
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match found {
        Some(e) => Err(MillraceError::not_supported(format!(
            "volatile function in a materialized view: {e}"
        ))),
        None => Ok(()),
    }
}

struct Lowering<'a> {
    graph: Dataflow,
    props: ExecutionProps,
    workers: usize,
    relation_grows: &'a dyn Fn(&str) -> bool,
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
                let op = ScanOperator::try_new(relation.clone(), projection, schema.clone())?;
                let mut id = self
                    .graph
                    .add(Box::new(op), vec![NodeInput::Relation(relation)])?;
                if let Some(predicate) = scan
                    .filters
                    .iter()
                    .cloned()
                    .reduce(datafusion::logical_expr::and)
                {
                    let p = self.expr(&predicate, &scan.projected_schema)?;
                    let op = FilterOperator::try_new(p, schema)?;
                    id = self.graph.add(Box::new(op), vec![NodeInput::Node(id)])?;
                }
                Ok(id)
            }
            LogicalPlan::Projection(p) => {
                let input = self.node(&p.input)?;
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| self.expr(e, p.input.schema()))
                    .collect::<Result<Vec<_>>>()?;
                let op = ProjectOperator::try_new(exprs, arrow_schema(&p.schema))?;
                self.graph.add(Box::new(op), vec![NodeInput::Node(input)])
            }
            LogicalPlan::Filter(f) => {
                let input = self.node(&f.input)?;
                let predicate = self.expr(&f.predicate, f.input.schema())?;
                let op = FilterOperator::try_new(predicate, arrow_schema(f.input.schema()))?;
                self.graph.add(Box::new(op), vec![NodeInput::Node(input)])
            }
            LogicalPlan::Aggregate(a) => {
                let input = self.node(&a.input)?;
                let in_schema = a.input.schema();
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
                let make = || -> Result<Box<dyn Operator>> {
                    Ok(Box::new(AggregateOperator::try_new(
                        group_exprs.clone(),
                        aggregates.clone(),
                        &input_schema,
                        arrow_schema(&a.schema),
                        append_only,
                    )?))
                };
                let op = self.maybe_partitioned(
                    make,
                    vec![group_exprs.clone()],
                    &group_exprs,
                    &input_schema,
                )?;
                self.graph.add(op, vec![NodeInput::Node(input)])
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
                        .with_kind(kind)?,
                    ))
                };
                let op = self.maybe_partitioned(
                    make,
                    vec![left_keys.clone(), right_keys.clone()],
                    &left_keys,
                    &left_schema,
                )?;
                self.graph
                    .add(op, vec![NodeInput::Node(left), NodeInput::Node(right)])
            }
            LogicalPlan::Union(u) => {
                let inputs = u
                    .inputs
                    .iter()
                    .map(|i| Ok(NodeInput::Node(self.node(i)?)))
                    .collect::<Result<Vec<_>>>()?;
                let op = UnionOperator::try_new(arrow_schema(&u.schema))?;
                self.graph.add(Box::new(op), inputs)
            }
            LogicalPlan::SubqueryAlias(s) => self.node(&s.input),
            LogicalPlan::Sort(s) => {
                if s.fetch.is_some() {
                    Err(MillraceError::not_supported(
                        "ORDER BY ... LIMIT (top-N) in a materialized view",
                    ))
                } else {
                    // A materialized view is an unordered collection; ORDER BY
                    // belongs to the SELECT that reads it.
                    self.node(&s.input)
                }
            }
            LogicalPlan::Limit(_) => Err(MillraceError::not_supported(
                "LIMIT / OFFSET in a materialized view",
            )),
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
            LogicalPlan::Window(_) => Err(MillraceError::not_supported(
                "window functions (OVER) in a materialized view",
            )),
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

    /// `make()` split into `self.workers` copies by `keys` (one key list per
    /// input; `typed_keys` over `schema` give the key types), or a single
    /// copy when there is one worker or no key.
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
        LogicalPlan::TableScan(scan) => relation_grows(scan.table_name.table()),
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
