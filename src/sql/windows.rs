//! Window table functions: `TUMBLE` and `HOP` in `FROM`, rewritten into
//! plain relational SQL before planning.
//!
//! ```sql
//! SELECT window_start, window_end, count(*)
//! FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
//! GROUP BY window_start, window_end;
//! ```
//!
//! `TUMBLE(t, ts, size)` becomes a derived table with every column of `t`
//! plus `window_start = date_bin(size, ts)` and `window_end = window_start
//! + size`: each row is in exactly one window. `HOP(t, ts, slide, size)`
//! puts each row in the `size / slide` windows that contain it, as a
//! `UNION ALL` of that many projections, the `i`-th starting `i` slides
//! before `date_bin(slide, ts)`. Windows are aligned to the Unix epoch.
//!
//! `SESSION(t, ts, gap [, key, ...])` puts each row in the session of its
//! key: rows of one key less than `gap` apart, in `ts` order, share one, so
//! a session is `[first ts, last ts + gap)`, as in Flink. A row's session
//! depends on its neighbours, so it becomes window functions: `lag(ts)`
//! marks the rows that start a session, a running `sum` of the marks
//! numbers the sessions, and `min(ts)`/`max(ts)` over each numbered
//! session give its bounds. A late row that bridges two sessions merges
//! them: both are retracted and the merged one inserted.
//!
//! Because the result is ordinary SQL (a projection, or a union of them),
//! every operator the engine maintains incrementally applies unchanged:
//! an insert, update or delete of a row changes exactly the windows that
//! contain it, and grouped results update continuously as rows arrive.
//! The derived table keeps the name of the table (or the alias given), so
//! `bid.price` still resolves.

use std::ops::ControlFlow;

use datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, Query, Statement, TableAlias,
    TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{MillraceError, Result};

/// Most windows one row may belong to in a `HOP`.
const MAX_HOPS: i64 = 64;

/// Rewrites every `TUMBLE(...)` and `HOP(...)` in `FROM` clauses of
/// `statement` (subqueries and view definitions included).
pub fn rewrite_window_functions(statement: &mut Statement) -> Result<()> {
    let mut rewriter = Rewriter;
    match statement.visit(&mut rewriter) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(e) => Err(e),
    }
}

struct Rewriter;

