//! The PostgreSQL wire protocol front end, on the `pgwire` crate.
//!
//! Simple and extended query protocols both end in [`Engine`]. Result rows
//! are Arrow batches encoded by `arrow-pg` in text or binary per column as the
//! client asks; errors carry SQLSTATE codes from [`MillraceError::sqlstate`].

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::into_pg_type;
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use futures::{stream, Sink, StreamExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

mod encode;

use crate::error::MillraceError;
use crate::sql::statement::{parse_statement, split_statements, Command, StatementText};
use crate::sql::{Engine, EngineOptions, QueryOutput};

/// The PostgreSQL version Millrace reports to clients.
pub const SERVER_VERSION: &str = "16.6";

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

/// Parses and plans statements for the extended protocol.
pub struct MillraceQueryParser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for MillraceQueryParser {
    type Statement = PreparedStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
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
        let (param_types, schema) = self.engine.describe(&command).await.map_err(user_error)?;
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

/// Handles every connection's queries by running them on the engine.
pub struct MillraceHandler {
    engine: Arc<Engine>,
    parser: Arc<MillraceQueryParser>,
    pids: RandomPidSecretKeyGenerator,
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
        }
    }
}

fn output_response(output: QueryOutput, format: &Format) -> PgWireResult<Response> {
    Ok(match output {
        QueryOutput::Empty => Response::EmptyQuery,
        QueryOutput::Command { tag, rows } => {
            let mut t = Tag::new(&tag);
            if let Some(r) = rows {
                t = t.with_rows(r);
            }
            match tag.as_str() {
                "BEGIN" => Response::TransactionStart(t),
                "COMMIT" | "ROLLBACK" => Response::TransactionEnd(t),
                _ => Response::Execution(t),
            }
        }
        QueryOutput::Rows { schema, batches } => {
            let fields = Arc::new(encode::pg_fields(&schema, format)?);
            let f = fields.clone();
            let rows = stream::iter(batches)
                .map(move |b| stream::iter(encode::encode_batch(&f, &b)))
                .flatten();
            Response::Query(QueryResponse::new(fields, rows))
        }
    })
}

#[async_trait]
impl SimpleQueryHandler for MillraceHandler {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        debug!(query, "simple query");
        let (outputs, error) = self
            .engine
            .execute_all(query, &EngineOptions::default())
            .await;
        let mut responses = outputs
            .into_iter()
            .map(|o| output_response(o, &Format::UnifiedText))
            .collect::<PgWireResult<Vec<_>>>()?;
        if let Some(e) = error {
            responses.push(Response::Error(Box::new(error_info(&e))));
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for MillraceHandler {
    type Statement = PreparedStatement;
    type QueryParser = MillraceQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
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
        let output = self
            .engine
            .execute_parsed(
                &stmt.text,
                stmt.command.clone(),
                params,
                &EngineOptions::default(),
            )
            .await
            .map_err(user_error)?;
        output_response(output, &portal.result_column_format)
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
            let mut params = DefaultServerParameterProvider::default();
            params.server_version = SERVER_VERSION.to_string();
            params.time_zone = "UTC".to_string();
            finish_authentication(client, &params).await?;
            debug_assert!(matches!(
                client.state(),
                PgWireConnectionState::ReadyForQuery
            ));
        }
        Ok(())
    }
}

/// The set of handlers `pgwire` asks for.
pub struct HandlerFactory {
    handler: Arc<MillraceHandler>,
}

impl PgWireServerHandlers for HandlerFactory {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.handler.clone()
    }
}

/// Serves the wire protocol on `listener` until `shutdown` turns true.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let factory = Arc::new(HandlerFactory {
        handler: Arc::new(MillraceHandler::new(engine)),
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
                connections.spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, factory).await {
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
