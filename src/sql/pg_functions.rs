//! PostgreSQL functions and typing rules that client tools rely on and
//! DataFusion lacks, outside the catalog proper: `json_build_object`,
//! `to_regtype`, `current_setting`, and PostgreSQL's reading of a quoted
//! literal compared with a boolean (`indisprimary = 'f'`).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result as DFResult, ScalarValue};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::optimizer::analyzer::AnalyzerRule;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::types::sql_to_arrow;

/// The functions of this module, for registering in a session.
pub fn udfs() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(JsonBuildObject::new()),
        ScalarUDF::new_from_impl(ToRegtype::new()),
        ScalarUDF::new_from_impl(CurrentSetting::new()),
        ScalarUDF::new_from_impl(SizePretty::new()),
        ScalarUDF::new_from_impl(QuoteLiteral::new()),
        ScalarUDF::new_from_impl(SessionUser::new("session_user")),
        ScalarUDF::new_from_impl(SessionUser::new("current_user")),
    ]
    .into_iter()
    .chain(UNKNOWN_VALUED.iter().map(|(name, ty)| {
        ScalarUDF::new_from_impl(Unknown {
            name,
            return_type: ty.clone(),
            signature: Signature::variadic_any(Volatility::Stable),
        })
    }))
    .collect()
}

/// Functions whose answer Millrace does not track, answered NULL
/// (PostgreSQL's "unknown"): on-disk sizes, which psql's `\dt+` and
/// `\l+` show; the signatures of user-defined functions, of which
/// Millrace has none (`\df` lists nothing), and of triggers, of which it
/// has none either; comments on shared objects (databases), which cannot
/// be set.
const UNKNOWN_VALUED: &[(&str, DataType)] = &[
    ("pg_table_size", DataType::Int64),
    ("pg_relation_size", DataType::Int64),
    ("pg_indexes_size", DataType::Int64),
    ("pg_database_size", DataType::Int64),
    ("pg_get_function_result", DataType::Utf8),
    ("pg_get_function_arguments", DataType::Utf8),
    ("pg_get_function_identity_arguments", DataType::Utf8),
    ("shobj_description", DataType::Utf8),
    ("pg_get_triggerdef", DataType::Utf8),
];

/// A function answered NULL for every row (see [`UNKNOWN_VALUED`]).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Unknown {
    name: &'static str,
    return_type: DataType,
    signature: Signature,
}

impl ScalarUDFImpl for Unknown {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(self.return_type.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        Ok(ColumnarValue::Array(
            datafusion::arrow::array::new_null_array(&self.return_type, args.number_rows),
        ))
    }
}

/// `pg_size_pretty(bigint)`: a byte count in bytes, kB, MB, GB, TB or PB,
/// switching units and rounding exactly as PostgreSQL does.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SizePretty {
    signature: Signature,
}

impl SizePretty {
    fn new() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
        }
    }
}

/// PostgreSQL's `pg_size_pretty` for `bigint`.
fn size_pretty(bytes: i64) -> String {
    // (name, limit, rounded, bits) as in PostgreSQL's size_pretty_units.
    const UNITS: &[(&str, i64, bool, u32)] = &[
        ("bytes", 10 * 1024, false, 0),
        ("kB", 20 * 1024 - 1, true, 10),
        ("MB", 20 * 1024 - 1, true, 20),
        ("GB", 20 * 1024 - 1, true, 30),
        ("TB", 20 * 1024 - 1, true, 40),
        ("PB", 20 * 1024 - 1, true, 50),
    ];
    let half_rounded = |x: i64| (x + if x < 0 { -1 } else { 1 }) / 2;
    let mut size = bytes;
    for (i, &(name, limit, round, bits)) in UNITS.iter().enumerate() {
        let next = UNITS.get(i + 1);
        if next.is_none() || size.unsigned_abs() < limit as u64 {
            if round {
                size = half_rounded(size);
            }
            return format!("{size} {name}");
        }
        if let Some(&(_, _, next_round, next_bits)) = next {
            let shift = next_bits - bits - u32::from(next_round) + u32::from(round);
            size /= 1i64 << shift;
        }
    }
    format!("{size} bytes")
}

impl ScalarUDFImpl for SizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let sizes = arrays[0].as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let out: datafusion::arrow::array::StringArray =
            sizes.iter().map(|v| v.map(size_pretty)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The client session's settings (lower-cased name to value), carried in
/// the query's configuration for `current_setting`.
#[derive(Debug, Clone, Default)]
pub struct SessionSettings(pub BTreeMap<String, String>);

impl ExtensionOptions for SessionSettings {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> DFResult<()> {
        self.0.insert(key.to_ascii_lowercase(), value.to_string());
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        self.0
            .iter()
            .map(|(k, v)| ConfigEntry {
                key: format!("{}.{k}", Self::PREFIX),
                value: Some(v.clone()),
                description: "a client session setting",
            })
            .collect()
    }
}

impl ConfigExtension for SessionSettings {
    const PREFIX: &'static str = "millrace_session";
}

/// `session_user` and `current_user`: the user the client logged in as.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionUser {
    name: &'static str,
    signature: Signature,
}

