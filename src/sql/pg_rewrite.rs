//! Rewrites of PostgreSQL-only query syntax into what DataFusion plans, for
//! ad-hoc queries (client tools' catalog queries above all).
//!
//! Each step is a small named rule over the parsed statement. Most come
//! from `datafusion-pg-catalog`; two are Millrace's own:
//! [`AggregateScalarSubquery`] and [`ArraySubqueryToAggregate`]. None looks at
//! query text: the rules work on syntax trees, so any client version's SQL
//! gets the same treatment.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArgumentList, FunctionArguments, GroupByExpr, Ident, Join, LambdaFunction,
    LambdaFunctionParameter, LambdaSyntax, LimitClause, ObjectName, OneOrManyWithParens,
    OrderByExpr, OrderByKind, Query, SelectItem, SetExpr, Statement, TableFactor, Value, Visit,
    VisitMut, Visitor, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::sql::rules::{
    AliasDuplicatedProjectionRewrite, CurrentUserVariableToSessionUserFunctionCall,
    FixArrayLiteral, FixVersionColumnName, PrependUnqualifiedPgTableName,
    ResolveUnqualifiedIdentifier, RewriteArrayAnyAllOperation, RewritePgCatalogOperator,
    RewriteRegCastToSubquery, SqlStatementRewriteRule, StripCallableQualifier, StripCollate,
};

/// Applies every rule, in order, to a query statement.
pub fn rewrite_query(stmt: Statement) -> Statement {
    thread_local! {
        static RULES: Vec<Box<dyn SqlStatementRewriteRule>> = vec![
            Box::new(AliasDuplicatedProjectionRewrite),
            Box::new(ResolveUnqualifiedIdentifier),
            Box::new(RewriteArrayAnyAllOperation),
            Box::new(PrependUnqualifiedPgTableName),
            Box::new(StripCallableQualifier),
            Box::new(FixArrayLiteral),
            Box::new(CurrentUserVariableToSessionUserFunctionCall),
            Box::new(StripCollate),
            Box::new(RewritePgCatalogOperator),
            Box::new(SubqueriesOverEmptyCatalogRelations),
            Box::new(SystemClassRegclass),
            Box::new(RewriteRegCastToSubquery::new()),
            Box::new(NameDuplicateOutputs),
            Box::new(ArrayLiteralComparison),
            Box::new(LikeEscapeToBackslash),
            Box::new(GenerateSubscriptsToUnnest),
            Box::new(ExpandArrayAndFieldAccess),
            Box::new(ArraySubqueryToAggregate),
            Box::new(ExistsInSelectListToCount),
            Box::new(ScalarSubqueryToLeftJoin),
            Box::new(AggregateScalarSubquery),
            Box::new(FunctionAliasNamesItsColumn),
            Box::new(FixVersionColumnName),
        ];
    }
    RULES.with(|rules| rules.iter().fold(stmt, |s, rule| rule.rewrite(s)))
}

/// Runs a rewriting visitor over a whole statement.
fn visit_all(mut s: Statement, mut visitor: impl VisitorMut) -> Statement {
    let _ = VisitMut::visit(&mut s, &mut visitor);
    s
}

/// `name(args [ORDER BY order_by])`.
fn call(name: &str, args: Vec<Expr>, order_by: Vec<OrderByExpr>) -> Expr {
    let clauses = if order_by.is_empty() {
        vec![]
    } else {
        vec![FunctionArgumentClause::OrderBy(order_by)]
    };
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses,
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// Aggregate functions: a scalar subquery that already aggregates is left
/// as it is.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "first_value",
    "last_value",
    "json_agg",
    "jsonb_agg",
];

/// `name(arg ORDER BY order_by)`, with `ORDER BY 1` (the subquery's only
/// output column) spelled out as `arg`.
fn function(name: &str, arg: Expr, mut order_by: Vec<OrderByExpr>) -> Expr {
    for o in &mut order_by {
        if matches!(&o.expr, Expr::Value(v) if matches!(&v.value, Value::Number(n, _) if n == "1"))
        {
            o.expr = arg.clone();
        }
    }
    call(name, vec![arg], order_by)
}

fn is_aggregate(expr: &Expr) -> bool {
    match expr {
        Expr::Function(f) => {
            f.over.is_none()
                && f.name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .is_some_and(|i| AGGREGATES.contains(&i.value.to_ascii_lowercase().as_str()))
        }
        Expr::Nested(e) | Expr::Cast { expr: e, .. } => is_aggregate(e),
        _ => false,
    }
}

/// The single output item of a plain `SELECT` (no grouping, no
/// `DISTINCT`, no set operation), if `query` is one.
fn single_output(query: &mut Query) -> Option<&mut SelectItem> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped || select.having.is_some() || select.distinct.is_some() {
        return None;
    }
    match select.projection.as_mut_slice() {
        [item @ (SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. })] => Some(item),
        _ => None,
    }
}

/// The expression of an output item, with the name PostgreSQL gives it.
fn item_parts(item: &SelectItem) -> Option<(&Expr, String)> {
    match item {
        SelectItem::UnnamedExpr(e) => Some((e, output_name(e))),
        SelectItem::ExprWithAlias { expr, alias } => Some((expr, alias.value.clone())),
        _ => None,
    }
}

/// Replaces an output item's expression by `wrap(expr)`, keeping its name.
fn wrap_item(item: &mut SelectItem, wrap: impl FnOnce(Expr) -> Expr) {
    if let Some((e, name)) = item_parts(item) {
        let expr = wrap(e.clone());
        *item = SelectItem::ExprWithAlias {
            expr,
            alias: Ident::with_quote('"', name),
        };
    }
}

/// Takes the subquery's `ORDER BY` for use inside an aggregate; gives up
/// (returns `None`) on `ORDER BY ALL`, `OFFSET` or a `LIMIT` other than 1.
fn take_order(query: &mut Query) -> Option<Vec<OrderByExpr>> {
    match &query.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit: Some(Expr::Value(v)),
            offset: None,
            limit_by,
        }) if limit_by.is_empty() && matches!(&v.value, Value::Number(n, _) if n == "1") => {}
        Some(_) => return None,
    }
    if query.fetch.is_some() {
        return None;
    }
    let order = match &query.order_by {
        None => vec![],
        Some(o) => match &o.kind {
            OrderByKind::Expressions(e) => e.clone(),
            OrderByKind::All(_) => return None,
        },
    };
    query.limit_clause = None;
    query.order_by = None;
    Some(order)
}

/// `(SELECT expr FROM ... [ORDER BY o] [LIMIT 1])` →
/// `(SELECT first_value(expr ORDER BY o) FROM ...)`.
///
/// DataFusion plans a correlated scalar subquery only when it aggregates.
/// The rewritten subquery returns the same value whenever PostgreSQL
/// returns one (zero rows give NULL, one row gives its value, `LIMIT 1`
/// gives the first in order); where PostgreSQL would fail with "more than
/// one row returned by a subquery", it returns the first row instead.
#[derive(Debug)]
pub struct AggregateScalarSubquery;

struct AggregateScalarSubqueryVisitor;

