//! The PostgreSQL wire protocol front end, on the `pgwire` crate.
//!
//! Simple and extended query protocols both end in [`MillraceHandler::run`]:
//! session statements (`SET`, `SHOW`, `BEGIN`, `SAVEPOINT`, cursors...) are
//! answered by the connection's [`Session`], everything else by the
//! [`Engine`]. Result rows are Arrow batches encoded by `arrow-pg` in text or
//! binary per column as the client asks; errors carry SQLSTATE codes from
//! [`MillraceError::sqlstate`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::into_pg_type;
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::sql::sqlparser::ast::{
    CloseCursor, Declare, FetchDirection, Statement, Value as SqlValue,
};
use futures::{stream, Sink, SinkExt, StreamExt};
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    LoginInfo, Password, ServerParameterProvider, StartupHandler,
};
use pgwire::api::copy::{send_copy_in_response, send_copy_out_response, CopyHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{
    send_execution_response, send_query_response, send_ready_for_query, ExtendedQueryHandler,
    SimpleQueryHandler,
};
use pgwire::api::results::{
    CopyResponse, DescribeResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, MemPortalStore, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type, DEFAULT_NAME,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::{NoData, ParameterDescription};
use pgwire::messages::extendedquery::{Describe, Execute, TARGET_TYPE_BYTE_STATEMENT};
use pgwire::messages::response::{EmptyQueryResponse, NoticeResponse};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

pub mod copy;
pub(crate) mod encode;
pub mod session;
pub mod settings;
pub mod subscribe;

use crate::error::MillraceError;
use crate::sql::statement::{parse_statement, split_statements, Command, StatementText, Subscribe};
use crate::sql::{Engine, EngineOptions, QueryOutput};
use session::{is_session_statement, RowCursor, Session, SessionReply};
pub use settings::SERVER_VERSION;

/// Converts an engine error to the wire's error response.
pub fn error_info(e: &MillraceError) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".to_string(), e.sqlstate().to_string(), e.to_string());
    if let MillraceError::Parse {
        position: Some(p), ..
    } = e
    {
        info.position = Some(p.to_string());
    }
    if let MillraceError::UniqueViolation { constraint, detail } = e {
        info.message = format!("duplicate key value violates unique constraint \"{constraint}\"");
        info.detail = Some(detail.clone());
    }
    info
}

fn user_error(e: MillraceError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(&e)))
}

/// A statement prepared through the extended protocol.
#[derive(Debug, Clone)]
pub struct PreparedStatement {
    text: StatementText,
    command: Command,
    param_types: Vec<Option<DataType>>,
    schema: SchemaRef,
}

/// The connection's session, created at startup.
type SharedSession = Arc<Mutex<Session>>;

fn session_of<C: ClientInfo>(client: &C) -> SharedSession {
    client
        .session_extensions()
        .get_or_insert_with(|| Mutex::new(new_session(client)))
}

/// A session for the client's user, with its startup parameters applied
/// (`options` too: `-c name=value`, as `PGOPTIONS` sends them).
fn new_session<C: ClientInfo>(client: &C) -> Session {
    let metadata = client.metadata();
    let user = metadata.get("user").cloned().unwrap_or_default();
    let mut startup: Vec<(&str, &str)> = metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "options")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(options) = metadata.get("options") {
        startup.extend(startup_options(options));
    }
    Session::new(&user, startup)
}

/// Locks a session; a panic while it was held cannot leave it half
/// updated in a way worse than refusing the connection's next statement.
fn lock(session: &SharedSession) -> std::sync::MutexGuard<'_, Session> {
    session
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The engine options a session's statements run with: the schema its
/// `search_path` selects and its settings.
fn engine_options(engine: &Engine, session: &SharedSession) -> EngineOptions {
    let session = lock(session);
    EngineOptions {
        default_schema: session.default_schema(|s| engine.schema_exists(s)),
        settings: session.settings(),
        ..Default::default()
    }
}