impl SessionUser {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            signature: Signature::exact(vec![], Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for SessionUser {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let user = args
            .config_options
            .extensions
            .get::<SessionSettings>()
            .and_then(|s| s.0.get("session_authorization").cloned())
            .unwrap_or_default();
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(user))))
    }
}

/// `current_setting(name [, missing_ok])`: the session's value of a
/// setting. Volatile, so that it is never folded at plan time without the
/// session's settings.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl CurrentSetting {
    fn new() -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    TypeSignature::String(1),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
                ],
                Volatility::Volatile,
            ),
        }
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let session = args.config_options.extensions.get::<SessionSettings>();
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let missing_ok = arrays.get(1).map(|a| a.as_boolean().clone());
        let mut out = StringBuilder::with_capacity(args.number_rows, 16);
        for (row, name) in names.as_string::<i32>().iter().enumerate() {
            let Some(name) = name else {
                out.append_null();
                continue;
            };
            let value = session
                .and_then(|s| s.0.get(&name.to_ascii_lowercase()).cloned())
                .or_else(|| crate::pgwire::settings::find(name).map(|s| s.default.to_string()));
            match value {
                Some(v) => out.append_value(v),
                None if missing_ok.as_ref().is_some_and(|m| m.value(row)) => out.append_null(),
                None => {
                    return datafusion::common::exec_err!(
                        "unrecognized configuration parameter \"{name}\""
                    )
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `json_build_object(key1, value1, ...)`: a JSON object as text, with
/// booleans, numbers and NULLs as JSON values and anything else as strings.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn json_value(array: &ArrayRef, row: usize) -> DFResult<serde_json::Value> {
    // Logical nulls: an untyped NULL literal has no validity buffer.
    if array.logical_nulls().is_some_and(|n| n.is_null(row)) {
        return Ok(serde_json::Value::Null);
    }
    Ok(match ScalarValue::try_from_array(array, row)? {
        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(b),
        v @ (ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_)
        | ScalarValue::Float32(_)
        | ScalarValue::Float64(_)
        | ScalarValue::Decimal128(..)) => serde_json::from_str(&v.to_string())
            .unwrap_or_else(|_| serde_json::Value::String(v.to_string())),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => serde_json::Value::String(s),
        other => serde_json::Value::String(other.to_string()),
    })
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return datafusion::common::plan_err!(
                "argument list must have even number of elements"
            );
        }
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::with_capacity(rows, rows * 32);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = match json_value(&pair[0], row)? {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => {
                        return datafusion::common::exec_err!(
                            "null value not allowed for object key"
                        )
                    }
                    other => other.to_string(),
                };
                object.insert(key, json_value(&pair[1], row)?);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `to_regtype(text)`: the OID of the named type, or NULL when there is
/// no such type (`to_regtype('hstore')`, which SQLAlchemy asks at connect).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToRegtype {
    signature: Signature,
}

impl ToRegtype {
    fn new() -> Self {
        Self {
            signature: Signature::string(1, Volatility::Stable),
        }
    }
}

/// The wire OID of SQL type `name`, if Millrace has that type.
fn type_oid(name: &str) -> Option<i32> {
    let name = name.trim();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(name);
    let ty = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(name)
        .ok()?
        .parse_data_type()
        .ok()?;
    use datafusion::sql::sqlparser::ast::DataType as SqlType;
    if matches!(
        ty,
        SqlType::Varchar(_) | SqlType::CharVarying(_) | SqlType::CharacterVarying(_)
    ) {
        return Some(pgwire::api::Type::VARCHAR.oid() as i32);
    }
    let (arrow, declared) = sql_to_arrow(&ty).ok()?;
    if declared.as_deref() == Some("jsonb") {
        return Some(pgwire::api::Type::JSONB.oid() as i32);
    }
    arrow_pg::datatypes::into_pg_type(&arrow)
        .ok()
        .map(|t| t.oid() as i32)
}

impl ScalarUDFImpl for ToRegtype {
    fn name(&self) -> &str {
        "to_regtype"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let oids: datafusion::arrow::array::Int32Array = names
            .as_string::<i32>()
            .iter()
            .map(|n| n.and_then(type_oid))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(oids)))
    }
}

/// `quote_literal(value)`: the value as a quoted SQL string literal, quotes
/// doubled, and backslashes doubled under an `E` prefix, as PostgreSQL
/// writes it; NULL stays NULL. Values of other types are quoted as text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct QuoteLiteral {
    signature: Signature,
}