impl VisitorMut for AggregateScalarSubqueryVisitor {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Subquery(query) = expr {
            let aggregated = single_output(query)
                .and_then(|i| item_parts(i))
                .is_none_or(|(e, _)| is_aggregate(e));
            if !aggregated {
                if let Some(order) = take_order(query) {
                    if let Some(item) = single_output(query) {
                        wrap_item(item, |e| function("first_value", e, order));
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
}

impl SqlStatementRewriteRule for AggregateScalarSubquery {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, AggregateScalarSubqueryVisitor)
    }
}

/// The column name PostgreSQL gives an output expression: a column's or
/// function's own name, `?column?` otherwise.
fn output_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map(|i| i.value.clone()).unwrap_or_default()
        }
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.clone())
            .unwrap_or_else(|| "?column?".into()),
        Expr::Named { name, .. } => name.value.clone(),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Nested(e) | Expr::Cast { expr: e, .. } => output_name(e),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) => match s.projection.as_slice() {
                [item] => item_parts(item)
                    .map(|(_, n)| n)
                    .unwrap_or_else(|| "?column?".into()),
                _ => "?column?".into(),
            },
            _ => "?column?".into(),
        },
        _ => "?column?".into(),
    }
}

/// Splits `e` into its `AND`ed conjuncts.
fn conjuncts(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner, out)
        }
        other => out.push(other),
    }
}

/// The qualified column references (`alias.column`) in `e`.
fn qualified_columns(e: &Expr) -> Vec<Vec<Ident>> {
    struct Collect(Vec<Vec<Ident>>);
    impl Visitor for Collect {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(parts) = e {
                if parts.len() >= 2 {
                    self.0.push(parts.clone());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut c = Collect(vec![]);
    let _ = Visit::visit(e, &mut c);
    c.0
}

/// `SELECT ..., (SELECT e FROM t WHERE p) FROM o` with a correlated
/// condition that is not an equality (`o.x <> t.y`) →
/// `SELECT ..., sq.v FROM o LEFT JOIN (SELECT e AS v, t.y AS c0 ... FROM t
/// WHERE <uncorrelated part of p>) sq ON <correlated part of p>`.
///
/// DataFusion decorrelates scalar subqueries whose correlated conditions
/// are all equalities; this handles the rest (psql's `\d` asks for a
/// column's collation this way). The join gives the same value as the
/// subquery whenever at most one inner row matches, which is the only case
/// in which PostgreSQL answers at all.
#[derive(Debug)]
pub struct ScalarSubqueryToLeftJoin;

impl ScalarSubqueryToLeftJoin {
    /// Rewrites one projection subquery into a join, or returns `None` when
    /// the subquery is not of the shape handled here.
    fn join_for(sub: &Query, n: usize) -> Option<(Join, Expr, String)> {
        let shape = SubqueryShape::of(sub)?;
        if is_aggregate(shape.value) {
            return None;
        }
        // Inner columns the join condition needs, exported under new names.
        let alias = format!("__millrace_sq{n}");
        let mut exported: Vec<(String, String)> = Vec::new();
        let mut on = Vec::new();
        for c in &shape.correlated {
            let mut c = c.clone();
            let _ = VisitMut::visit(
                &mut c,
                &mut ReplaceInner {
                    inner: &shape.inner,
                    alias: &alias,
                    exported: &mut exported,
                },
            );
            on.push(c);
        }
        // The value is computed after the join, from exported inner
        // columns, so that it may read outer columns too; `__matched`
        // tells a missing inner row (NULL, as the subquery gives) apart.
        let mut value = shape.value.clone();
        let _ = VisitMut::visit(
            &mut value,
            &mut ReplaceInner {
                inner: &shape.inner,
                alias: &alias,
                exported: &mut exported,
            },
        );
        let mut columns = vec!["1 AS __matched".to_string()];
        columns.extend(
            exported
                .iter()
                .map(|(col, name)| format!("{col} AS {name}")),
        );
        let mut derived = format!("SELECT {} FROM {}", columns.join(", "), shape.inner_from());
        if !shape.local.is_empty() {
            derived.push_str(&format!(" WHERE {}", and_all(&shape.local)));
        }
        let join = parse_left_join(&derived, &alias, &and_all(&on))?;
        let replacement = Expr::Case {
            case_token:
                datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
            end_token:
                datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
            operand: None,
            conditions: vec![datafusion::sql::sqlparser::ast::CaseWhen {
                condition: Expr::IsNotNull(Box::new(Expr::CompoundIdentifier(vec![
                    Ident::new(alias),
                    Ident::new("__matched"),
                ]))),
                result: value,
            }],
            else_result: None,
        };
        Some((join, replacement, shape.name))
    }
}

/// Replaces inner column references in a join condition with the derived
/// table's exported columns, recording what to export.
struct ReplaceInner<'a> {
    inner: &'a [String],
    alias: &'a str,
    exported: &'a mut Vec<(String, String)>,
}

impl VisitorMut for ReplaceInner<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Expr::CompoundIdentifier(parts) = e {
            if parts.len() >= 2 && self.inner.contains(&parts[parts.len() - 2].value) {
                let original = e.to_string();
                let name = match self.exported.iter().find(|(o, _)| *o == original) {
                    Some((_, n)) => n.clone(),
                    None => {
                        let n = format!("__c{}", self.exported.len());
                        self.exported.push((original, n.clone()));
                        n
                    }
                };
                *e = Expr::CompoundIdentifier(vec![Ident::new(self.alias), Ident::new(name)]);
            }
        }
        ControlFlow::Continue(())
    }
}

/// The parts of a subquery's `SELECT` that decorrelation needs: the
/// output item, the inner relation names, and the `WHERE` split into
/// correlated and local conditions. `None` unless the subquery is a plain
/// `SELECT` over named tables with a correlated condition DataFusion
/// cannot decorrelate itself (one that is not an equality).
struct SubqueryShape<'a> {
    select: &'a datafusion::sql::sqlparser::ast::Select,
    value: &'a Expr,
    name: String,
    inner: Vec<String>,
    correlated: Vec<Expr>,
    local: Vec<Expr>,
}

impl<'a> SubqueryShape<'a> {
    fn of(sub: &'a Query) -> Option<Self> {
        let SetExpr::Select(select) = sub.body.as_ref() else {
            return None;
        };
        let plain = matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
            && select.having.is_none()
            && select.distinct.is_none()
            && sub.order_by.is_none()
            && sub.limit_clause.is_none()
            && sub.with.is_none();
        let [item] = select.projection.as_slice() else {
            return None;
        };
        let (value, name) = item_parts(item)?;
        if !plain {
            return None;
        }
        let mut inner: Vec<String> = Vec::new();
        for twj in &select.from {
            for rel in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
                inner.push(table_id(rel)?);
            }
        }
        let mut parts = Vec::new();
        if let Some(w) = &select.selection {
            conjuncts(w.clone(), &mut parts);
        }
        let is_inner = |p: &Vec<Ident>| inner.contains(&p[p.len() - 2].value);
        let (correlated, local): (Vec<Expr>, Vec<Expr>) = parts
            .into_iter()
            .partition(|c| qualified_columns(c).iter().any(|p| !is_inner(p)));
        // Equalities of two columns are DataFusion's to decorrelate.
        let column = |e: &Expr| matches!(e, Expr::CompoundIdentifier(_) | Expr::Identifier(_));
        let all_equalities = correlated.iter().all(|c| {
            matches!(
                c,
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } if column(left) && column(right)
            )
        }) && qualified_columns(value).iter().all(is_inner);
        if correlated.is_empty() || all_equalities {
            return None;
        }
        Some(Self {
            select,
            value,
            name,
            inner,
            correlated,
            local,
        })
    }

    fn inner_from(&self) -> String {
        let from: Vec<String> = self.select.from.iter().map(|t| t.to_string()).collect();
        from.join(", ")
    }
}