/// Parses and plans statements for the extended protocol.
pub struct MillraceQueryParser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for MillraceQueryParser {
    type Statement = PreparedStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut parts = split_statements(sql).map_err(user_error)?;
        if parts.len() > 1 {
            return Err(user_error(MillraceError::Parse {
                message: "cannot insert multiple commands into a prepared statement".into(),
                position: None,
            }));
        }
        let Some(text) = parts.pop() else {
            return Ok(None);
        };
        let command = parse_statement(sql, &text).map_err(user_error)?;
        let options = engine_options(&self.engine, &session_of(client));
        let (param_types, schema) = match &command {
            Command::Sql(stmt) if is_session_statement(stmt) => {
                let columns = match stmt.as_ref() {
                    Statement::ShowVariable { variable } => session::show_columns(variable),
                    _ => vec![],
                };
                (vec![], text_schema(&columns))
            }
            Command::Sql(stmt) => match stmt.as_ref() {
                // A cursor's parameters are its query's; it returns no rows.
                Statement::Declare { stmts } => match cursor_query(stmts) {
                    Ok((_, _, query)) => {
                        let (params, _) = self
                            .engine
                            .describe(&query, &options)
                            .await
                            .map_err(user_error)?;
                        (params, Arc::new(Schema::empty()))
                    }
                    Err(e) => return Err(user_error(e)),
                },
                // A FETCH returns its cursor's columns.
                Statement::Fetch { name, .. } => {
                    let schema = lock(&session_of(client))
                        .cursor_schema(&name.value)
                        .unwrap_or_else(|| Arc::new(Schema::empty()));
                    (vec![], schema)
                }
                _ => self
                    .engine
                    .describe(&command, &options)
                    .await
                    .map_err(user_error)?,
            },
            _ => self
                .engine
                .describe(&command, &options)
                .await
                .map_err(user_error)?,
        };
        Ok(Some(PreparedStatement {
            text,
            command,
            param_types,
            schema,
        }))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        stmt.param_types
            .iter()
            .map(|t| match t {
                Some(t) => into_pg_type(t),
                None => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        encode::pg_fields(&stmt.schema, column_format.unwrap_or(&Format::UnifiedText))
    }
}

fn text_schema(columns: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| datafusion::arrow::datatypes::Field::new(c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

/// The cursor a `DECLARE` names: (name, holdable, binary, query command).
fn cursor_query(stmts: &[Declare]) -> Result<(String, bool, Command), MillraceError> {
    let [declare] = stmts else {
        return Err(MillraceError::not_supported(
            "DECLARE of more than one cursor",
        ));
    };
    let (Some(query), [name]) = (&declare.for_query, declare.names.as_slice()) else {
        return Err(MillraceError::not_supported(
            "DECLARE of anything but one cursor FOR a query",
        ));
    };
    if declare.scroll == Some(true) {
        return Err(MillraceError::not_supported(
            "SCROLL cursors: Millrace cursors read forward only",
        ));
    }
    if declare.binary == Some(true) {
        return Err(MillraceError::not_supported(
            "BINARY cursors: request binary results through the extended protocol instead",
        ));
    }
    Ok((
        name.value.clone(),
        declare.hold == Some(true),
        Command::Sql(Box::new(Statement::Query(query.clone()))),
    ))
}

/// How many rows a `FETCH` asks for; 0 means all that remain.
fn fetch_count(direction: &FetchDirection) -> Result<usize, MillraceError> {
    let number = |v: &datafusion::sql::sqlparser::ast::ValueWithSpan| match &v.value {
        SqlValue::Number(n, _) => n.parse::<usize>().ok(),
        _ => None,
    };
    let count = match direction {
        FetchDirection::Next | FetchDirection::Forward { limit: None } => Some(1),
        FetchDirection::Count { limit } | FetchDirection::Forward { limit: Some(limit) } => {
            number(limit)
        }
        FetchDirection::All | FetchDirection::ForwardAll => return Ok(0),
        _ => {
            return Err(MillraceError::Data {
                sqlstate: "55000",
                message: "cursor can only scan forward".into(),
            })
        }
    };
    match count {
        Some(0) | None => Err(MillraceError::not_supported(
            "FETCH of a row count other than a positive number",
        )),
        Some(n) => Ok(n),
    }
}

/// Whether a statement changes data or definitions (refused in read-only
/// transactions, counted in transaction blocks).
fn is_write(cmd: &Command) -> bool {
    match cmd {
        Command::Flush
        | Command::ShowObjects(_)
        | Command::ShowCreate(..)
        | Command::Empty
        | Command::Subscribe(_) => false,
        Command::CreateSource(_) | Command::CreateSink(_) | Command::DropSource { .. } => true,
        Command::Sql(stmt) => {
            !is_session_statement(stmt)
                && !matches!(
                    stmt.as_ref(),
                    Statement::Query(_)
                        | Statement::Explain { .. }
                        | Statement::ShowTables { .. }
                        | Statement::Declare { .. }
                        | Statement::Fetch { .. }
                        | Statement::Close { .. }
                )
        }
    }
}

/// Handles every connection's queries by running them on the engine.
pub struct MillraceHandler {
    engine: Arc<Engine>,
    parser: Arc<MillraceQueryParser>,
    pids: RandomPidSecretKeyGenerator,
    /// Check each statement against the user's privileges (with password
    /// authentication; under trust every client may do anything).
    enforce_privileges: bool,
}

impl MillraceHandler {
    /// A handler over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            parser: Arc::new(MillraceQueryParser {
                engine: engine.clone(),
            }),
            engine,
            pids: RandomPidSecretKeyGenerator::default(),
            enforce_privileges: false,
        }
    }

    /// Checks that the session's user may run `cmd`: a superuser may do
    /// anything; another user may read the relations granted to it (and
    /// the system catalogs), and change nothing.
    fn authorize(&self, session: &SharedSession, cmd: &Command) -> Result<(), MillraceError> {
        let user = lock(session)
            .get("session_authorization")
            .unwrap_or_default();
        let users = self.engine.users();
        if users.is_superuser(&user) {
            return Ok(());
        }
        let denied = |what: String| MillraceError::Data {
            sqlstate: "42501",
            message: what,
        };
        let read_only_user = || {
            denied(format!(
                "permission denied: user \"{user}\" may only read relations granted to it"
            ))
        };
        let check = |relation: &str| {
            if !self.engine.is_user_relation(relation) || users.may_read(&user, relation) {
                Ok(())
            } else {
                Err(denied(format!("permission denied for relation {relation}")))
            }
        };
        // COPY FROM counts as a write only once its data arrives; here it
        // is refused with the other writes.
        let copy_in = matches!(cmd, Command::Sql(s) if matches!(s.as_ref(), Statement::Copy { to: false, .. }));
        if is_write(cmd) || copy_in {
            return Err(read_only_user());
        }
        match cmd {
            Command::Subscribe(s) => check(&s.relation),
            Command::Sql(stmt) if !is_session_statement(stmt) => {
                let mut relations = Vec::new();
                let _ = datafusion::sql::sqlparser::ast::visit_relations(stmt.as_ref(), |name| {
                    if let [.., last] = name.0.as_slice() {
                        if let Some(i) = last.as_ident() {
                            let in_catalog_schema = name.0.len() > 1
                                && name.0[name.0.len() - 2].as_ident().is_some_and(|s| {
                                    matches!(
                                        s.value.as_str(),
                                        "pg_catalog" | "information_schema" | "millrace_catalog"
                                    )
                                });
                            if !in_catalog_schema {
                                relations.push(if i.quote_style.is_some() {
                                    i.value.clone()
                                } else {
                                    i.value.to_ascii_lowercase()
                                });
                            }
                        }
                    }
                    std::ops::ControlFlow::<()>::Continue(())
                });
                relations.iter().try_for_each(|r| check(r))
            }
            _ => Ok(()),
        }
    }

    /// Runs one statement for the client: a session statement in its
    /// session, anything else on the engine. Warnings and changed settings
    /// are sent to the client before the result, as PostgreSQL does.
    async fn run<C>(
        &self,
        client: &mut C,
        text: &StatementText,
        cmd: Command,
        params: Option<ParamValues>,
        format: &Format,
    ) -> PgWireResult<Result<Response, MillraceError>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client);
        let write = is_write(&cmd);
        if self.enforce_privileges {
            if let Err(e) = self.authorize(&session, &cmd) {
                lock(&session).statement_done(write, false);
                return Ok(Err(e));
            }
        }
        let result = match cmd {
            Command::Sql(stmt) => match *stmt {
                stmt @ Statement::Copy { .. } => self.copy(text, &session, &stmt).await,
                Statement::Declare { stmts } => {
                    self.declare(client, text, &session, &stmts, params).await
                }
                Statement::Fetch {
                    name, direction, ..
                } => self.fetch(&session, &name.value, &direction, format).await,
                Statement::Close { cursor } => {
                    let (name, tag) = match &cursor {
                        CloseCursor::All => (None, "CLOSE CURSOR ALL"),
                        CloseCursor::Specific { name } => {
                            (Some(name.value.as_str()), "CLOSE CURSOR")
                        }
                    };
                    let closed = lock(&session).close_cursor(name);
                    match closed {
                        Ok(names) => {
                            close_portals(client, &names);
                            Ok(Ok(Response::Execution(Tag::new(tag))))
                        }
                        Err(e) => Ok(Err(e)),
                    }
                }
                stmt if is_session_statement(&stmt) => {
                    let reply = lock(&session).execute(&stmt);
                    match reply {
                        Ok(reply) => self.send_reply(client, reply).await,
                        Err(e) => Ok(Err(e)),
                    }
                }
                stmt => {
                    self.run_on_engine(
                        text,
                        Command::Sql(Box::new(stmt)),
                        params,
                        format,
                        &session,
                        write,
                    )
                    .await
                }
            },
            Command::Subscribe(subscribe) => {
                self.subscribe(client, text, &session, subscribe).await
            }
            cmd => {
                self.run_on_engine(text, cmd, params, format, &session, write)
                    .await
            }
        }?;
        lock(&session).statement_done(write, result.is_ok());
        Ok(result)
    }

    /// Runs a statement on the engine, if the session allows it now.
    async fn run_on_engine(
        &self,
        text: &StatementText,
        cmd: Command,
        params: Option<ParamValues>,
        format: &Format,
        session: &SharedSession,
        write: bool,
    ) -> PgWireResult<Result<Response, MillraceError>> {
        let verb = text
            .text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let checked = lock(session).check_statement(write, &verb);
        if let Err(e) = checked {
            return Ok(Err(e));
        }
        let options = engine_options(&self.engine, session);
        let output = self
            .engine
            .execute_parsed(text, cmd, params, &options)
            .await;
        Ok(output.and_then(|o| output_response(o, format).map_err(wire_error)))
    }

    /// Sends a session reply's warnings and changed settings, and returns
    /// its result.
    async fn send_reply<C>(
        &self,
        client: &mut C,
        reply: SessionReply,
    ) -> PgWireResult<Result<Response, MillraceError>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        for warning in &reply.warnings {
            let notice = ErrorInfo::new("WARNING".into(), "01000".into(), warning.clone());
            client
                .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                    notice,
                )))
                .await?;
        }
        for (name, value) in reply.changed {
            client
                .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                    name, value,
                )))
                .await?;
        }
        close_portals(client, &reply.closed_cursors);
        let response = match (reply.rows, reply.tag) {
            (Some((columns, rows)), _) => text_rows(&columns, rows),
            (None, Some(tag)) => match tag.as_str() {
                "BEGIN" => Ok(Response::TransactionStart(Tag::new(&tag))),
                "COMMIT" | "ROLLBACK" => Ok(Response::TransactionEnd(Tag::new(&tag))),
                _ => Ok(Response::Execution(Tag::new(&tag))),
            },
            (None, None) => Ok(Response::EmptyQuery),
        };
        Ok(response)
    }

    /// `DECLARE name CURSOR [WITH HOLD] FOR query`: runs the query now (a
    /// cursor reads the snapshot current when it is declared) and keeps its
    /// rows in the session for `FETCH`. A portal of the cursor's name
    /// describes its columns to clients that ask (psycopg 3).
    async fn declare<C>(
        &self,
        client: &mut C,
        text: &StatementText,
        session: &SharedSession,
        stmts: &[Declare],
        params: Option<ParamValues>,
    ) -> PgWireResult<Result<Response, MillraceError>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (name, hold, query) = match cursor_query(stmts) {
            Ok(q) => q,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = lock(session).check_declare(&name, hold) {
            return Ok(Err(e));
        }
        let (schema, batches) = match self
            .query_rows(text, query.clone(), params, session, "DECLARE CURSOR")
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(store) = portal_store(client) {
            let statement = PreparedStatement {
                text: text.clone(),
                command: query,
                param_types: vec![],
                schema: schema.clone(),
            };
            store.put_portal(Arc::new(Portal::new_cursor(
                name.clone(),
                Arc::new(StoredStatement::new(name.clone(), statement, vec![])),
            )));
        }
        let mut session = lock(session);
        if let Err(e) = session.declare_cursor(&name, hold, schema.clone()) {
            return Ok(Err(e));
        }
        session
            .row_cursors
            .insert(name, RowCursor::new(schema, batches));
        Ok(Ok(Response::Execution(Tag::new("DECLARE CURSOR"))))
    }

    /// Runs a query for `what` (a cursor, a copy) with the session's
    /// options, requiring rows back.
    async fn query_rows(
        &self,
        text: &StatementText,
        query: Command,
        params: Option<ParamValues>,
        session: &SharedSession,
        what: &str,
    ) -> Result<(SchemaRef, Vec<datafusion::arrow::array::RecordBatch>), MillraceError> {
        let options = engine_options(&self.engine, session);
        match self
            .engine
            .execute_parsed(text, query, params, &options)
            .await?
        {
            QueryOutput::Rows { schema, batches } => Ok((schema, batches)),
            _ => Err(MillraceError::plan(format!(
                "{what} needs a query that returns rows"
            ))),
        }
    }

    /// `COPY ... TO STDOUT` runs the query and answers the rows as COPY
    /// data; `COPY ... FROM STDIN` checks the table and columns and opens
    /// the session's copy-in, which [`CopyHandler`] fills and commits.
    async fn copy(
        &self,
        text: &StatementText,
        session: &SharedSession,
        stmt: &Statement,
    ) -> PgWireResult<Result<Response, MillraceError>> {
        let plan = match copy::plan(stmt) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        match plan {
            copy::CopyPlan::Out { query, options } => {
                let checked = lock(session).check_statement(false, "COPY");
                if let Err(e) = checked {
                    return Ok(Err(e));
                }
                let (schema, batches) =
                    match self.query_rows(text, query, None, session, "COPY").await {
                        Ok(rows) => rows,
                        Err(e) => return Ok(Err(e)),
                    };
                let chunks = copy::encode_out(&schema, &batches, &options)?;
                let data = stream::iter(chunks.into_iter().map(|c| Ok(CopyData::new(c))));
                Ok(Ok(Response::CopyOut(CopyResponse::new(
                    options.wire_format(),
                    schema.fields().len(),
                    data,
                ))))
            }
            copy::CopyPlan::In {
                table,
                columns,
                options,
            } => {
                let checked = lock(session).check_statement(true, "COPY");
                if let Err(e) = checked {
                    return Ok(Err(e));
                }
                let schema = match self.engine.table_schema(&table).await {
                    Ok(s) => s,
                    Err(e) => return Ok(Err(e)),
                };
                let columns = if columns.is_empty() {
                    schema.fields().iter().map(|f| f.name().clone()).collect()
                } else {
                    columns
                };
                if let Some(missing) = columns.iter().find(|c| schema.field_with_name(c).is_err()) {
                    return Ok(Err(MillraceError::Data {
                        sqlstate: "42703",
                        message: format!(
                            "column \"{missing}\" of relation \"{table}\" does not exist"
                        ),
                    }));
                }
                let count = columns.len();
                lock(session).copy_in = Some(copy::CopyIn {
                    table,
                    columns,
                    options,
                    data: bytes::BytesMut::new(),
                });
                Ok(Ok(Response::CopyIn(CopyResponse::new(
                    0,
                    count,
                    stream::empty(),
                ))))
            }
        }
    }

    /// `DECLARE c CURSOR [WITH HOLD] FOR SUBSCRIBE TO relation`: opens the
    /// subscription (see [`subscribe`]) under the cursor's name. A portal
    /// of that name describes its rows for clients that ask (psycopg 3).
    async fn subscribe<C>(
        &self,
        client: &mut C,
        text: &StatementText,
        session: &SharedSession,
        subscribe: Subscribe,
    ) -> PgWireResult<Result<Response, MillraceError>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
    {
        let Some((name, hold)) = subscribe.cursor else {
            return Ok(Err(MillraceError::not_supported(
                "SUBSCRIBE outside a cursor: DECLARE c CURSOR FOR SUBSCRIBE TO relation, then FETCH ALL FROM c",
            )));
        };
        if let Err(e) = lock(session).check_declare(&name, hold) {
            return Ok(Err(e));
        }
        let (schema, changes) = match self
            .engine
            .subscribe(&subscribe.relation, subscribe.snapshot)
            .await
        {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let subscription = subscribe::Subscription::new(&schema, changes);
        if let Some(store) = portal_store(client) {
            let statement = PreparedStatement {
                text: text.clone(),
                command: Command::Empty,
                param_types: vec![],
                schema: subscription.schema().clone(),
            };
            store.put_portal(Arc::new(Portal::new_cursor(
                name.clone(),
                Arc::new(StoredStatement::new(name.clone(), statement, vec![])),
            )));
        }
        let mut session = lock(session);
        if let Err(e) = session.declare_cursor(&name, hold, subscription.schema().clone()) {
            return Ok(Err(e));
        }
        session
            .subscriptions
            .insert(name, Arc::new(tokio::sync::Mutex::new(subscription)));
        Ok(Ok(Response::Execution(Tag::new("DECLARE CURSOR"))))
    }

    /// `FETCH [FORWARD] n | ALL | NEXT [FROM] name`, rows encoded in the
    /// formats the client asked for.
    async fn fetch(
        &self,
        session: &SharedSession,
        name: &str,
        direction: &FetchDirection,
        format: &Format,
    ) -> PgWireResult<Result<Response, MillraceError>> {
        let count = match fetch_count(direction) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = lock(session).cursor_exists(name) {
            return Ok(Err(e));
        }
        let subscription = lock(session).subscriptions.get(name).cloned();
        let (schema, batches) = if let Some(subscription) = subscription {
            let mut subscription = subscription.lock().await;
            match subscription.fetch(count).await {
                Ok(b) => (subscription.schema().clone(), b),
                Err(e) => return Ok(Err(e)),
            }
        } else {
            let mut session = lock(session);
            let Some(cursor) = session.row_cursors.get_mut(name) else {
                return Ok(Err(MillraceError::Data {
                    sqlstate: "34000",
                    message: format!("cursor \"{name}\" does not exist"),
                }));
            };
            (cursor.schema().clone(), cursor.take(count))
        };
        let mut response = rows_response(schema, batches, format)?;
        response.set_command_tag("FETCH");
        Ok(Ok(Response::Query(response)))
    }
}

