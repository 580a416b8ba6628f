//! One client connection's session state: settings, the transaction block
//! with its savepoints, and the cursors it declared.
//!
//! Millrace applies every statement on its own, as one atomic change, the
//! moment it runs. A transaction block here gives clients what they rely
//! on from PostgreSQL's: the `BEGIN`/`COMMIT`/`ROLLBACK`/`SAVEPOINT`
//! commands and their errors, the transaction status in `ReadyForQuery`, an
//! aborted block that refuses statements until it is rolled back, settings
//! changed inside a block that a rollback undoes, `SET LOCAL`, read-only
//! blocks, and cursors closed at the block's end. What it does not give is
//! the undoing of writes: `ROLLBACK` after an `INSERT` warns that the write
//! stayed applied (docs/clients.md).

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use datafusion::sql::sqlparser::ast::{
    ContextModifier, Expr, Ident, ObjectName, Reset, Set, Statement, TransactionAccessMode,
    TransactionIsolationLevel, TransactionMode, Value,
};
use pgwire::messages::response::TransactionStatus;

use super::settings::{self, Setting, SETTINGS};
use crate::error::MillraceError;

type Result<T> = std::result::Result<T, MillraceError>;

/// Settings changed from their defaults: lower-cased name to (name as
/// first written, value).
#[derive(Debug, Clone, Default)]
struct Overrides {
    session: BTreeMap<String, (String, String)>,
    /// `SET LOCAL` values, dropped when the block ends.
    local: BTreeMap<String, (String, String)>,
}

/// An open transaction block.
#[derive(Debug)]
struct TransactionBlock {
    /// Settings as they were at `BEGIN`, restored by `ROLLBACK`.
    at_begin: Overrides,
    /// Savepoints, oldest first, each with the settings at its creation.
    savepoints: Vec<(String, Overrides)>,
    /// A statement failed: only `ROLLBACK` (or `ROLLBACK TO`) is accepted.
    failed: bool,
    /// Writes that ran inside the block (already applied).
    writes_applied: usize,
}

/// What a session statement produced for the client.
#[derive(Debug, Default)]
pub struct SessionReply {
    /// The command tag; `None` when the reply is rows.
    pub tag: Option<String>,
    /// Rows as (column names, rows of text), for `SHOW`.
    pub rows: Option<(Vec<String>, Vec<Vec<String>>)>,
    /// Warnings to send before the reply, as PostgreSQL would.
    pub warnings: Vec<String>,
    /// Reported settings whose value changed: (name, new value).
    pub changed: Vec<(String, String)>,
    /// Cursors to close because their transaction block ended.
    pub closed_cursors: Vec<String>,
}

impl SessionReply {
    fn tag(tag: &str) -> Self {
        SessionReply {
            tag: Some(tag.to_string()),
            ..Default::default()
        }
    }
}

/// One connection's session.
#[derive(Debug, Default)]
pub struct Session {
    overrides: Overrides,
    block: Option<TransactionBlock>,
    /// Open cursors: name to whether it outlives its block (`WITH HOLD`).
    cursors: BTreeMap<String, bool>,
    /// The session user, shown by `session_authorization`.
    user: String,
    /// A `COPY ... FROM STDIN` receiving data.
    pub copy_in: Option<super::copy::CopyIn>,
    /// Cursors declared `FOR SUBSCRIBE`, by name (also in `cursors`).
    pub subscriptions: BTreeMap<String, SharedSubscription>,
    /// Cursors over a query's rows, by name (also in `cursors`).
    pub row_cursors: BTreeMap<String, RowCursor>,
    /// Every open cursor's columns, so that a prepared `FETCH` can be
    /// described before it runs.
    cursor_schemas: BTreeMap<String, SchemaRef>,
}

/// A cursor over the rows of the snapshot its query read at `DECLARE`:
/// `FETCH` takes them from the front, in order.
#[derive(Debug)]
pub struct RowCursor {
    schema: SchemaRef,
    batches: std::collections::VecDeque<RecordBatch>,
}