/// The name a table is referred to by: its alias, or its own name.
fn table_id(rel: &TableFactor) -> Option<String> {
    let TableFactor::Table { name, alias, .. } = rel else {
        return None;
    };
    Some(match alias {
        Some(a) => a.name.value.clone(),
        None => name.0.last()?.as_ident()?.value.clone(),
    })
}

fn and_all(conditions: &[Expr]) -> String {
    conditions
        .iter()
        .map(|c| format!("({c})"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Parses `LEFT JOIN (derived) AS alias ON condition` into a join.
fn parse_left_join(derived: &str, alias: &str, on: &str) -> Option<Join> {
    let sql = format!("SELECT 1 FROM __outer LEFT JOIN ({derived}) AS {alias} ON {on}");
    let Statement::Query(q) = Parser::parse_sql(&PostgreSqlDialect {}, &sql).ok()?.pop()? else {
        return None;
    };
    let SetExpr::Select(s) = *q.body else {
        return None;
    };
    s.from.into_iter().next()?.joins.into_iter().next()
}

/// `(SELECT agg(e) FROM t WHERE p)` correlated with the outer table `o`
/// through a condition that is not an equality →
/// `sq.v` with `LEFT JOIN (SELECT o.c..., agg(e) AS v FROM o, t WHERE p
/// GROUP BY o.c...) sq ON sq.c IS NOT DISTINCT FROM o.c`: the aggregate is
/// computed once per distinct value of the outer columns it reads, then
/// joined back. `count` over no rows is 0, as in the subquery.
fn aggregate_join_for(sub: &Query, n: usize, outer: &TableFactor) -> Option<(Join, Expr)> {
    let shape = SubqueryShape::of(sub)?;
    if !is_aggregate(shape.value)
        || qualified_columns(shape.value)
            .iter()
            .any(|p| !shape.inner.contains(&p[p.len() - 2].value))
    {
        return None;
    }
    let TableFactor::Table {
        name: outer_table, ..
    } = outer
    else {
        return None;
    };
    let outer_id = table_id(outer)?;
    if shape.inner.contains(&outer_id) {
        return None;
    }
    let mut outer_columns: Vec<String> = Vec::new();
    for c in &shape.correlated {
        for p in qualified_columns(c) {
            let qualifier = &p[p.len() - 2].value;
            if shape.inner.contains(qualifier) {
                continue;
            }
            if *qualifier != outer_id {
                return None;
            }
            let column = Expr::CompoundIdentifier(p).to_string();
            if !outer_columns.contains(&column) {
                outer_columns.push(column);
            }
        }
    }
    // The outer table joins the inner ones here: bare column names must say
    // which table they belong to.
    let mut value = shape.value.clone();
    let mut conditions = shape.correlated.clone();
    conditions.extend(shape.local.iter().cloned());
    let [inner_id] = shape.inner.as_slice() else {
        let mut bare = false;
        let _ = Visit::visit(&conditions, &mut FindBare(&mut bare));
        let _ = Visit::visit(&value, &mut FindBare(&mut bare));
        if bare {
            return None;
        }
        return finish_aggregate_join(
            n,
            outer_table,
            &outer_id,
            &outer_columns,
            &shape,
            value,
            conditions,
        );
    };
    let mut qualify = Qualify(inner_id);
    let _ = VisitMut::visit(&mut value, &mut qualify);
    let _ = VisitMut::visit(&mut conditions, &mut qualify);
    finish_aggregate_join(
        n,
        outer_table,
        &outer_id,
        &outer_columns,
        &shape,
        value,
        conditions,
    )
}

/// Finds bare (unqualified) column names.
struct FindBare<'a>(&'a mut bool);

impl Visitor for FindBare<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if matches!(e, Expr::Identifier(_)) {
            *self.0 = true;
        }
        ControlFlow::Continue(())
    }
}

/// Qualifies bare column names with a table name.
struct Qualify<'a>(&'a str);

impl VisitorMut for Qualify<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Expr::Identifier(i) = e {
            *e = Expr::CompoundIdentifier(vec![Ident::new(self.0), i.clone()]);
        }
        ControlFlow::Continue(())
    }
}

fn finish_aggregate_join(
    n: usize,
    outer_table: &ObjectName,
    outer_id: &str,
    outer_columns: &[String],
    shape: &SubqueryShape<'_>,
    aggregate: Expr,
    conditions: Vec<Expr>,
) -> Option<(Join, Expr)> {
    let alias = format!("__millrace_sq{n}");
    let exported: Vec<String> = outer_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} AS __o{i}"))
        .collect();
    let derived = format!(
        "SELECT {}, {} AS __value FROM {outer_table} AS {outer_id}, {} WHERE {} GROUP BY {}",
        exported.join(", "),
        aggregate,
        shape.inner_from(),
        and_all(&conditions),
        outer_columns.join(", ")
    );
    let on: Vec<String> = outer_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{alias}.__o{i} IS NOT DISTINCT FROM {c}"))
        .collect();
    let join = parse_left_join(&derived, &alias, &on.join(" AND "))?;
    let mut value = Expr::CompoundIdentifier(vec![Ident::new(alias), Ident::new("__value")]);
    if matches!(shape.value, Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("count"))
    {
        value = call(
            "coalesce",
            vec![value, Expr::value(Value::Number("0".into(), false))],
            vec![],
        );
    }
    Some((join, value))
}

/// Finds aggregate subqueries anywhere inside an output expression and
/// replaces each it can decorrelate with a joined column.
struct AggregateSubqueries<'a> {
    outer: &'a TableFactor,
    next: &'a mut usize,
    joins: Vec<Join>,
}

impl VisitorMut for AggregateSubqueries<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Subquery(sub) = expr {
            if let Some((join, value)) = aggregate_join_for(sub, *self.next, self.outer) {
                *self.next += 1;
                self.joins.push(join);
                *expr = value;
            }
        }
        ControlFlow::Continue(())
    }
}

struct LeftJoinVisitor {
    next: usize,
}