fn portal_store<C>(client: &C) -> Option<&MemPortalStore<PreparedStatement>>
where
    C: ClientPortalStore,
    C::PortalStore: PortalStore,
{
    client
        .portal_store()
        .as_any()
        .downcast_ref::<MemPortalStore<PreparedStatement>>()
}

fn close_portals<C>(client: &C, names: &[String])
where
    C: ClientPortalStore,
    C::PortalStore: PortalStore,
{
    if let Some(store) = portal_store(client) {
        for name in names {
            store.rm_portal(name);
        }
    }
}

fn wire_error(e: PgWireError) -> MillraceError {
    MillraceError::execution(e.to_string())
}

fn text_rows(columns: &[String], rows: Vec<Vec<String>>) -> Result<Response, MillraceError> {
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let output = crate::sql::engine::text_batch(&names, rows)?;
    Ok(
        match output_response(output, &Format::UnifiedText).map_err(wire_error)? {
            Response::Query(mut rows) => {
                rows.set_command_tag("SHOW");
                Response::Query(rows)
            }
            other => other,
        },
    )
}

fn rows_response(
    schema: SchemaRef,
    batches: Vec<datafusion::arrow::array::RecordBatch>,
    format: &Format,
) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(encode::pg_fields(&schema, format)?);
    let f = fields.clone();
    let rows = stream::iter(batches)
        .map(move |b| stream::iter(encode::encode_batch(&f, &b)))
        .flatten();
    Ok(QueryResponse::new(fields, rows))
}