impl RowCursor {
    /// A cursor over `batches`, whose columns are `schema`.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        Self {
            schema,
            batches: batches.into_iter().filter(|b| b.num_rows() > 0).collect(),
        }
    }

    /// The cursor's columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Takes the next `count` rows (every remaining row for 0).
    pub fn take(&mut self, count: usize) -> Vec<RecordBatch> {
        if count == 0 {
            return self.batches.drain(..).collect();
        }
        let mut out = Vec::new();
        let mut wanted = count;
        while wanted > 0 {
            let Some(front) = self.batches.pop_front() else {
                break;
            };
            if front.num_rows() <= wanted {
                wanted -= front.num_rows();
                out.push(front);
            } else {
                out.push(front.slice(0, wanted));
                self.batches
                    .push_front(front.slice(wanted, front.num_rows() - wanted));
                wanted = 0;
            }
        }
        out
    }
}

/// A subscription cursor, read by `FETCH` outside the session lock.
pub type SharedSubscription = std::sync::Arc<tokio::sync::Mutex<super::subscribe::Subscription>>;

fn state_error(sqlstate: &'static str, message: impl Into<String>) -> MillraceError {
    MillraceError::Data {
        sqlstate,
        message: message.into(),
    }
}

/// Whether `stmt` is handled by the session rather than the engine.
pub fn is_session_statement(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::Reset(_)
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Discard { .. }
    )
}