impl VisitorMut for LeftJoinVisitor {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        if select.from.len() != 1 {
            return ControlFlow::Continue(());
        }
        let mut joins = Vec::new();
        for item in &mut select.projection {
            let Some((Expr::Subquery(sub), outer_name)) = item_parts(item) else {
                continue;
            };
            let aliased = matches!(item, SelectItem::ExprWithAlias { .. });
            if let Some((join, value, inner_name)) =
                ScalarSubqueryToLeftJoin::join_for(sub, self.next)
            {
                self.next += 1;
                joins.push(join);
                let name = if aliased { outer_name } else { inner_name };
                *item = SelectItem::ExprWithAlias {
                    expr: value,
                    alias: Ident::with_quote('"', name),
                };
            }
        }
        // Subqueries inside a select item's expression (`CASE WHEN c THEN
        // (SELECT ...) END`, as SQLAlchemy 2.1 writes).
        for item in &mut select.projection {
            let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = item
            else {
                continue;
            };
            let name = output_name(e);
            let mut nested = NestedScalarSubqueries {
                next: &mut self.next,
                depth: 0,
                joins: vec![],
            };
            let _ = VisitMut::visit(e, &mut nested);
            if !nested.joins.is_empty() {
                joins.extend(nested.joins);
                if let SelectItem::UnnamedExpr(e) = item {
                    *item = SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias: Ident::with_quote('"', name),
                    };
                }
            }
        }
        let outer = select.from[0].relation.clone();
        for item in &mut select.projection {
            let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = item
            else {
                continue;
            };
            let name = output_name(e);
            let mut finder = AggregateSubqueries {
                outer: &outer,
                next: &mut self.next,
                joins: vec![],
            };
            let _ = VisitMut::visit(e, &mut finder);
            if !finder.joins.is_empty() {
                joins.extend(finder.joins);
                if let SelectItem::UnnamedExpr(e) = item {
                    *item = SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias: Ident::with_quote('"', name),
                    };
                }
            }
        }
        select.from[0].joins.extend(joins);
        ControlFlow::Continue(())
    }
}

/// Replaces scalar subqueries nested in an expression (not those of
/// deeper queries, which correlate with their own outer query) by the
/// value of a left join, collecting the joins.
struct NestedScalarSubqueries<'a> {
    next: &'a mut usize,
    depth: usize,
    joins: Vec<Join>,
}

impl VisitorMut for NestedScalarSubqueries<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, _query: &mut Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        if let Expr::Subquery(sub) = e {
            if let Some((join, value, _)) = ScalarSubqueryToLeftJoin::join_for(sub, *self.next) {
                *self.next += 1;
                self.joins.push(join);
                *e = value;
            }
        }
        ControlFlow::Continue(())
    }
}

impl SqlStatementRewriteRule for ScalarSubqueryToLeftJoin {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, LeftJoinVisitor { next: 0 })
    }
}

/// A `SELECT` that inner-joins a catalog relation Millrace never fills
/// (see [`super::pg_catalog::UNPOPULATED_RELATIONS`]) returns no rows, so
/// its select list and conditions are never evaluated: their subqueries
/// are replaced with `NULL`.
///
/// The result is the same as PostgreSQL's. It matters for subqueries
/// DataFusion cannot plan, such as a set-returning function over an
/// outer column (psql's `\d table` asks which publications list a
/// table's columns that way, and Millrace has no publications). A `SELECT`
/// that aggregates without `GROUP BY` returns one row even from no input,
/// so it is left alone, as is one whose empty relation sits on the
/// optional side of an outer join.
#[derive(Debug)]
pub struct SubqueriesOverEmptyCatalogRelations;

/// Whether a `FROM` item names one of the unpopulated catalog relations.
fn is_unpopulated(factor: &TableFactor) -> bool {
    let TableFactor::Table {
        name, args: None, ..
    } = factor
    else {
        return false;
    };
    let parts: Vec<&str> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| i.value.as_str())
        .collect();
    match parts.as_slice() {
        [table] | ["pg_catalog", table] => super::pg_catalog::UNPOPULATED_RELATIONS.contains(table),
        _ => false,
    }
}

/// Whether `select` returns no rows because it inner-joins an unpopulated
/// catalog relation.
fn reads_unpopulated_relation(select: &datafusion::sql::sqlparser::ast::Select) -> bool {
    use datafusion::sql::sqlparser::ast::JoinOperator as J;
    select.from.iter().any(|item| {
        let preserves_right = item.joins.iter().any(|j| {
            matches!(
                j.join_operator,
                J::Right(_)
                    | J::RightOuter(_)
                    | J::FullOuter(_)
                    | J::RightSemi(_)
                    | J::RightAnti(_)
            )
        });
        (is_unpopulated(&item.relation) && !preserves_right)
            || item.joins.iter().any(|j| {
                is_unpopulated(&j.relation)
                    && matches!(
                        j.join_operator,
                        J::Join(_) | J::Inner(_) | J::CrossJoin(_) | J::StraightJoin(_)
                    )
            })
    })
}

/// Whether `e` calls an aggregate function outside of any subquery.
fn aggregates(e: &Expr) -> bool {
    struct Find {
        depth: usize,
        found: bool,
    }
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if self.depth == 0 && is_aggregate(e) {
                self.found = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut find = Find {
        depth: 0,
        found: false,
    };
    let _ = Visit::visit(e, &mut find);
    find.found
}

/// Replaces every subquery in an expression with `NULL`.
struct NullSubqueries;

impl VisitorMut for NullSubqueries {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        let array_subquery =
            matches!(e, Expr::Function(f) if matches!(f.args, FunctionArguments::Subquery(_)));
        if array_subquery
            || matches!(
                e,
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. }
            )
        {
            *e = Expr::Value(Value::Null.into());
        }
        ControlFlow::Continue(())
    }
}

struct EmptyCatalogVisitor;

impl VisitorMut for EmptyCatalogVisitor {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        prune_empty_selects(query.body.as_mut());
        ControlFlow::Continue(())
    }
}

/// Applies [`SubqueriesOverEmptyCatalogRelations`] to every `SELECT` of a
/// set operation.
fn prune_empty_selects(body: &mut SetExpr) {
    let select = match body {
        SetExpr::Select(select) => select,
        SetExpr::SetOperation { left, right, .. } => {
            prune_empty_selects(left);
            prune_empty_selects(right);
            return;
        }
        _ => return,
    };
    if !reads_unpopulated_relation(select) {
        return;
    }
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    let aggregated = select.projection.iter().any(|item| match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => aggregates(e),
        _ => false,
    }) || select.having.as_ref().is_some_and(aggregates);
    if aggregated && !grouped {
        return;
    }
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(e) = item {
            // Keep the name PostgreSQL would give the output column.
            let name = output_name(e);
            if contains_subquery(e) {
                *item = SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: Ident::with_quote('"', name),
                };
            }
        }
        if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
            let _ = VisitMut::visit(e, &mut NullSubqueries);
        }
    }
    if let Some(selection) = &mut select.selection {
        let _ = VisitMut::visit(selection, &mut NullSubqueries);
    }
}

/// Whether `e` contains a subquery.
fn contains_subquery(e: &Expr) -> bool {
    struct Find(bool);
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            self.0 = true;
            ControlFlow::Break(())
        }
    }
    let mut find = Find(false);
    let _ = Visit::visit(e, &mut find);
    find.0
}