fn output_response(output: QueryOutput, format: &Format) -> PgWireResult<Response> {
    Ok(match output {
        QueryOutput::Empty => Response::EmptyQuery,
        QueryOutput::Command { tag, rows } => {
            let mut t = Tag::new(&tag);
            if let Some(r) = rows {
                t = t.with_rows(r);
            }
            Response::Execution(t)
        }
        QueryOutput::Rows { schema, batches } => {
            Response::Query(rows_response(schema, batches, format)?)
        }
    })
}

/// A statement error raised by pgwire itself (a Parse or Bind that failed)
/// aborts the session's transaction block, as PostgreSQL's would.
fn note_protocol_error<C: ClientInfo>(client: &C, session: &SharedSession) {
    if client.transaction_status() == pgwire::messages::response::TransactionStatus::Error {
        lock(session).statement_done(false, false);
    }
}

#[async_trait]
impl SimpleQueryHandler for MillraceHandler {
    /// Runs each statement of the query string in turn, stopping at the
    /// first error, and reports the session's transaction status.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let session = session_of(client);
        note_protocol_error(client, &session);
        client.set_state(PgWireConnectionState::QueryInProgress);
        debug!(query = %query.query, "simple query");
        let statements = split_statements(&query.query).and_then(|parts| {
            parts
                .into_iter()
                .map(|p| parse_statement(&query.query, &p).map(|c| (p, c)))
                .collect::<Result<Vec<_>, _>>()
        });
        let outcome = match statements {
            Err(e) => Err(e),
            Ok(statements) if statements.is_empty() => {
                client
                    .feed(PgWireBackendMessage::EmptyQueryResponse(
                        EmptyQueryResponse::new(),
                    ))
                    .await?;
                Ok(())
            }
            Ok(statements) => {
                let mut outcome = Ok(());
                for (text, cmd) in statements {
                    match self
                        .run(client, &text, cmd, None, &Format::UnifiedText)
                        .await?
                    {
                        Ok(response) => send_simple_response(client, response).await?,
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    }
                    // COPY FROM STDIN takes over the connection until its
                    // data is done; ReadyForQuery follows that.
                    if matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
                        return Ok(());
                    }
                }
                outcome
            }
        };
        if let Err(e) = outcome {
            lock(&session).statement_done(false, false);
            client
                .feed(PgWireBackendMessage::ErrorResponse(error_info(&e).into()))
                .await?;
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        let status = lock(&session).status();
        client.set_transaction_status(status);
        send_ready_for_query(client, status).await
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Reached only if `on_query` is bypassed: run the statements alike.
        let mut responses = Vec::new();
        for text in split_statements(query).map_err(user_error)? {
            let cmd = parse_statement(query, &text).map_err(user_error)?;
            match self
                .run(client, &text, cmd, None, &Format::UnifiedText)
                .await?
            {
                Ok(r) => responses.push(r),
                Err(e) => {
                    responses.push(Response::Error(Box::new(error_info(&e))));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

async fn send_simple_response<C>(client: &mut C, response: Response) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    match response {
        Response::EmptyQuery => {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
        }
        Response::Query(results) => send_query_response(client, results, true).await?,
        Response::Execution(tag)
        | Response::TransactionStart(tag)
        | Response::TransactionEnd(tag) => send_execution_response(client, tag).await?,
        Response::Error(e) => {
            client
                .feed(PgWireBackendMessage::ErrorResponse((*e).into()))
                .await?;
        }
        Response::CopyOut(copy) => send_copy_out_response(client, copy).await?,
        Response::CopyIn(copy) => {
            send_copy_in_response(client, copy).await?;
            client.set_state(PgWireConnectionState::CopyInProgress(false));
        }
        Response::CopyBoth(_) => {
            return Err(user_error(MillraceError::not_supported("COPY BOTH")));
        }
    }
    Ok(())
}

#[async_trait]
impl ExtendedQueryHandler for MillraceHandler {
    type Statement = PreparedStatement;
    type QueryParser = MillraceQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// pgwire's describe, except that a statement with parameters and no
    /// result columns (an `INSERT`) is answered `ParameterDescription` and
    /// `NoData`, as PostgreSQL does: pgwire would send an empty
    /// `RowDescription`, which pgjdbc takes for a result set.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type == TARGET_TYPE_BYTE_STATEMENT {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            if let Some(Entry::Value(stmt)) = client.portal_store().get_statement(name) {
                if stmt.statement.schema.fields().is_empty() {
                    let described = self.do_describe_statement(client, &stmt).await?;
                    let types = described
                        .parameters()
                        .unwrap_or_default()
                        .iter()
                        .map(|t| t.oid())
                        .collect();
                    client
                        .send(PgWireBackendMessage::ParameterDescription(
                            ParameterDescription::new(types),
                        ))
                        .await?;
                    client
                        .send(PgWireBackendMessage::NoData(NoData::new()))
                        .await?;
                    return Ok(());
                }
            }
        }
        self._on_describe(client, message).await
    }

    /// pgwire's execution, with the transaction status then taken from the
    /// session (which knows savepoints and aborted blocks).
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client);
        note_protocol_error(client, &session);
        let result = self._on_execute(client, message).await;
        if result.is_err() {
            lock(&session).statement_done(false, false);
        }
        client.set_transaction_status(lock(&session).status());
        result
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let inferred: Vec<Option<&DataType>> =
            stmt.param_types.iter().map(|t| t.as_ref()).collect();
        let params = if portal.parameter_len() > 0 {
            Some(deserialize_parameters(portal, &inferred)?)
        } else {
            None
        };
        self.run(
            client,
            &stmt.text,
            stmt.command.clone(),
            params,
            &portal.result_column_format,
        )
        .await?
        .map_err(user_error)
    }
}