impl QuoteLiteral {
    fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

/// PostgreSQL's `quote_literal` for text.
fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

impl ScalarUDFImpl for QuoteLiteral {
    fn name(&self) -> &str {
        "quote_literal"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return datafusion::common::exec_err!("quote_literal takes one argument");
        };
        let values = value.to_array(args.number_rows)?;
        let text = datafusion::arrow::compute::cast(&values, &DataType::Utf8)?;
        let out: datafusion::arrow::array::StringArray = text
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(quote_literal))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Quoted literals take the type their context gives them, as PostgreSQL
/// types an unknown literal: one compared with a boolean is read as a
/// boolean (`indisprimary = 'f'`, `paid IN ('t', 'false')`), and a
/// numeric one passed to a function that takes an integer (an OID, as in
/// `pg_relation_is_publishable('16384')`) is read as that integer.
/// DataFusion would refuse both (`Boolean` against `Utf8`, and no implicit
/// cast from `Utf8` to an integer parameter). Runs before type coercion.
#[derive(Debug, Default)]
pub struct TextLiteralCoercion;

fn boolean_literal(e: &Expr) -> Option<Expr> {
    let Expr::Literal(ScalarValue::Utf8(Some(s)), _) = e else {
        return None;
    };
    let value = match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => true,
        "f" | "false" | "n" | "no" | "off" | "0" => false,
        _ => return None,
    };
    Some(Expr::Literal(ScalarValue::Boolean(Some(value)), None))
}

/// A quoted literal holding an integer, as a literal of `target` when that
/// is an integer type.
fn integer_literal(e: &Expr, target: &DataType) -> Option<Expr> {
    let Expr::Literal(ScalarValue::Utf8(Some(s)), _) = e else {
        return None;
    };
    if !target.is_integer() {
        return None;
    }
    let n: i64 = s.trim().parse().ok()?;
    ScalarValue::Int64(Some(n))
        .cast_to(target)
        .ok()
        .map(|v| Expr::Literal(v, None))
}

fn is_comparison(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom
    )
}

fn rewrite_expr(expr: Expr, schema: &DFSchema) -> DFResult<Transformed<Expr>> {
    let is_bool = |e: &Expr| matches!(e.get_type(schema), Ok(DataType::Boolean));
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if is_comparison(&op) => {
            if is_bool(&left) {
                if let Some(lit) = boolean_literal(&right) {
                    return Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                        left,
                        op,
                        Box::new(lit),
                    ))));
                }
            }
            if is_bool(&right) {
                if let Some(lit) = boolean_literal(&left) {
                    return Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                        Box::new(lit),
                        op,
                        right,
                    ))));
                }
            }
            Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                left,
                op,
                right,
            })))
        }
        Expr::InList(InList {
            expr,
            list,
            negated,
        }) if is_bool(&expr) && list.iter().all(|e| boolean_literal(e).is_some()) => {
            let list = list.iter().filter_map(boolean_literal).collect();
            Ok(Transformed::yes(Expr::InList(InList {
                expr,
                list,
                negated,
            })))
        }
        Expr::ScalarFunction(mut call) => {
            let TypeSignature::Exact(types) = &call.func.signature().type_signature else {
                return Ok(Transformed::no(Expr::ScalarFunction(call)));
            };
            let mut changed = false;
            for (arg, target) in call.args.iter_mut().zip(types) {
                if let Some(lit) = integer_literal(arg, target) {
                    *arg = lit;
                    changed = true;
                }
            }
            Ok(if changed {
                Transformed::yes(Expr::ScalarFunction(call))
            } else {
                Transformed::no(Expr::ScalarFunction(call))
            })
        }
        other => Ok(Transformed::no(other)),
    }
}

impl AnalyzerRule for TextLiteralCoercion {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DFResult<LogicalPlan> {
        rewrite_every_expression(plan, rewrite_expr)
    }

    fn name(&self) -> &str {
        "text_literal_coercion"
    }
}

/// `text(value)`: the value as PostgreSQL writes it, for the types whose
/// text Arrow's cast writes differently (timestamps with a `T` between date
/// and time, floats without PostgreSQL's exponent form).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgText {
    signature: Signature,
}

impl PgText {
    fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    /// `text(e)` as an expression.
    fn call(e: Expr) -> Expr {
        Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
            Arc::new(ScalarUDF::new_from_impl(Self::new())),
            vec![e],
        ))
    }
}