impl SqlStatementRewriteRule for SubqueriesOverEmptyCatalogRelations {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, EmptyCatalogVisitor)
    }
}

/// `FROM generate_series(1, 3) g` and `FROM unnest(a) x`: as in
/// PostgreSQL, the alias of a function returning one column also names
/// that column (`SELECT g FROM generate_series(1, 3) g`). DataFusion would
/// name it `value` or after the call.
#[derive(Debug)]
pub struct FunctionAliasNamesItsColumn;

struct FunctionAliasVisitor;

impl VisitorMut for FunctionAliasVisitor {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let alias = match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                alias: Some(alias),
                ..
            } if name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case("generate_series")) =>
            {
                alias
            }
            TableFactor::UNNEST {
                alias: Some(alias),
                array_exprs,
                with_offset: false,
                with_ordinality: false,
                ..
            } if array_exprs.len() == 1 => alias,
            _ => return ControlFlow::Continue(()),
        };
        if alias.columns.is_empty() {
            alias.columns = vec![
                datafusion::sql::sqlparser::ast::TableAliasColumnDef::from_name(
                    alias.name.value.clone(),
                ),
            ];
        }
        ControlFlow::Continue(())
    }
}

impl SqlStatementRewriteRule for FunctionAliasNamesItsColumn {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, FunctionAliasVisitor)
    }
}

/// Output columns are named as PostgreSQL names them: a function call after
/// the function. Columns that would share a name (`SELECT NULL, NULL`) get
/// distinct aliases: PostgreSQL allows repeated names, DataFusion does not.
/// The first keeps its name; later ones get `_2`, `_3`... appended.
#[derive(Debug)]
pub struct NameDuplicateOutputs;

struct NameDuplicatesVisitor;

impl VisitorMut for NameDuplicatesVisitor {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        name_duplicates(query.body.as_mut());
        ControlFlow::Continue(())
    }
}

/// Applies [`NameDuplicateOutputs`] to every `SELECT` of a set operation.
fn name_duplicates(body: &mut SetExpr) {
    let select = match body {
        SetExpr::Select(select) => select,
        SetExpr::SetOperation { left, right, .. } => {
            name_duplicates(left);
            name_duplicates(right);
            return;
        }
        _ => return,
    };
    let mut seen: Vec<String> = Vec::new();
    for item in &mut select.projection {
        match item {
            // A column keeps its name; a function call is named after the
            // function, as in PostgreSQL (`count`, not `count(*)`), a
            // subquery after its output, a `CASE` `case`, and any other
            // expression `?column?` (`SELECT 1 + 1`). Repeats get `_2`...
            SelectItem::UnnamedExpr(e) => {
                let is_column = matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
                let base = output_name(e);
                let name = std::iter::once(base.clone())
                    .chain((2..).map(|k| format!("{base}_{k}")))
                    .find(|a| !seen.contains(a))
                    .unwrap_or_else(|| base.clone());
                seen.push(name.clone());
                if !is_column || name != base {
                    *item = SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias: Ident::with_quote('"', name),
                    };
                }
            }
            SelectItem::ExprWithAlias { alias, .. } => seen.push(alias.value.clone()),
            _ => {}
        }
    }
}

impl SqlStatementRewriteRule for NameDuplicateOutputs {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, NameDuplicatesVisitor)
    }
}

/// `x = '{1,2}'` → `x = ARRAY[1,2]`: an array written as a string, compared
/// with `=` or `<>`. PostgreSQL casts the string to the other side's array
/// type; DataFusion does not, so the literal is spelled out (integers as
/// numbers, anything else as text).
#[derive(Debug)]
pub struct ArrayLiteralComparison;

struct ArrayLiteralVisitor;

fn array_literal(e: &Expr) -> Option<Expr> {
    let Expr::Value(v) = e else { return None };
    let Value::SingleQuotedString(text) = &v.value else {
        return None;
    };
    let body = text.strip_prefix('{')?.strip_suffix('}')?;
    if body.contains(['{', '"']) {
        return None;
    }
    let elements: Vec<Expr> = body
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.parse::<i64>().is_ok() {
                Expr::value(Value::Number(e.to_string(), false))
            } else {
                Expr::value(Value::SingleQuotedString(e.to_string()))
            }
        })
        .collect();
    if elements.is_empty() {
        return None;
    }
    Some(Expr::Array(datafusion::sql::sqlparser::ast::Array {
        elem: elements,
        named: true,
    }))
}

impl VisitorMut for ArrayLiteralVisitor {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq | BinaryOperator::NotEq,
            right,
        } = expr
        {
            if let Some(a) = array_literal(right) {
                **right = a;
            } else if let Some(a) = array_literal(left) {
                **left = a;
            }
        }
        ControlFlow::Continue(())
    }
}

impl SqlStatementRewriteRule for ArrayLiteralComparison {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, ArrayLiteralVisitor)
    }
}

/// `information_schema._pg_expandarray(a)` → `named_struct('x',
/// unnest(a), 'n', unnest(generate_series(1, array_length(a, 1))))`: each
/// element with its 1-based position, as a set-returning select item
/// (pgjdbc reads primary keys this way), and `(composite).field` →
/// `get_field(composite, 'field')`, the field access DataFusion plans.
#[derive(Debug)]
pub struct ExpandArrayAndFieldAccess;

struct ExpandArrayVisitor;

/// The arguments of a call to function `name` (any qualifier), if `e` is one.
fn call_args<'a>(e: &'a Expr, name: &str) -> Option<Vec<&'a Expr>> {
    let Expr::Function(f) = e else { return None };
    let last = f.name.0.last()?.as_ident()?;
    if !last.value.eq_ignore_ascii_case(name) {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect()
}

impl VisitorMut for ExpandArrayVisitor {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Some([array]) = call_args(expr, "_pg_expandarray").as_deref() {
            let array = (*array).clone();
            let positions = subscripts(&array, Expr::value(Value::Number("1".into(), false)));
            *expr = call(
                "named_struct",
                vec![
                    string("x"),
                    call("unnest", vec![array], vec![]),
                    string("n"),
                    positions,
                ],
                vec![],
            );
            return ControlFlow::Continue(());
        }
        if let Expr::CompoundFieldAccess { root, access_chain } = expr {
            let fields: Option<Vec<String>> = access_chain
                .iter()
                .map(|a| match a {
                    datafusion::sql::sqlparser::ast::AccessExpr::Dot(Expr::Identifier(i)) => {
                        Some(i.value.clone())
                    }
                    _ => None,
                })
                .collect();
            if let (Some(fields), Expr::Nested(_)) = (fields, root.as_ref()) {
                let mut value = (**root).clone();
                for field in fields {
                    value = call("get_field", vec![value, string(&field)], vec![]);
                }
                *expr = value;
            }
        }
        ControlFlow::Continue(())
    }
}

impl SqlStatementRewriteRule for ExpandArrayAndFieldAccess {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, ExpandArrayVisitor)
    }
}