#[async_trait]
impl CopyHandler for MillraceHandler {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client);
        let mut session = lock(&session);
        let Some(copy_in) = session.copy_in.as_mut() else {
            return Err(user_error(MillraceError::Data {
                sqlstate: "08P01",
                message: "COPY data without a COPY in progress".into(),
            }));
        };
        if copy_in.data.len() + copy_data.data.len() > copy::MAX_COPY_IN_BYTES {
            session.copy_in = None;
            return Err(user_error(MillraceError::Data {
                sqlstate: "54000",
                message: format!(
                    "COPY data exceeds {} bytes; split it into several COPY statements",
                    copy::MAX_COPY_IN_BYTES
                ),
            }));
        }
        copy_in.data.extend_from_slice(&copy_data.data);
        Ok(())
    }

    /// Parses all the data and commits every row, or none; answers `COPY n`.
    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client);
        let copy_in = lock(&session).copy_in.take();
        let Some(copy_in) = copy_in else {
            return Err(user_error(MillraceError::Data {
                sqlstate: "08P01",
                message: "COPY done without a COPY in progress".into(),
            }));
        };
        let result = match copy::parse_in(
            &copy_in.data,
            copy_in.columns.len(),
            &copy_in.table,
            &copy_in.options,
        ) {
            Ok((rows, first_line)) => {
                self.engine
                    .copy_in(&copy_in.table, &copy_in.columns, &rows, first_line)
                    .await
            }
            Err(e) => Err(e),
        };
        lock(&session).statement_done(true, result.is_ok());
        client.set_transaction_status(lock(&session).status());
        match result {
            Ok(rows) => {
                client
                    .send(PgWireBackendMessage::CommandComplete(
                        Tag::new("COPY").with_rows(rows).into(),
                    ))
                    .await?;
                Ok(())
            }
            Err(e) => Err(user_error(e)),
        }
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client);
        lock(&session).copy_in = None;
        lock(&session).statement_done(true, false);
        user_error(MillraceError::Data {
            sqlstate: "57014",
            message: format!("COPY from stdin failed: {}", fail.message),
        })
    }
}