impl VisitorMut for Rewriter {
    type Break = MillraceError;

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Self::Break> {
        let TableFactor::Table {
            name,
            alias,
            args: Some(args),
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let function = name.to_string().to_ascii_lowercase();
        let kind = match function.as_str() {
            "tumble" => WindowKind::Tumble,
            "hop" => WindowKind::Hop,
            "session" => WindowKind::Session,
            _ => return ControlFlow::Continue(()),
        };
        match derived_table(kind, &args.args, alias.take()) {
            Ok(derived) => {
                *factor = derived;
                ControlFlow::Continue(())
            }
            Err(e) => ControlFlow::Break(e),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum WindowKind {
    Tumble,
    Hop,
    Session,
}

impl WindowKind {
    fn name(self) -> &'static str {
        match self {
            WindowKind::Tumble => "TUMBLE",
            WindowKind::Hop => "HOP",
            WindowKind::Session => "SESSION",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            WindowKind::Tumble => "TUMBLE(table, time_column, size)",
            WindowKind::Hop => "HOP(table, time_column, slide, size)",
            WindowKind::Session => "SESSION(table, time_column, gap [, key_column, ...])",
        }
    }
}

fn positional(arg: &FunctionArg) -> Option<&Expr> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
        _ => None,
    }
}

/// The table named by a window function's first argument.
fn table_name(kind: WindowKind, arg: &Expr) -> Result<ObjectName> {
    let parts = match arg {
        Expr::Identifier(i) => vec![i.clone()],
        Expr::CompoundIdentifier(parts) => parts.clone(),
        _ => {
            return Err(MillraceError::plan(format!(
                "the first argument of {} must name a table, view or source, not {arg}",
                kind.name()
            )))
        }
    };
    Ok(ObjectName::from(parts))
}

/// The length of an interval literal in microseconds, when it has a fixed
/// length (no months or years).
fn interval_micros(kind: WindowKind, what: &str, e: &Expr) -> Result<i64> {
    let bad = || {
        MillraceError::plan(format!(
            "the {what} of {} must be a positive interval of fixed length, like INTERVAL '10' SECOND, not {e}",
            kind.name()
        ))
    };
    let Expr::Interval(interval) = e else {
        return Err(bad());
    };
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    let text = match &interval.leading_field {
        Some(unit) if interval.last_field.is_none() => format!("{text} {unit}"),
        None => text,
        Some(_) => return Err(bad()),
    };
    let parsed = parse_interval_month_day_nano(&text).map_err(|_| bad())?;
    if parsed.months != 0 {
        return Err(bad());
    }
    let micros = (parsed.days as i64)
        .checked_mul(86_400_000_000)
        .and_then(|d| d.checked_add(parsed.nanoseconds / 1000))
        .filter(|m| *m > 0)
        .ok_or_else(bad)?;
    if parsed.nanoseconds % 1000 != 0 {
        return Err(bad());
    }
    Ok(micros)
}

/// A fixed length of time as SQL: a duration, which Arrow adds to a
/// timestamp as one integer addition (an interval goes through calendar
/// arithmetic per row, as it may hold months).
fn duration(micros: i64) -> String {
    format!("arrow_cast({micros}, 'Duration(Microsecond)')")
}

/// The derived table that replaces one window function call.
fn derived_table(
    kind: WindowKind,
    args: &[FunctionArg],
    alias: Option<TableAlias>,
) -> Result<TableFactor> {
    let exprs: Vec<&Expr> = args.iter().filter_map(positional).collect();
    let expected = match kind {
        WindowKind::Tumble => 3,
        WindowKind::Hop => 4,
        // Keys after the gap.
        WindowKind::Session => exprs.len().max(3),
    };
    if exprs.len() != expected || args.len() != expected {
        return Err(MillraceError::plan(format!(
            "{} takes {expected} arguments: {}",
            kind.name(),
            kind.usage()
        )));
    }
    let table = table_name(kind, exprs[0])?;
    let time = exprs[1];
    let sql = match kind {
        WindowKind::Tumble => {
            let size = exprs[2];
            let size_us = interval_micros(kind, "size", size)?;
            let size_shift = duration(size_us);
            format!(
                "SELECT *, date_bin({size}, {time}) AS window_start, \
                 date_bin({size}, {time}) + {size_shift} AS window_end FROM {table}"
            )
        }
        WindowKind::Hop => {
            let (slide, size) = (exprs[2], exprs[3]);
            let slide_us = interval_micros(kind, "slide", slide)?;
            let size_us = interval_micros(kind, "size", size)?;
            if size_us % slide_us != 0 {
                return Err(MillraceError::not_supported(format!(
                    "HOP with a size ({size}) that is not a whole number of slides ({slide})"
                )));
            }
            let hops = size_us / slide_us;
            if hops > MAX_HOPS {
                return Err(MillraceError::not_supported(format!(
                    "HOP with more than {MAX_HOPS} windows per row (size {size}, slide {slide})"
                )));
            }
            let size_shift = duration(size_us);
            (0..hops)
                .map(|i| {
                    let start = match i {
                        0 => format!("date_bin({slide}, {time})"),
                        _ => format!("date_bin({slide}, {time}) - {}", duration(i * slide_us)),
                    };
                    format!(
                        "SELECT *, {start} AS window_start, {start} + {size_shift} AS window_end FROM {table}"
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        }
        WindowKind::Session => {
            let gap = exprs[2];
            interval_micros(kind, "gap", gap)?;
            let mut keys = Vec::new();
            for k in &exprs[3..] {
                match k {
                    Expr::Identifier(_) | Expr::CompoundIdentifier(_) => keys.push(k.to_string()),
                    other => {
                        return Err(MillraceError::plan(format!(
                            "the keys of SESSION must be columns, not {other}"
                        )))
                    }
                }
            }
            let partition = |extra: &str| {
                let mut all = keys.clone();
                if !extra.is_empty() {
                    all.push(extra.to_string());
                }
                if all.is_empty() {
                    String::new()
                } else {
                    format!("PARTITION BY {} ", all.join(", "))
                }
            };
            let by_key = partition("");
            let by_session = partition("__session_id");
            // A row starts a session when the previous row of its key is
            // `gap` or more before it (or there is none). Of rows with equal
            // times at most the first, in whatever order, starts one; a
            // running sum over a RANGE frame numbers them all alike.
            format!(
                "SELECT * EXCLUDE (__session_starts, __session_id), \
                 min({time}) OVER ({by_session}) AS window_start, \
                 max({time}) OVER ({by_session}) + {gap} AS window_end \
                 FROM (SELECT *, sum(__session_starts) OVER ({by_key}ORDER BY {time} \
                 RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __session_id \
                 FROM (SELECT *, CASE WHEN lag({time}) OVER ({by_key}ORDER BY {time}) IS NULL \
                 OR {time} - lag({time}) OVER ({by_key}ORDER BY {time}) >= {gap} \
                 THEN 1 ELSE 0 END AS __session_starts \
                 FROM {table}) AS __session_marked) AS __session_numbered"
            )
        }
    };
    let subquery = match kind {
        // `* EXCLUDE` is outside PostgreSQL's syntax.
        WindowKind::Session => parse_query_with(
            &sql,
            &datafusion::sql::sqlparser::dialect::GenericDialect {},
        )?,
        _ => parse_query(&sql)?,
    };
    // Keep the table's own name for qualified references (`bid.price`).
    let alias = alias.or_else(|| {
        table
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| TableAlias {
                explicit: true,
                name: Ident::new(i.value.clone()),
                columns: vec![],
                at: None,
            })
    });
    Ok(TableFactor::Derived {
        lateral: false,
        subquery: Box::new(subquery),
        alias,
        sample: None,
    })
}

fn parse_query(sql: &str) -> Result<Query> {
    parse_query_with(sql, &PostgreSqlDialect {})
}

fn parse_query_with(
    sql: &str,
    dialect: &dyn datafusion::sql::sqlparser::dialect::Dialect,
) -> Result<Query> {
    let mut parser = Parser::new(dialect)
        .try_with_sql(sql)
        .map_err(|e| MillraceError::plan(format!("window rewrite: {e}")))?;
    let query = parser
        .parse_query()
        .map_err(|e| MillraceError::plan(format!("window rewrite: {e}")))?;
    Ok(*query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(sql: &str) -> Result<String> {
        let dialect = PostgreSqlDialect {};
        let mut statements = Parser::parse_sql(&dialect, sql).unwrap();
        rewrite_window_functions(&mut statements[0])?;
        Ok(statements[0].to_string())
    }

    #[test]
    fn tumble_becomes_a_projection_with_window_bounds() {
        let sql = rewrite(
            "SELECT window_start, count(*) FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_start",
        )
        .unwrap();
        assert!(
            sql.contains("date_bin(INTERVAL '10' SECOND, date_time) AS window_start"),
            "{sql}"
        );
        assert!(sql.contains("FROM bid) AS bid"), "{sql}");
    }

    #[test]
    fn hop_becomes_one_projection_per_window() {
        let sql = rewrite(
            "SELECT * FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10 seconds') AS h",
        )
        .unwrap();
        assert_eq!(sql.matches("UNION ALL").count(), 4, "{sql}");
        assert!(
            sql.contains("date_time) - arrow_cast(8000000, 'Duration(Microsecond)') AS"),
            "{sql}"
        );
        assert!(sql.ends_with("AS h"), "{sql}");
    }

    #[test]
    fn bad_calls_are_named() {
        let err = |sql: &str| rewrite(sql).unwrap_err().to_string();
        assert!(err("SELECT * FROM TUMBLE(bid, date_time)").contains("takes 3 arguments"));
        assert!(
            err("SELECT * FROM TUMBLE(bid, date_time, INTERVAL '1' MONTH)")
                .contains("fixed length")
        );
        assert!(
            err("SELECT * FROM HOP(bid, t, INTERVAL '3' SECOND, INTERVAL '10' SECOND)")
                .contains("whole number of slides")
        );
        assert!(
            err("SELECT * FROM TUMBLE(1, t, INTERVAL '1' SECOND)").contains("must name a table")
        );
        assert!(err("SELECT * FROM SESSION(bid, t)").contains("SESSION(table, time_column, gap"));
        assert!(
            err("SELECT * FROM SESSION(bid, t, INTERVAL '1' SECOND, a + 1)")
                .contains("keys of SESSION must be columns")
        );
    }

    #[test]
    fn other_table_functions_are_left_alone() {
        let sql = rewrite("SELECT * FROM generate_series(1, 3)").unwrap();
        assert_eq!(sql, "SELECT * FROM generate_series(1, 3)");
    }
}