/// `'pg_class'::regclass` → `1259`: a literal naming a `pg_catalog`
/// relation resolves there first, as `pg_catalog` heads every PostgreSQL
/// search path (pgjdbc joins `pg_description` on `'pg_class'::regclass`).
/// Other names are left to the general `::regclass` rule.
#[derive(Debug)]
pub struct SystemClassRegclass;

struct SystemClassVisitor;

impl VisitorMut for SystemClassVisitor {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Cast {
            expr: operand,
            data_type,
            ..
        } = expr
        {
            let is_regclass = data_type
                .to_string()
                .to_ascii_lowercase()
                .ends_with("regclass");
            if let (true, Expr::Value(v)) = (is_regclass, operand.as_ref()) {
                if let Value::SingleQuotedString(name) = &v.value {
                    if let Some(oid) = super::pg_catalog::system_class_oid(name) {
                        *expr = Expr::value(Value::Number(oid.to_string(), false));
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
}

impl SqlStatementRewriteRule for SystemClassRegclass {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, SystemClassVisitor)
    }
}

/// `x LIKE pattern ESCAPE 'c'` → `x LIKE <pattern with backslash escapes>`,
/// the only escape DataFusion's `LIKE` takes. The pattern may be any
/// expression (SQLAlchemy sends `$1::VARCHAR || '%'`), so the translation
/// is itself SQL, read left to right as PostgreSQL reads escapes:
/// backslashes become `\\`, a doubled escape character a plain one, and
/// the escape character a backslash. (A private-use character holds the
/// doubled escape while the single ones are replaced.)
#[derive(Debug)]
pub struct LikeEscapeToBackslash;

struct LikeEscapeVisitor;

/// Stands in for a doubled escape character during the translation.
const DOUBLED_ESCAPE: &str = "\u{E000}";

fn string(s: &str) -> Expr {
    Expr::value(Value::SingleQuotedString(s.to_string()))
}

fn replace_call(e: Expr, from: &str, to: &str) -> Expr {
    call("replace", vec![e, string(from), string(to)], vec![])
}

/// `pattern` rewritten to backslash escapes, as SQL.
fn backslash_pattern(pattern: Expr, escape: char) -> Expr {
    let escape = escape.to_string();
    let doubled = format!("{escape}{escape}");
    let e = replace_call(pattern, "\\", "\\\\");
    let e = replace_call(e, &doubled, DOUBLED_ESCAPE);
    let e = replace_call(e, &escape, "\\");
    replace_call(e, DOUBLED_ESCAPE, &escape)
}

impl VisitorMut for LikeEscapeVisitor {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Like {
            pattern,
            escape_char,
            ..
        }
        | Expr::ILike {
            pattern,
            escape_char,
            ..
        } = expr
        {
            let escape = escape_char.as_ref().and_then(|v| match &v.value {
                Value::SingleQuotedString(s) => {
                    let mut cs = s.chars();
                    match (cs.next(), cs.next()) {
                        (Some(c), None) if c != '\\' => Some(c),
                        _ => None,
                    }
                }
                _ => None,
            });
            if let Some(escape) = escape {
                **pattern = backslash_pattern((**pattern).clone(), escape);
                *escape_char = None;
            }
        }
        ControlFlow::Continue(())
    }
}

impl SqlStatementRewriteRule for LikeEscapeToBackslash {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, LikeEscapeVisitor)
    }
}

/// `generate_subscripts(a, 1)` in a select list →
/// `unnest(generate_series(1, array_length(a, 1)))`: the subscripts of a
/// one-dimensional array, as a set-returning select item that pairs up
/// with `unnest(a)` beside it row by row, as in PostgreSQL.
#[derive(Debug)]
pub struct GenerateSubscriptsToUnnest;

struct GenerateSubscriptsVisitor;

impl VisitorMut for GenerateSubscriptsVisitor {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Some([array, dimension]) = call_args(expr, "generate_subscripts").as_deref() {
            *expr = subscripts(array, (*dimension).clone());
        }
        ControlFlow::Continue(())
    }
}

/// `unnest(generate_series(1, array_length(array, dimension)))`: the
/// subscripts of `array`, as a set-returning expression.
fn subscripts(array: &Expr, dimension: Expr) -> Expr {
    let one = Expr::value(Value::Number("1".into(), false));
    let length = call("array_length", vec![array.clone(), dimension], vec![]);
    call(
        "unnest",
        vec![call("generate_series", vec![one, length], vec![])],
        vec![],
    )
}

impl SqlStatementRewriteRule for GenerateSubscriptsToUnnest {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, GenerateSubscriptsVisitor)
    }
}

/// `EXISTS (SELECT ... FROM t WHERE p)` in a select list →
/// `(SELECT count(*) FROM t WHERE p) > 0` (`NOT EXISTS`: `= 0`).
///
/// DataFusion plans `EXISTS` only as a filter (a semi join); as a value in
/// the select list (psql's `\d index` asks whether the key's constraint is
/// deferrable that way) it stops at execution. A correlated `count(*)`
/// subquery it decorrelates, and the two are equal: the count is
/// positive exactly when a row exists.
#[derive(Debug)]
pub struct ExistsInSelectListToCount;

struct ExistsToCountVisitor;

impl VisitorMut for ExistsToCountVisitor {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item
                {
                    let _ = VisitMut::visit(e, &mut ExistsToCount { depth: 0 });
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Rewrites the `EXISTS` of one expression, leaving nested queries to
/// their own visit.
struct ExistsToCount {
    depth: usize,
}

impl VisitorMut for ExistsToCount {
    type Break = ();

    fn pre_visit_query(&mut self, _q: &mut Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &mut Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        let Expr::Exists { subquery, negated } = e else {
            return ControlFlow::Continue(());
        };
        let plain = subquery.limit_clause.is_none()
            && subquery.fetch.is_none()
            && subquery.with.is_none()
            && matches!(subquery.body.as_ref(), SetExpr::Select(s)
                if s.having.is_none()
                    && matches!(&s.group_by, GroupByExpr::Expressions(g, _) if g.is_empty()));
        if !plain {
            return ControlFlow::Continue(());
        }
        let mut counted = subquery.clone();
        counted.order_by = None;
        if let SetExpr::Select(select) = counted.body.as_mut() {
            select.distinct = None;
            select.projection = vec![SelectItem::UnnamedExpr(call(
                "count",
                vec![Expr::Wildcard(
                    datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken::empty(
                    ),
                )],
                vec![],
            ))];
        }
        *e = Expr::Nested(Box::new(Expr::BinaryOp {
            left: Box::new(Expr::Subquery(counted)),
            op: if *negated {
                BinaryOperator::Eq
            } else {
                BinaryOperator::Gt
            },
            right: Box::new(Expr::value(Value::Number("0".into(), false))),
        }));
        ControlFlow::Continue(())
    }
}

impl SqlStatementRewriteRule for ExistsInSelectListToCount {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, ExistsToCountVisitor)
    }
}

/// `ARRAY(SELECT expr FROM ...)` → `(SELECT array_agg(expr [ORDER BY o]) FROM ...)`.
///
/// Over no rows, PostgreSQL gives an empty array and this gives NULL;
/// otherwise the two agree, order included.
#[derive(Debug)]
pub struct ArraySubqueryToAggregate;