/// The text of a `SET` value as PostgreSQL stores it.
fn value_text(values: &[Expr]) -> String {
    values
        .iter()
        .map(|v| match v {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                Value::Boolean(b) => if *b { "on" } else { "off" }.to_string(),
                other => other.to_string(),
            },
            Expr::Identifier(i) if i.quote_style.is_none() => i.value.to_ascii_lowercase(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_default(values: &[Expr]) -> bool {
    matches!(values, [Expr::Identifier(i)] if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

fn setting_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| i.value.clone())
        .collect::<Vec<_>>()
        .join(".")
}

fn isolation_name(level: &TransactionIsolationLevel) -> &'static str {
    match level {
        TransactionIsolationLevel::ReadUncommitted => "read uncommitted",
        TransactionIsolationLevel::ReadCommitted => "read committed",
        TransactionIsolationLevel::RepeatableRead => "repeatable read",
        TransactionIsolationLevel::Serializable | TransactionIsolationLevel::Snapshot => {
            "serializable"
        }
    }
}

impl Session {
    /// A session for `user`, with the client's startup parameters applied.
    /// Unknown or invalid startup parameters are ignored: PostgreSQL's
    /// clients send options that a server may not know.
    pub fn new<'a>(user: &str, startup: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut session = Session {
            user: user.to_string(),
            ..Default::default()
        };
        for (name, value) in startup {
            if let Some(setting) = settings::find(name) {
                if let Ok(v) = settings::validate(setting, value) {
                    session.overrides.session.insert(
                        setting.name.to_ascii_lowercase(),
                        (setting.name.to_string(), v),
                    );
                }
            }
        }
        session
    }

    /// The value of setting `name` in this session.
    pub fn get(&self, name: &str) -> Result<String> {
        let key = name.to_ascii_lowercase();
        if let Some((_, v)) = self
            .overrides
            .local
            .get(&key)
            .or_else(|| self.overrides.session.get(&key))
        {
            return Ok(v.clone());
        }
        match settings::find(name) {
            Some(s) if s.name == "session_authorization" => Ok(self.user.clone()),
            Some(s) => Ok(s.default.to_string()),
            None => Err(settings::unknown(name)),
        }
    }

    /// Every setting with its current value, lower-cased name to value
    /// (custom settings included).
    pub fn settings(&self) -> BTreeMap<String, String> {
        let mut all: BTreeMap<String, String> = SETTINGS
            .iter()
            .map(|s| {
                (
                    s.name.to_ascii_lowercase(),
                    self.get(s.name).unwrap_or_default(),
                )
            })
            .collect();
        for (key, (_, value)) in self.overrides.session.iter().chain(&self.overrides.local) {
            all.insert(key.clone(), value.clone());
        }
        all
    }

    /// Every reported setting with its current value, for the startup
    /// `ParameterStatus` messages.
    pub fn reported(&self) -> Vec<(String, String)> {
        SETTINGS
            .iter()
            .filter(|s| s.reported)
            .map(|s| (s.name.to_string(), self.get(s.name).unwrap_or_default()))
            .collect()
    }

    /// The transaction status for `ReadyForQuery`.
    pub fn status(&self) -> TransactionStatus {
        match &self.block {
            None => TransactionStatus::Idle,
            Some(b) if b.failed => TransactionStatus::Error,
            Some(_) => TransactionStatus::Transaction,
        }
    }

    /// Whether a transaction block is open.
    pub fn in_block(&self) -> bool {
        self.block.is_some()
    }

    /// The schema unqualified names resolve in: the first schema of
    /// `search_path` that `exists`, other than `pg_catalog` (searched
    /// first anyway, as in PostgreSQL), if any.
    pub fn default_schema(&self, exists: impl Fn(&str) -> bool) -> Option<String> {
        let path = self.get("search_path").ok()?;
        path.split(',')
            .map(|p| p.trim().trim_matches('"').to_string())
            .filter(|p| p != "$user" && p != "pg_catalog")
            .find(|p| exists(p))
    }

    /// Checks that a statement other than a session statement may run now.
    pub fn check_statement(&self, is_write: bool, verb: &str) -> Result<()> {
        if let Some(b) = &self.block {
            if b.failed {
                return Err(state_error(
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                ));
            }
        }
        if is_write
            && (self.get("transaction_read_only").is_ok_and(|v| v == "on")
                || (self
                    .get("default_transaction_read_only")
                    .is_ok_and(|v| v == "on")
                    && self.block.is_none()))
        {
            return Err(state_error(
                "25006",
                format!("cannot execute {verb} in a read-only transaction"),
            ));
        }
        Ok(())
    }

    /// Records that a statement ran: a write inside a block is counted, a
    /// failure aborts the block.
    pub fn statement_done(&mut self, is_write: bool, ok: bool) {
        if let Some(b) = &mut self.block {
            if !ok {
                b.failed = true;
            } else if is_write {
                b.writes_applied += 1;
            }
        }
    }

    /// Checks that a cursor may be declared: cursors without `WITH HOLD`
    /// need a block, and names are unique.
    pub fn check_declare(&self, name: &str, hold: bool) -> Result<()> {
        self.check_statement(false, "DECLARE CURSOR")?;
        if !hold && self.block.is_none() {
            return Err(state_error(
                "25P01",
                "DECLARE CURSOR can only be used in transaction blocks",
            ));
        }
        if self.cursors.contains_key(name) {
            return Err(state_error(
                "42P03",
                format!("cursor \"{name}\" already exists"),
            ));
        }
        Ok(())
    }

    /// Registers a declared cursor with its columns (after
    /// [`Session::check_declare`]).
    pub fn declare_cursor(&mut self, name: &str, hold: bool, schema: SchemaRef) -> Result<()> {
        self.check_declare(name, hold)?;
        self.cursors.insert(name.to_string(), hold);
        self.cursor_schemas.insert(name.to_string(), schema);
        Ok(())
    }

    /// The columns of open cursor `name`.
    pub fn cursor_schema(&self, name: &str) -> Option<SchemaRef> {
        self.cursor_schemas.get(name).cloned()
    }

    /// Forgets everything kept for cursor `name`.
    fn forget_cursor(&mut self, name: &str) {
        self.cursors.remove(name);
        self.subscriptions.remove(name);
        self.row_cursors.remove(name);
        self.cursor_schemas.remove(name);
    }

    /// Checks that cursor `name` is open.
    pub fn cursor_exists(&self, name: &str) -> Result<()> {
        if self.cursors.contains_key(name) {
            Ok(())
        } else {
            Err(state_error(
                "34000",
                format!("cursor \"{name}\" does not exist"),
            ))
        }
    }

    /// Forgets cursor `name` (or every cursor), returning the names closed.
    pub fn close_cursor(&mut self, name: Option<&str>) -> Result<Vec<String>> {
        match name {
            None => {
                let names: Vec<String> = self.cursors.keys().cloned().collect();
                for n in &names {
                    self.forget_cursor(n);
                }
                Ok(names)
            }
            Some(n) => {
                self.cursor_exists(n)?;
                self.forget_cursor(n);
                Ok(vec![n.to_string()])
            }
        }
    }

    /// Runs a session statement (see [`is_session_statement`]).
    pub fn execute(&mut self, stmt: &Statement) -> Result<SessionReply> {
        let aborted = self.block.as_ref().is_some_and(|b| b.failed);
        let ends_block = matches!(stmt, Statement::Commit { .. } | Statement::Rollback { .. });
        if aborted && !ends_block {
            return Err(state_error(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        match stmt {
            Statement::StartTransaction { modes, .. } => self.begin(modes),
            Statement::Commit { .. } => Ok(self.end_block(aborted)),
            Statement::Rollback {
                savepoint: None, ..
            } => Ok(self.end_block(true)),
            Statement::Rollback {
                savepoint: Some(name),
                ..
            } => self.rollback_to(&name.value),
            Statement::Savepoint { name } => {
                let Some(b) = &mut self.block else {
                    return Err(state_error(
                        "25P01",
                        "SAVEPOINT can only be used in transaction blocks",
                    ));
                };
                b.savepoints
                    .push((name.value.clone(), self.overrides.clone()));
                Ok(SessionReply::tag("SAVEPOINT"))
            }
            Statement::ReleaseSavepoint { name } => {
                let position = self.savepoint_position(&name.value, "RELEASE SAVEPOINT")?;
                if let Some(b) = &mut self.block {
                    b.savepoints.truncate(position);
                }
                Ok(SessionReply::tag("RELEASE"))
            }
            Statement::ShowVariable { variable } => self.show(variable),
            Statement::Set(set) => self.set(set),
            Statement::Reset(reset) => match &reset.reset {
                Reset::ALL => self.reset_all(),
                Reset::ConfigurationParameter(name) => {
                    let mut reply = SessionReply::tag("RESET");
                    self.assign(&setting_name(name), None, false, &mut reply)?;
                    Ok(reply)
                }
            },
            Statement::Discard { .. } => {
                if self.block.is_some() {
                    return Err(state_error(
                        "25001",
                        "DISCARD ALL cannot run inside a transaction block",
                    ));
                }
                let mut reply = self.reset_all()?;
                reply.tag = Some("DISCARD ALL".into());
                reply.closed_cursors = self.close_cursor(None)?;
                Ok(reply)
            }
            other => Err(MillraceError::execution(format!(
                "not a session statement: {other}"
            ))),
        }
    }

    fn begin(&mut self, modes: &[TransactionMode]) -> Result<SessionReply> {
        let mut reply = SessionReply::tag("BEGIN");
        if self.block.is_some() {
            reply
                .warnings
                .push("there is already a transaction in progress".into());
            return Ok(reply);
        }
        self.block = Some(TransactionBlock {
            at_begin: self.overrides.clone(),
            savepoints: Vec::new(),
            failed: false,
            writes_applied: 0,
        });
        self.apply_modes(modes, "", &mut reply)?;
        Ok(reply)
    }

    /// Applies transaction modes (`READ ONLY`, `ISOLATION LEVEL ...`) to
    /// the current block, or with `prefix` "default_" to the session.
    fn apply_modes(
        &mut self,
        modes: &[TransactionMode],
        prefix: &str,
        reply: &mut SessionReply,
    ) -> Result<()> {
        for mode in modes {
            let (name, value) = match mode {
                TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => {
                    ("transaction_read_only", "on")
                }
                TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => {
                    ("transaction_read_only", "off")
                }
                TransactionMode::IsolationLevel(level) => {
                    ("transaction_isolation", isolation_name(level))
                }
            };
            let block_local = prefix.is_empty();
            self.assign(&format!("{prefix}{name}"), Some(value), block_local, reply)?;
        }
        Ok(())
    }

    /// Ends the block: commits, or rolls back (settings restored).
    fn end_block(&mut self, rollback: bool) -> SessionReply {
        let mut reply = SessionReply::tag(if rollback { "ROLLBACK" } else { "COMMIT" });
        let Some(block) = self.block.take() else {
            reply
                .warnings
                .push("there is no transaction in progress".into());
            return reply;
        };
        let before = self.reported();
        if rollback {
            self.overrides = block.at_begin;
            if block.writes_applied > 0 {
                reply.warnings.push(format!(
                    "{} write statement(s) in this transaction block were applied when they ran; \
                     Millrace does not undo them on ROLLBACK",
                    block.writes_applied
                ));
            }
        }
        self.overrides.local.clear();
        reply.changed = changed_reports(&before, &self.reported());
        let closing: Vec<String> = self
            .cursors
            .iter()
            .filter(|(_, hold)| !**hold)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &closing {
            self.forget_cursor(name);
        }
        reply.closed_cursors = closing;
        reply
    }

    fn savepoint_position(&self, name: &str, what: &str) -> Result<usize> {
        let Some(b) = &self.block else {
            return Err(state_error(
                "25P01",
                format!("{what} can only be used in transaction blocks"),
            ));
        };
        b.savepoints
            .iter()
            .rposition(|(n, _)| n == name)
            .ok_or_else(|| state_error("3B001", format!("savepoint \"{name}\" does not exist")))
    }

    fn rollback_to(&mut self, name: &str) -> Result<SessionReply> {
        let position = self.savepoint_position(name, "ROLLBACK TO SAVEPOINT")?;
        let before = self.reported();
        let mut reply = SessionReply::tag("ROLLBACK");
        if let Some(b) = &mut self.block {
            b.savepoints.truncate(position + 1);
            if let Some((_, saved)) = b.savepoints.last() {
                self.overrides = saved.clone();
            }
            b.failed = false;
        }
        reply.changed = changed_reports(&before, &self.reported());
        Ok(reply)
    }

    fn show(&self, variable: &[Ident]) -> Result<SessionReply> {
        let name = match show_target(variable) {
            None => {
                let rows = SETTINGS
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.to_string(),
                            self.get(s.name).unwrap_or_default(),
                            s.description.to_string(),
                        ]
                    })
                    .collect();
                return Ok(SessionReply {
                    rows: Some((
                        vec!["name".into(), "setting".into(), "description".into()],
                        rows,
                    )),
                    ..Default::default()
                });
            }
            Some(name) => name,
        };
        let value = self.get(&name)?;
        let column = settings::find(&name).map_or(name.clone(), |s| s.name.to_string());
        Ok(SessionReply {
            rows: Some((vec![column], vec![vec![value]])),
            ..Default::default()
        })
    }

    fn set(&mut self, set: &Set) -> Result<SessionReply> {
        let mut reply = SessionReply::tag("SET");
        match set {
            Set::SingleAssignment {
                scope,
                variable,
                values,
                ..
            } => {
                let local = matches!(scope, Some(ContextModifier::Local));
                let name = setting_name(variable);
                let value = (!is_default(values)).then(|| value_text(values));
                self.assign(&name, value.as_deref(), local, &mut reply)?;
            }
            Set::MultipleAssignments { assignments } => {
                for a in assignments {
                    let local = matches!(a.scope, Some(ContextModifier::Local));
                    let values = std::slice::from_ref(&a.value);
                    let value = (!is_default(values)).then(|| value_text(values));
                    self.assign(&setting_name(&a.name), value.as_deref(), local, &mut reply)?;
                }
            }
            Set::SetTimeZone { local, value } => {
                let values = std::slice::from_ref(value);
                let text = if matches!(value, Expr::Identifier(i) if i.value.eq_ignore_ascii_case("local"))
                    || is_default(values)
                {
                    None
                } else {
                    Some(value_text(values))
                };
                self.assign("TimeZone", text.as_deref(), *local, &mut reply)?;
            }
            Set::SetNames { charset_name, .. } => {
                self.assign(
                    "client_encoding",
                    Some(&charset_name.value),
                    false,
                    &mut reply,
                )?;
            }
            Set::SetNamesDefault {} => self.assign("client_encoding", None, false, &mut reply)?,
            Set::SetTransaction { modes, session, .. } => {
                if *session {
                    self.apply_modes(modes, "default_", &mut reply)?;
                } else if self.block.is_none() {
                    reply
                        .warnings
                        .push("SET TRANSACTION can only be used in transaction blocks".into());
                } else {
                    self.apply_modes(modes, "", &mut reply)?;
                }
            }
            other => {
                return Err(MillraceError::not_supported(format!("{other}")));
            }
        }
        Ok(reply)
    }

    /// Sets (`Some`) or resets (`None`) one setting.
    fn assign(
        &mut self,
        name: &str,
        value: Option<&str>,
        local: bool,
        reply: &mut SessionReply,
    ) -> Result<()> {
        let known: Option<&Setting> = settings::find(name);
        let key = name.to_ascii_lowercase();
        let display = known.map_or(name.to_string(), |s| s.name.to_string());
        let value = match (known, value) {
            (Some(s), Some(v)) => Some(settings::validate(s, v)?),
            (Some(s), None) => {
                settings::validate(s, s.default)?;
                None
            }
            (None, v) if settings::is_custom(name) => v.map(str::to_string),
            (None, _) => return Err(settings::unknown(name)),
        };
        let per_transaction = key.starts_with("transaction_");
        if (local || per_transaction) && self.block.is_none() {
            reply.warnings.push(format!(
                "SET {} can only be used in transaction blocks",
                if local { "LOCAL" } else { "TRANSACTION" }
            ));
            return Ok(());
        }
        let before = self.get(&display).ok();
        let map = if local || per_transaction {
            &mut self.overrides.local
        } else {
            // A session-level SET replaces a SET LOCAL of the same name.
            self.overrides.local.remove(&key);
            &mut self.overrides.session
        };
        match value {
            Some(v) => {
                map.insert(key, (display.clone(), v));
            }
            None => {
                map.remove(&key);
            }
        }
        let after = self.get(&display).ok();
        if known.is_some_and(|s| s.reported) && before != after {
            if let Some(v) = after {
                reply.changed.push((display, v));
            }
        }
        Ok(())
    }

    fn reset_all(&mut self) -> Result<SessionReply> {
        let before = self.reported();
        self.overrides.session.clear();
        self.overrides.local.clear();
        let mut reply = SessionReply::tag("RESET");
        reply.changed = changed_reports(&before, &self.reported());
        Ok(reply)
    }
}