impl ScalarUDFImpl for PgText {
    fn name(&self) -> &str {
        "text"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(values) = arrays.first() else {
            return Err(datafusion::error::DataFusionError::Plan(
                "text() takes one argument".into(),
            ));
        };
        let formatter = ArrayFormatter::try_new(values.as_ref(), &FormatOptions::default())?;
        let mut out = StringBuilder::with_capacity(values.len(), values.len() * 24);
        for row in 0..values.len() {
            if values.is_null(row) {
                out.append_null();
                continue;
            }
            match crate::pgwire::encode::postgres_text(values.as_ref(), row) {
                Some(text) => out.append_value(text),
                None => out.append_value(formatter.value(row).to_string()),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Whether Arrow's text of a `t` differs from PostgreSQL's.
fn text_differs(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(_, _) | DataType::Time64(_) | DataType::Float32 | DataType::Float64
    )
}

/// Rewrites every expression of `plan` (subqueries included) bottom-up by
/// `rewrite`, which sees the schema the expression's columns resolve in.
fn rewrite_every_expression(
    plan: LogicalPlan,
    rewrite: fn(Expr, &DFSchema) -> DFResult<Transformed<Expr>>,
) -> DFResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|plan| {
        let mut schema = merge_schema(&plan.inputs());
        if let LogicalPlan::TableScan(scan) = &plan {
            schema.merge(&DFSchema::try_from_qualified_schema(
                scan.table_name.clone(),
                &scan.source.schema(),
            )?);
        }
        let transformed = plan.map_expressions(|e| e.transform_up(|e| rewrite(e, &schema)))?;
        if transformed.transformed {
            transformed.map_data(|p| p.recompute_schema())
        } else {
            Ok(transformed)
        }
    })
    .map(|t| t.data)
}

/// Analyzer rule, after type coercion: casts to text of timestamps, times
/// and floats, written or implicit (`'at ' || ts`, `concat`), produce
/// PostgreSQL's text (`2026-01-01 10:00:00`, `1e+20`) through
/// [`PgText`] instead of Arrow's (`2026-01-01T10:00:00`).
#[derive(Debug)]
pub struct PgTextCasts;

fn text_cast(expr: Expr, schema: &DFSchema) -> DFResult<Transformed<Expr>> {
    let (inner, target) = match &expr {
        Expr::Cast(c) => (&c.expr, c.field.data_type()),
        Expr::TryCast(c) => (&c.expr, c.field.data_type()),
        _ => return Ok(Transformed::no(expr)),
    };
    if !matches!(
        target,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Ok(Transformed::no(expr));
    }
    let from = match inner.get_type(schema) {
        Ok(t) => t,
        Err(_) => return Ok(Transformed::no(expr)),
    };
    if !text_differs(&from) {
        return Ok(Transformed::no(expr));
    }
    let text = PgText::call((**inner).clone());
    Ok(Transformed::yes(if *target == DataType::Utf8 {
        text
    } else {
        Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(text),
            target.clone(),
        ))
    }))
}

impl AnalyzerRule for PgTextCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DFResult<LogicalPlan> {
        rewrite_every_expression(plan, text_cast)
    }

    fn name(&self) -> &str {
        "pg_text_casts"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_resolve_to_wire_oids() {
        assert_eq!(type_oid("integer"), Some(23));
        assert_eq!(type_oid("pg_catalog.int8"), Some(20));
        assert_eq!(type_oid("character varying"), Some(1043));
        assert_eq!(type_oid("jsonb"), Some(3802));
        assert_eq!(type_oid("hstore"), None);
        assert_eq!(type_oid("not a type at all"), None);
    }

    #[test]
    fn literals_are_quoted_as_postgresql_quotes_them() {
        assert_eq!(quote_literal("plain"), "'plain'");
        assert_eq!(quote_literal("O'Reilly"), "'O''Reilly'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn sizes_print_as_postgresql_prints_them() {
        assert_eq!(size_pretty(0), "0 bytes");
        assert_eq!(size_pretty(10239), "10239 bytes");
        assert_eq!(size_pretty(10240), "10 kB");
        assert_eq!(size_pretty(1_000_000), "977 kB");
        assert_eq!(size_pretty(20_970_000), "20 MB");
        assert_eq!(size_pretty(-10240), "-10 kB");
        assert_eq!(size_pretty(1 << 50), "1024 TB");
        assert_eq!(size_pretty(i64::MAX), "8192 PB");
    }

    #[test]
    fn boolean_spellings() {
        let lit = |s: &str| Expr::Literal(ScalarValue::Utf8(Some(s.into())), None);
        let as_bool = |e: Option<Expr>| match e {
            Some(Expr::Literal(ScalarValue::Boolean(Some(b)), _)) => Some(b),
            _ => None,
        };
        assert_eq!(as_bool(boolean_literal(&lit("f"))), Some(false));
        assert_eq!(as_bool(boolean_literal(&lit("TRUE"))), Some(true));
        assert_eq!(as_bool(boolean_literal(&lit("r"))), None);
    }
}