struct ArraySubqueryVisitor;

impl VisitorMut for ArraySubqueryVisitor {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let Expr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        let is_array = f.name.0.len() == 1
            && f.name.0[0]
                .as_ident()
                .is_some_and(|i| i.value.eq_ignore_ascii_case("array"));
        let FunctionArguments::Subquery(query) = &f.args else {
            return ControlFlow::Continue(());
        };
        if !is_array {
            return ControlFlow::Continue(());
        }
        let mut query = query.clone();
        if let Some(mapped) = array_map(&query) {
            *expr = mapped;
            return ControlFlow::Continue(());
        }
        let Some(order) = take_order(&mut query) else {
            return ControlFlow::Continue(());
        };
        if let Some(item) = single_output(&mut query) {
            wrap_item(item, |e| function("array_agg", e, order));
            if let SelectItem::ExprWithAlias { alias, .. } = item {
                *alias = Ident::with_quote('"', "array");
            }
            *expr = Expr::Subquery(query);
        }
        ControlFlow::Continue(())
    }
}

/// `ARRAY(SELECT f(x) FROM unnest(a) x [WHERE p(x)])` →
/// `array_transform(array_filter(a, x -> p(x)), x -> f(x))`: the same
/// array, element by element, without a correlated subquery.
///
/// `pg_options_to_table(a)` is `unnest(a)` with each `name=value` element
/// split at its first `=` into `option_name` and `option_value`, and is
/// mapped the same way.
fn array_map(query: &Query) -> Option<Expr> {
    if query.order_by.is_some() || query.limit_clause.is_some() || query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let plain = matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
        && select.having.is_none()
        && select.distinct.is_none();
    let [from] = select.from.as_slice() else {
        return None;
    };
    let [item] = select.projection.as_slice() else {
        return None;
    };
    let (value, _) = item_parts(item)?;
    if !plain || !from.joins.is_empty() || is_aggregate(value) {
        return None;
    }
    let TableFactor::Table {
        name,
        alias,
        args: Some(args),
        ..
    } = &from.relation
    else {
        return None;
    };
    let function = name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())?;
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(array))] = args.args.as_slice() else {
        return None;
    };
    let mut value = value.clone();
    let mut filter = select.selection.clone();
    let param = match (function.as_str(), alias) {
        ("unnest", Some(alias)) if alias.columns.is_empty() => alias.name.clone(),
        ("pg_options_to_table", alias) => {
            let param = Ident::new("__millrace_option");
            let mut split = SplitOption {
                alias: alias.as_ref().map(|a| a.name.value.clone()),
                element: Expr::Identifier(param.clone()),
            };
            let _ = VisitMut::visit(&mut value, &mut split);
            if let Some(f) = &mut filter {
                let _ = VisitMut::visit(f, &mut split);
            }
            param
        }
        _ => return None,
    };
    let lambda = |body: Expr| {
        Expr::Lambda(LambdaFunction {
            params: OneOrManyWithParens::One(LambdaFunctionParameter {
                name: param.clone(),
                data_type: None,
            }),
            body: Box::new(body),
            syntax: LambdaSyntax::Arrow,
        })
    };
    let mut array = array.clone();
    if let Some(p) = filter {
        array = call("array_filter", vec![array, lambda(p)], vec![]);
    }
    if matches!(&value, Expr::Identifier(i) if i.value == param.value) {
        return Some(array);
    }
    Some(call("array_transform", vec![array, lambda(value)], vec![]))
}

/// Replaces `option_name` and `option_value` (bare, or qualified by the
/// `pg_options_to_table` alias) with the two halves of a `name=value`
/// element.
struct SplitOption {
    alias: Option<String>,
    element: Expr,
}

