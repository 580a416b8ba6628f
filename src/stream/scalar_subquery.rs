//! Pass: uncorrelated scalar subqueries become joins.
//!
//! DataFusion's optimizer turns correlated scalar subqueries into joins,
//! but leaves an uncorrelated one (`WHERE price > (SELECT avg(price) FROM
//! bids)`) as an expression evaluated once per query. A view must follow
//! the subquery's value as it changes, so this pass rewrites each such
//! subquery in a `Filter` or `Projection` into a left join, on no keys, of
//! the node's input with the subquery, and reads the subquery's value from
//! the joined column. The join pads with NULL while the subquery has no
//! row, as SQL's scalar subquery gives NULL then.
//!
//! Only a subquery that returns at most one row is rewritten: an
//! aggregate without `GROUP BY`, a `LIMIT 1`, or a select without `FROM`
//! (possibly under projections, filters, aliases and sorts). Any other is
//! refused, since SQL raises an error when a scalar subquery returns two
//! rows, which a view cannot do on a later change.
//!
//! Weights: the join emits every input row once per subquery row (there is
//! at most one), so a change of the subquery's value retracts every input
//! row joined with the old value and inserts it with the new one.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, NullEquality};
use datafusion::logical_expr::{
    Expr, Join, JoinConstraint, JoinType, LogicalPlan, LogicalPlanBuilder, Subquery,
};

use crate::error::{MillraceError, Result};

/// Rewrites every uncorrelated scalar subquery of `plan` (and of the
/// subqueries themselves) into a left join; see the module documentation.
pub fn scalar_subqueries_to_joins(plan: LogicalPlan) -> Result<LogicalPlan> {
    rewrite_plan(plan, &mut 0)
}