/// The startup `ParameterStatus` values: the reported settings of the
/// session the client's startup parameters make.
#[derive(Debug, Default)]
pub struct SessionParameters;

impl ServerParameterProvider for SessionParameters {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        Some(new_session(client).reported().into_iter().collect())
    }
}

/// `name=value` pairs from the `options` startup parameter
/// (`-c name=value`, as `PGOPTIONS` sends them).
fn startup_options(options: &str) -> Vec<(&str, &str)> {
    let mut pairs = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let assignment = match word.strip_prefix("-c") {
            Some("") => words.next(),
            Some(rest) => Some(rest),
            None => word.strip_prefix("--"),
        };
        if let Some((name, value)) = assignment.and_then(|a| a.split_once('=')) {
            pairs.push((name, value));
        }
    }
    pairs
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every client is taken at its word (local development).
    Trust,
    /// SCRAM-SHA-256 against the users' stored verifiers
    /// (`CREATE USER ... PASSWORD`); cleartext and MD5 are not offered.
    Scram,
    /// Cleartext passwords, checked against the same verifiers: only when
    /// asked for explicitly, for clients without SCRAM, and only sensible
    /// over TLS.
    Password,
}

impl AuthMode {
    /// Whether clients log in with a password (and privileges apply).
    pub fn checks_passwords(self) -> bool {
        self != AuthMode::Trust
    }
}