impl VisitorMut for SplitOption {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        let column = match e {
            Expr::Identifier(i) => Some(i.value.clone()),
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [a, c] if self.alias.as_deref() == Some(a.value.as_str()) => Some(c.value.clone()),
                _ => None,
            },
            _ => None,
        };
        let number = |n: &str| Expr::value(Value::Number(n.into(), false));
        let equals = || Expr::value(Value::SingleQuotedString("=".into()));
        match column.as_deref() {
            Some("option_name") => {
                *e = call(
                    "split_part",
                    vec![self.element.clone(), equals(), number("1")],
                    vec![],
                );
            }
            Some("option_value") => {
                let at = call("strpos", vec![self.element.clone(), equals()], vec![]);
                *e = call(
                    "substr",
                    vec![
                        self.element.clone(),
                        Expr::BinaryOp {
                            left: Box::new(at),
                            op: BinaryOperator::Plus,
                            right: Box::new(number("1")),
                        },
                    ],
                    vec![],
                );
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl SqlStatementRewriteRule for ArraySubqueryToAggregate {
    fn rewrite(&self, s: Statement) -> Statement {
        visit_all(s, ArraySubqueryVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite_query(stmt).to_string()
    }

    #[test]
    fn scalar_subqueries_become_first_value() {
        assert_eq!(
            rewritten("SELECT (SELECT b FROM t WHERE t.a = s.a ORDER BY c LIMIT 1) FROM s"),
            "SELECT (SELECT first_value(b ORDER BY c) AS \"b\" FROM t WHERE t.a = s.a) AS \"b\" FROM s"
        );
        // Already aggregated, or a LIMIT other than 1: left alone.
        assert_eq!(
            rewritten("SELECT (SELECT max(b) FROM t) FROM s"),
            "SELECT (SELECT max(b) AS \"max\" FROM t) AS \"max\" FROM s"
        );
        assert_eq!(
            rewritten("SELECT (SELECT b FROM t LIMIT 2) FROM s"),
            "SELECT (SELECT b FROM t LIMIT 2) AS \"b\" FROM s"
        );
    }

    #[test]
    fn non_equality_correlation_becomes_a_left_join() {
        assert_eq!(
            rewritten(
                "SELECT a.n, (SELECT c.name FROM c, t WHERE c.oid = a.coll AND t.oid = a.typ \
                 AND a.coll <> t.coll AND c.ok) AS coll FROM a"
            ),
            "SELECT a.n, CASE WHEN __millrace_sq0.__matched IS NOT NULL THEN __millrace_sq0.__c3 END \
             AS \"coll\" FROM a LEFT JOIN (SELECT 1 AS __matched, c.oid AS __c0, t.oid AS __c1, \
             t.coll AS __c2, c.name AS __c3 FROM c, t WHERE (c.ok)) AS __millrace_sq0 \
             ON (__millrace_sq0.__c0 = a.coll) AND (__millrace_sq0.__c1 = a.typ) \
             AND (a.coll <> __millrace_sq0.__c2)"
        );
    }

    #[test]
    fn nested_subqueries_reading_outer_columns_become_left_joins() {
        assert_eq!(
            rewritten(
                "SELECT CASE WHEN a.id <> '' THEN (SELECT json_build_object('x', a.id = 'a', 's', s.v) \
                 FROM s WHERE a.id <> '' AND s.k = lower(a.name)) END AS o FROM a"
            ),
            "SELECT CASE WHEN a.id <> '' THEN CASE WHEN __millrace_sq0.__matched IS NOT NULL \
             THEN json_build_object('x', a.id = 'a', 's', __millrace_sq0.__c1) END END AS o \
             FROM a LEFT JOIN (SELECT 1 AS __matched, s.k AS __c0, s.v AS __c1 FROM s) \
             AS __millrace_sq0 ON (a.id <> '') AND (__millrace_sq0.__c0 = lower(a.name))"
        );
    }

    #[test]
    fn like_escape_becomes_backslash_escapes() {
        assert_eq!(
            rewritten("SELECT n FROM t WHERE n NOT LIKE 'pg/_' || '%' ESCAPE '/'"),
            "SELECT n FROM t WHERE n NOT LIKE replace(replace(replace(replace('pg/_' || '%', \
             '\\', '\\\\'), '//', '\u{E000}'), '/', '\\'), '\u{E000}', '/')"
        );
        // A backslash escape is DataFusion's own: left alone.
        assert_eq!(
            rewritten("SELECT n FROM t WHERE n LIKE 'a\\_%' ESCAPE '\\'"),
            "SELECT n FROM t WHERE n LIKE 'a\\_%' ESCAPE '\\'"
        );
    }

    #[test]
    fn system_class_names_resolve_to_their_oids() {
        assert_eq!(
            rewritten("SELECT 1 FROM d WHERE d.classoid = 'pg_class'::regclass"),
            "SELECT 1 AS \"?column?\" FROM d WHERE d.classoid = 1259"
        );
        assert_eq!(
            rewritten("SELECT 1 FROM d WHERE d.classoid = 'pg_catalog.pg_class'::regclass"),
            "SELECT 1 AS \"?column?\" FROM d WHERE d.classoid = 1259"
        );
    }

    #[test]
    fn expandarray_becomes_unnest_and_field_access_get_field() {
        assert_eq!(
            rewritten(
                "SELECT (information_schema._pg_expandarray(i.indkey)).n AS seq, \
                 information_schema._pg_expandarray(i.indkey) AS keys FROM i"
            ),
            "SELECT get_field((named_struct('x', unnest(i.indkey), 'n', \
             unnest(generate_series(1, array_length(i.indkey, 1))))), 'n') AS seq, \
             named_struct('x', unnest(i.indkey), 'n', \
             unnest(generate_series(1, array_length(i.indkey, 1)))) AS keys FROM i"
        );
        assert_eq!(
            rewritten("SELECT r.a FROM r WHERE r.a = (r.keys).x"),
            "SELECT r.a FROM r WHERE r.a = get_field((r.keys), 'x')"
        );
    }

    #[test]
    fn generate_subscripts_pairs_with_unnest() {
        assert_eq!(
            rewritten(
                "SELECT unnest(ix.indkey) AS k, generate_subscripts(ix.indkey, 1) AS o FROM ix"
            ),
            "SELECT unnest(ix.indkey) AS k, \
             unnest(generate_series(1, array_length(ix.indkey, 1))) AS o FROM ix"
        );
    }

    #[test]
    fn aggregates_with_non_equality_correlation_become_grouped_joins() {
        assert_eq!(
            rewritten(
                "SELECT p.n, array_to_string((SELECT array_agg(r.name) FROM r \
                 WHERE array_contains(p.roles, r.oid)), ',') FROM pol AS p"
            ),
            "SELECT p.n, array_to_string(__millrace_sq0.__value, ',') AS \"array_to_string\" \
             FROM pol AS p LEFT JOIN (SELECT p.roles AS __o0, array_agg(r.name) AS __value \
             FROM pol AS p, r WHERE (array_contains(p.roles, r.oid)) GROUP BY p.roles) \
             AS __millrace_sq0 ON __millrace_sq0.__o0 IS NOT DISTINCT FROM p.roles"
        );
    }

    #[test]
    fn array_subqueries_become_array_agg() {
        assert_eq!(
            rewritten("SELECT array(SELECT x FROM unnest(a) x ORDER BY 1) FROM s"),
            "SELECT (SELECT array_agg(x ORDER BY x) AS \"array\" FROM UNNEST(a) x (x)) AS \"array\" FROM s"
        );
    }

    #[test]
    fn a_function_alias_names_its_one_column() {
        assert_eq!(
            rewritten("SELECT g FROM generate_series(1, 3) g"),
            "SELECT g FROM generate_series(1, 3) g (g)"
        );
        // Column names given, or a relation: left alone.
        assert_eq!(
            rewritten("SELECT n FROM generate_series(1, 3) AS g(n)"),
            "SELECT n FROM generate_series(1, 3) AS g (n)"
        );
        assert_eq!(rewritten("SELECT t.a FROM t"), "SELECT t.a FROM t");
    }

    #[test]
    fn arrays_of_unnested_elements_become_array_transform() {
        assert_eq!(
            rewritten("SELECT array(SELECT 'toast.' || x FROM pg_catalog.unnest(t.o) x) FROM t"),
            "SELECT array_transform(t.o, x -> 'toast.' || x) AS \"array\" FROM t"
        );
    }

    #[test]
    fn option_tables_become_array_transform() {
        assert_eq!(
            rewritten(
                "SELECT array(SELECT quote_ident(option_name) || ' ' || quote_literal(option_value) \
                 FROM pg_catalog.pg_options_to_table(a.opts)) FROM a"
            ),
            "SELECT array_transform(a.opts, __millrace_option -> quote_ident(split_part(__millrace_option, '=', 1)) \
             || ' ' || quote_literal(substr(__millrace_option, strpos(__millrace_option, '=') + 1))) AS \"array\" FROM a"
        );
    }

    #[test]
    fn array_strings_compared_become_arrays() {
        assert_eq!(
            rewritten("SELECT 1 AS \"?column?\" FROM p WHERE p.roles = '{0}' OR p.n = '{a}' OR p.t = 'x'"),
            "SELECT 1 AS \"?column?\" FROM p WHERE p.roles = ARRAY[0] OR p.n = ARRAY['a'] OR p.t = 'x'"
        );
    }

    #[test]
    fn repeated_output_names_are_made_distinct() {
        assert_eq!(
            rewritten(
                "SELECT a, NULL, NULL, a, (SELECT sum(x) FROM u)::bigint, \
                 (SELECT sum(y) FROM u)::bigint FROM t"
            ),
            "SELECT a, NULL AS \"?column?\", NULL AS \"?column?_2\", a AS \"a_2\", (SELECT sum(x) AS \"sum\" FROM u)::BIGINT AS \"sum\", \
             (SELECT sum(y) AS \"sum\" FROM u)::BIGINT AS \"sum_2\" FROM t"
        );
    }

    #[test]
    fn psql_operator_and_collate() {
        assert_eq!(
            rewritten("SELECT 1 FROM pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default"),
            "SELECT 1 AS \"?column?\" FROM pg_catalog.pg_class c WHERE c.relname ~ '^(t)$'"
        );
    }
}