/// The setting a `SHOW` names; `None` for `SHOW ALL`.
fn show_target(variable: &[Ident]) -> Option<String> {
    let words: Vec<String> = variable.iter().map(|i| i.value.to_lowercase()).collect();
    Some(match words.join(" ").as_str() {
        "all" => return None,
        "transaction isolation level" => "transaction_isolation".to_string(),
        "time zone" => "TimeZone".to_string(),
        "session authorization" => "session_authorization".to_string(),
        _ => variable
            .iter()
            .map(|i| i.value.clone())
            .collect::<Vec<_>>()
            .join("."),
    })
}

/// The columns `SHOW` returns, for describing it before it runs.
pub fn show_columns(variable: &[Ident]) -> Vec<String> {
    match show_target(variable) {
        None => vec!["name".into(), "setting".into(), "description".into()],
        Some(name) => vec![settings::find(&name).map_or(name, |s| s.name.to_string())],
    }
}

fn changed_reports(
    before: &[(String, String)],
    after: &[(String, String)],
) -> Vec<(String, String)> {
    after
        .iter()
        .filter(|a| !before.contains(a))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::statement::{parse_statement, split_statements, Command};

    fn empty() -> SchemaRef {
        std::sync::Arc::new(datafusion::arrow::datatypes::Schema::empty())
    }

    #[test]
    fn row_cursors_hand_out_rows_in_order_across_batches() {
        use datafusion::arrow::array::{Array, AsArray, Int64Array};
        use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
        let schema =
            std::sync::Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = |r: std::ops::Range<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![std::sync::Arc::new(Int64Array::from_iter_values(r))],
            )
            .expect("batch")
        };
        let mut cursor =
            RowCursor::new(schema.clone(), vec![batch(0..3), batch(3..3), batch(3..7)]);
        let values = |b: Vec<RecordBatch>| -> Vec<i64> {
            b.iter()
                .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect()
        };
        assert_eq!(values(cursor.take(2)), vec![0, 1]);
        assert_eq!(values(cursor.take(3)), vec![2, 3, 4]);
        assert_eq!(values(cursor.take(0)), vec![5, 6]);
        assert!(cursor.take(1).iter().all(|b| b.column(0).is_empty()));
    }

    fn run(session: &mut Session, sql: &str) -> Result<SessionReply> {
        let parts = split_statements(sql)?;
        let mut last = None;
        for part in &parts {
            let Command::Sql(stmt) = parse_statement(sql, part)? else {
                panic!("not sql: {sql}");
            };
            assert!(is_session_statement(&stmt), "{sql}");
            last = Some(session.execute(&stmt)?);
        }
        Ok(last.expect("a statement"))
    }

    fn show(session: &mut Session, name: &str) -> String {
        let reply = run(session, &format!("SHOW {name}")).expect("show");
        reply.rows.expect("rows").1[0][0].clone()
    }

    #[test]
    fn set_show_reset() {
        let mut s = Session::new("alice", [("application_name", "psql"), ("bogus", "x")]);
        assert_eq!(show(&mut s, "application_name"), "psql");
        assert_eq!(show(&mut s, "session_authorization"), "alice");
        run(&mut s, "SET search_path TO analytics, public").expect("set");
        assert_eq!(show(&mut s, "search_path"), "analytics, public");
        assert_eq!(
            s.default_schema(|n| n == "public").as_deref(),
            Some("public")
        );
        let reply = run(&mut s, "SET application_name = 'etl'").expect("set");
        assert_eq!(
            reply.changed,
            vec![("application_name".into(), "etl".into())]
        );
        run(&mut s, "SET extra_float_digits = 3").expect("set");
        assert_eq!(show(&mut s, "extra_float_digits"), "3");
        run(&mut s, "SET TIME ZONE 'Europe/Berlin'").expect("set");
        assert_eq!(show(&mut s, "timezone"), "Europe/Berlin");
        run(&mut s, "SET myapp.tenant = 'blue'").expect("custom");
        assert_eq!(show(&mut s, "myapp.tenant"), "blue");
        run(&mut s, "RESET application_name").expect("reset");
        assert_eq!(show(&mut s, "application_name"), "");
        run(&mut s, "RESET ALL").expect("reset all");
        assert_eq!(show(&mut s, "search_path"), "\"$user\", public");
        assert_eq!(
            show(&mut s, "transaction isolation level"),
            "read committed"
        );
        let err = run(&mut s, "SET no_such_thing = 1").expect_err("error");
        assert_eq!(err.sqlstate(), "42704");
        let err = run(&mut s, "SET server_version = '9.6'").expect_err("error");
        assert_eq!(err.sqlstate(), "55P02");
        let err = run(&mut s, "SHOW no_such_thing").expect_err("error");
        assert_eq!(err.sqlstate(), "42704");
        let all = run(&mut s, "SHOW ALL")
            .expect("show all")
            .rows
            .expect("rows");
        assert_eq!(all.1.len(), SETTINGS.len());
    }

    #[test]
    fn blocks_savepoints_and_rollback_of_settings() {
        let mut s = Session::new("u", []);
        assert_eq!(s.status(), TransactionStatus::Idle);
        run(&mut s, "BEGIN").expect("begin");
        assert_eq!(s.status(), TransactionStatus::Transaction);
        run(&mut s, "SET application_name = 'a'").expect("set");
        run(&mut s, "SAVEPOINT one").expect("savepoint");
        run(&mut s, "SET application_name = 'b'").expect("set");
        s.statement_done(false, false);
        assert_eq!(s.status(), TransactionStatus::Error);
        let err = run(&mut s, "SHOW application_name").expect_err("aborted");
        assert_eq!(err.sqlstate(), "25P02");
        assert!(s.check_statement(false, "SELECT").is_err());
        let reply = run(&mut s, "ROLLBACK TO SAVEPOINT one").expect("rollback to");
        assert_eq!(reply.changed, vec![("application_name".into(), "a".into())]);
        assert_eq!(s.status(), TransactionStatus::Transaction);
        run(&mut s, "RELEASE SAVEPOINT one").expect("release");
        let err = run(&mut s, "ROLLBACK TO one").expect_err("released");
        assert_eq!(err.sqlstate(), "3B001");
        s.statement_done(true, true);
        let reply = run(&mut s, "ROLLBACK").expect("rollback");
        assert_eq!(reply.tag.as_deref(), Some("ROLLBACK"));
        assert_eq!(reply.warnings.len(), 1, "the applied write is named");
        assert_eq!(show(&mut s, "application_name"), "");
        assert_eq!(s.status(), TransactionStatus::Idle);
        let reply = run(&mut s, "COMMIT").expect("commit outside");
        assert_eq!(
            reply.warnings,
            vec!["there is no transaction in progress".to_string()]
        );
        let err = run(&mut s, "SAVEPOINT x").expect_err("outside block");
        assert_eq!(err.sqlstate(), "25P01");
    }

    #[test]
    fn failed_block_commit_rolls_back_and_local_settings_end_with_block() {
        let mut s = Session::new("u", []);
        run(&mut s, "BEGIN READ ONLY").expect("begin");
        assert_eq!(show(&mut s, "transaction_read_only"), "on");
        assert_eq!(
            s.check_statement(true, "INSERT")
                .err()
                .map(|e| e.sqlstate()),
            Some("25006")
        );
        run(&mut s, "SET LOCAL statement_timeout = '5s'").expect("set local");
        assert_eq!(show(&mut s, "statement_timeout"), "5s");
        s.statement_done(false, false);
        let reply = run(&mut s, "COMMIT").expect("commit");
        assert_eq!(reply.tag.as_deref(), Some("ROLLBACK"));
        assert_eq!(show(&mut s, "statement_timeout"), "0");
        assert_eq!(show(&mut s, "transaction_read_only"), "off");
        run(
            &mut s,
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        )
        .expect("set");
        assert!(s.check_statement(true, "INSERT").is_err());
    }

    #[test]
    fn cursors_close_with_their_block() {
        let mut s = Session::new("u", []);
        assert_eq!(
            s.declare_cursor("c", false, empty())
                .err()
                .map(|e| e.sqlstate()),
            Some("25P01")
        );
        s.declare_cursor("h", true, empty())
            .expect("holdable outside a block");
        run(&mut s, "BEGIN").expect("begin");
        s.declare_cursor("c", false, empty()).expect("declare");
        assert_eq!(
            s.declare_cursor("c", false, empty())
                .err()
                .map(|e| e.sqlstate()),
            Some("42P03")
        );
        let reply = run(&mut s, "COMMIT").expect("commit");
        assert_eq!(reply.closed_cursors, vec!["c".to_string()]);
        assert!(s.cursor_exists("h").is_ok());
        assert_eq!(
            s.cursor_exists("c").err().map(|e| e.sqlstate()),
            Some("34000")
        );
    }
}