/// The users' SCRAM verifiers, for the SASL handshake.
#[derive(Debug)]
struct UserVerifiers(Arc<crate::sql::users::Users>);

#[async_trait]
impl AuthSource for UserVerifiers {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        match self
            .0
            .get(user)
            .and_then(|u| Some((u.salt, u.salted_password?)))
        {
            Some((salt, salted)) => Ok(Password::new(Some(salt), salted)),
            None => Err(login_failed(user)),
        }
    }
}

/// Checks a cleartext password against `user`'s stored verifier, by
/// deriving the salted password from it with the user's salt.
fn check_cleartext(users: &crate::sql::users::Users, user: &str, presented: &str) -> bool {
    let Some((salt, salted)) = users
        .get(user)
        .and_then(|u| Some((u.salt, u.salted_password?)))
    else {
        return false;
    };
    let derived = pgwire::api::auth::sasl::scram::gen_salted_password(
        presented,
        &salt,
        crate::sql::users::SCRAM_ITERATIONS,
    );
    // Compare every byte, so the time taken does not tell how much of the
    // password was right.
    derived.len() == salted.len()
        && derived
            .iter()
            .zip(&salted)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Cleartext password authentication (`--auth password`) against the
/// stored verifiers. pgwire's own handler compares the password with a
/// stored one; Millrace stores only verifiers.
pub struct CleartextLogin {
    users: Arc<crate::sql::users::Users>,
    pids: RandomPidSecretKeyGenerator,
}

#[async_trait]
impl StartupHandler for CleartextLogin {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        pgwire::messages::startup::Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let password = message.into_password()?;
                let login = LoginInfo::from_client_info(client);
                let user = login.user().unwrap_or_default().to_string();
                if !check_cleartext(&self.users, &user, &password.password) {
                    return Err(login_failed(&user));
                }
                let (pid, key) = self.pids.generate(client);
                client.set_pid_and_secret_key(pid, key);
                finish_authentication(client, &SessionParameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// PostgreSQL's error for a refused login.
fn login_failed(user: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        "28P01".into(),
        format!("password authentication failed for user \"{user}\""),
    )))
}