/// [`scalar_subqueries_to_joins`], numbering the joined subqueries' aliases
/// from `count` on.
fn rewrite_plan(plan: LogicalPlan, count: &mut usize) -> Result<LogicalPlan> {
    let mut failure = None;
    let rewritten = plan.transform_up(|node| match rewrite_node(node, count) {
        Ok(t) => Ok(t),
        Err(e) => {
            failure = Some(e);
            Err(datafusion::common::DataFusionError::Plan(
                "scalar subquery rewrite failed".to_string(),
            ))
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(rewritten?.data)
}

/// Whether `plan` returns at most one row.
fn at_most_one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(a) => a.group_expr.is_empty(),
        LogicalPlan::EmptyRelation(_) => true,
        LogicalPlan::Values(v) => v.values.len() <= 1,
        LogicalPlan::Limit(l) => matches!(
            l.get_fetch_type(),
            Ok(datafusion::logical_expr::FetchType::Literal(Some(n))) if n <= 1
        ),
        LogicalPlan::Projection(p) => at_most_one_row(&p.input),
        LogicalPlan::Filter(f) => at_most_one_row(&f.input),
        LogicalPlan::SubqueryAlias(s) => at_most_one_row(&s.input),
        LogicalPlan::Sort(s) => s.fetch.is_some_and(|f| f <= 1) || at_most_one_row(&s.input),
        _ => false,
    }
}

/// The uncorrelated scalar subqueries in `exprs`, in order of appearance.
fn scalar_subqueries(exprs: &[Expr]) -> Vec<Subquery> {
    let mut found = Vec::new();
    for e in exprs {
        let _ = e.apply(|node| {
            if let Expr::ScalarSubquery(sq) = node {
                if sq.outer_ref_columns.is_empty() && !found.contains(sq) {
                    found.push(sq.clone());
                }
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
    }
    found
}

/// `input` left-joined with each of `subqueries` on no keys, and the column
/// that holds each subquery's value.
fn join_subqueries(
    input: LogicalPlan,
    subqueries: &[Subquery],
    count: &mut usize,
) -> Result<(LogicalPlan, Vec<(Subquery, Expr)>)> {
    let mut plan = input;
    let mut columns = Vec::with_capacity(subqueries.len());
    for sq in subqueries {
        if !at_most_one_row(&sq.subquery) {
            return Err(MillraceError::not_supported(
                "a scalar subquery that may return more than one row, in a materialized view (an aggregate without GROUP BY returns exactly one)",
            ));
        }
        let inner = rewrite_plan(sq.subquery.as_ref().clone(), count)?;
        let alias = format!("__scalar_subquery_{count}");
        *count += 1;
        let inner = LogicalPlanBuilder::from(inner).alias(alias)?.build()?;
        if inner.schema().fields().len() != 1 {
            return Err(MillraceError::plan(
                "a scalar subquery must return exactly one column",
            ));
        }
        let (qualifier, field) = inner.schema().qualified_field(0);
        let value = Expr::Column(Column::from((qualifier, field)));
        plan = LogicalPlan::Join(Join::try_new(
            Arc::new(plan),
            Arc::new(inner),
            vec![],
            None,
            JoinType::Left,
            JoinConstraint::On,
            NullEquality::NullEqualsNothing,
            false,
        )?);
        columns.push((sq.clone(), value));
    }
    Ok((plan, columns))
}

/// `e` with each subquery of `columns` replaced by its column.
fn replace(e: &Expr, columns: &[(Subquery, Expr)]) -> Result<Expr> {
    Ok(e.clone()
        .transform_up(|node| match &node {
            Expr::ScalarSubquery(sq) => match columns.iter().find(|(s, _)| s == sq) {
                Some((_, column)) => Ok(Transformed::yes(column.clone())),
                None => Ok(Transformed::no(node)),
            },
            _ => Ok(Transformed::no(node)),
        })?
        .data)
}

/// One plan node with its subqueries joined, when it reads any.
fn rewrite_node(node: LogicalPlan, count: &mut usize) -> Result<Transformed<LogicalPlan>> {
    let rewritten = match &node {
        LogicalPlan::Filter(f) => {
            let subqueries = scalar_subqueries(std::slice::from_ref(&f.predicate));
            if subqueries.is_empty() {
                return Ok(Transformed::no(node));
            }
            rewrite_filter(f, &subqueries, count)
        }
        LogicalPlan::Projection(p) => {
            let subqueries = scalar_subqueries(&p.expr);
            if subqueries.is_empty() {
                return Ok(Transformed::no(node));
            }
            rewrite_projection(p, &subqueries, count)
        }
        _ => return Ok(Transformed::no(node)),
    };
    rewritten.map(Transformed::yes)
}

/// A filter reading subqueries: the filter over the joined input, then
/// the input's columns alone.
fn rewrite_filter(
    f: &datafusion::logical_expr::Filter,
    subqueries: &[Subquery],
    count: &mut usize,
) -> Result<LogicalPlan> {
    let input = f.input.as_ref().clone();
    let kept: Vec<Expr> = input
        .schema()
        .iter()
        .map(|(q, field)| Expr::Column(Column::from((q, field))))
        .collect();
    let (joined, columns) = join_subqueries(input, subqueries, count)?;
    let predicate = replace(&f.predicate, &columns)?;
    Ok(LogicalPlanBuilder::from(joined)
        .filter(predicate)?
        .project(kept)?
        .build()?)
}

/// A projection reading subqueries: the same expressions, under the same
/// names, over the joined input.
fn rewrite_projection(
    p: &datafusion::logical_expr::Projection,
    subqueries: &[Subquery],
    count: &mut usize,
) -> Result<LogicalPlan> {
    let (joined, columns) = join_subqueries(p.input.as_ref().clone(), subqueries, count)?;
    let exprs = p
        .expr
        .iter()
        .zip(p.schema.iter())
        .map(|(e, (q, field))| {
            let new = replace(e, &columns)?;
            Ok(if &new == e {
                new
            } else {
                new.alias_qualified(q.cloned(), field.name())
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LogicalPlanBuilder::from(joined).project(exprs)?.build()?)
}