/// The startup handler of one connection: trust, or a SASL exchange.
pub enum Startup {
    /// Trust authentication.
    Trust(Arc<MillraceHandler>),
    /// SCRAM-SHA-256 (its state is the connection's own).
    Scram(Box<SASLAuthStartupHandler<SessionParameters>>),
    /// A cleartext password.
    Password(CleartextLogin),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Trust(h) => h.on_startup(client, message).await,
            Startup::Scram(h) => h.on_startup(client, message).await,
            Startup::Password(h) => h.on_startup(client, message).await,
        }
    }
}

#[async_trait]
impl StartupHandler for MillraceHandler {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            let (pid, key) = self.pids.generate(client);
            client.set_pid_and_secret_key(pid, key);
            // Trust authentication: the user and database are taken as given.
            finish_authentication(client, &SessionParameters).await?;
            debug_assert!(matches!(
                client.state(),
                PgWireConnectionState::ReadyForQuery
            ));
        }
        Ok(())
    }
}

/// The set of handlers `pgwire` asks for, once per connection.
pub struct HandlerFactory {
    handler: Arc<MillraceHandler>,
    auth: AuthMode,
    users: Arc<crate::sql::users::Users>,
}

impl PgWireServerHandlers for HandlerFactory {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(match self.auth {
            AuthMode::Trust => Startup::Trust(self.handler.clone()),
            AuthMode::Scram => {
                let mut scram = ScramAuth::new(Arc::new(UserVerifiers(self.users.clone())));
                scram.set_iterations(crate::sql::users::SCRAM_ITERATIONS);
                Startup::Scram(Box::new(
                    SASLAuthStartupHandler::new(Arc::new(SessionParameters)).with_scram(scram),
                ))
            }
            AuthMode::Password => Startup::Password(CleartextLogin {
                users: self.users.clone(),
                pids: RandomPidSecretKeyGenerator::default(),
            }),
        })
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.handler.clone()
    }
}

/// A TLS acceptor from a PEM certificate chain and private key, offering
/// TLS 1.2 and 1.3 (and ALPN `postgresql`, for direct TLS connections).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<pgwire::tokio::TlsAcceptor, MillraceError> {
    use pgwire::tokio::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        MillraceError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("TLS {what} {}: {e}", path.display()),
        ))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", cert, &e))?;
    if certs.is_empty() {
        return Err(bad("certificate", cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("configuration for", cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad("certificate and key", cert, &e))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the wire protocol on `listener` until `shutdown` turns true,
/// offering TLS when `tls` is given.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    auth: AuthMode,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut handler = MillraceHandler::new(engine.clone());
    handler.enforce_privileges = auth.checks_passwords();
    let factory = Arc::new(HandlerFactory {
        users: engine.users().clone(),
        handler: Arc::new(handler),
        auth,
    });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer): (_, SocketAddr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let factory = factory.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, tls, factory).await {
                        debug!(%peer, error = %e, "connection closed with an error");
                    }
                });
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    info!("shutting down: no longer accepting connections");
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_are_parsed() {
        assert_eq!(
            startup_options("-c search_path=analytics -cstatement_timeout=5s --application_name=x"),
            vec![
                ("search_path", "analytics"),
                ("statement_timeout", "5s"),
                ("application_name", "x")
            ]
        );
    }
}
