//! Millrace's error type: one variant family per phase (parse, plan, not
//! supported, execution, storage, io), each mapped to a PostgreSQL SQLSTATE
//! code so that the wire layer can report errors the way clients expect.

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

/// Result alias used throughout the crate.
pub type Result<T, E = MillraceError> = std::result::Result<T, E>;

/// Every error Millrace reports, grouped by the phase that produced it.
#[derive(Debug, thiserror::Error)]
pub enum MillraceError {
    /// The SQL text could not be parsed. `position` is the 1-based character
    /// offset into the statement when the parser reported one.
    #[error("syntax error: {message}")]
    Parse {
        /// What the parser said.
        message: String,
        /// 1-based character position of the error, if known.
        position: Option<usize>,
    },
    /// The statement parsed but cannot be planned (bad column, type mismatch...).
    #[error("{0}")]
    Plan(String),
    /// A relation named in the statement does not exist.
    #[error("relation \"{0}\" does not exist")]
    UnknownRelation(String),
    /// A relation being created already exists.
    #[error("relation \"{0}\" already exists")]
    DuplicateRelation(String),
    /// A drop would break objects that depend on the dropped one.
    #[error("cannot drop {name} because other objects depend on it: {dependents}")]
    DependentObjects {
        /// The object being dropped.
        name: String,
        /// Comma-separated names of the dependents.
        dependents: String,
    },
    /// Valid SQL that Millrace does not support (yet), naming the construct.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// A primary key would be duplicated.
    #[error("duplicate key value violates unique constraint \"{constraint}\": {detail}")]
    UniqueViolation {
        /// Constraint name (`<table>_pkey`).
        constraint: String,
        /// The offending key.
        detail: String,
    },
    /// A NOT NULL column would receive a NULL.
    #[error(
        "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"
    )]
    NotNullViolation {
        /// Table name.
        table: String,
        /// Column name.
        column: String,
    },
    /// A value does not fit its type (bad cast, overflow, division by zero...).
    #[error("{message}")]
    Data {
        /// SQLSTATE in class 22.
        sqlstate: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Query or dataflow execution failed.
    #[error("{0}")]
    Execution(String),
    /// The embedded state store failed or holds data Millrace cannot read.
    #[error("storage error: {0}")]
    Storage(String),
    /// An I/O error outside the state store.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

impl MillraceError {
    /// The PostgreSQL SQLSTATE code for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MillraceError::Parse { .. } => "42601",
            MillraceError::Plan(_) => "42000",
            MillraceError::UnknownRelation(_) => "42P01",
            MillraceError::DuplicateRelation(_) => "42P07",
            MillraceError::DependentObjects { .. } => "2BP01",
            MillraceError::NotSupported(_) => "0A000",
            MillraceError::UniqueViolation { .. } => "23505",
            MillraceError::NotNullViolation { .. } => "23502",
            MillraceError::Data { sqlstate, .. } => sqlstate,
            MillraceError::Execution(_) => "XX000",
            MillraceError::Storage(_) => "58030",
            MillraceError::Io(_) => "58030",
        }
    }

    /// Shorthand for a plan error.
    pub fn plan(msg: impl Into<String>) -> Self {
        MillraceError::Plan(msg.into())
    }

    /// Shorthand for a not-supported error.
    pub fn not_supported(msg: impl Into<String>) -> Self {
        MillraceError::NotSupported(msg.into())
    }

    /// Shorthand for an execution error.
    pub fn execution(msg: impl Into<String>) -> Self {
        MillraceError::Execution(msg.into())
    }

    /// Shorthand for a storage error.
    pub fn storage(msg: impl std::fmt::Display) -> Self {
        MillraceError::Storage(msg.to_string())
    }
}

impl From<ParserError> for MillraceError {
    fn from(e: ParserError) -> Self {
        parse_error(None, e)
    }
}

/// Converts a 1-based (line, column) pair into a 1-based character offset in `sql`.
fn line_col_to_offset(sql: &str, line: usize, col: usize) -> Option<usize> {
    let mut offset = 0usize;
    for (i, l) in sql.split('\n').enumerate() {
        if i + 1 == line {
            return Some(offset + col);
        }
        offset += l.chars().count() + 1;
    }
    None
}

/// Builds a [`MillraceError::Parse`] from a sqlparser error, turning its
/// "at Line: L, Column: C" suffix into a character offset within `sql` (or,
/// without the text, the column when the error is on the first line).
pub fn parse_error(sql: Option<&str>, e: ParserError) -> MillraceError {
    let text = match e {
        ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
        ParserError::RecursionLimitExceeded => "statement nested too deeply".to_string(),
    };
    let Some(idx) = text.rfind(" at Line: ") else {
        return MillraceError::Parse {
            message: text,
            position: None,
        };
    };
    let (message, loc) = text.split_at(idx);
    let mut parts = loc.trim_start_matches(" at Line: ").split(", Column: ");
    let line = parts.next().and_then(|l| l.trim().parse::<usize>().ok());
    let col = parts.next().and_then(|c| c.trim().parse::<usize>().ok());
    let position = match (sql, line, col) {
        (Some(sql), Some(l), Some(c)) => line_col_to_offset(sql, l, c),
        (None, Some(1), Some(c)) => Some(c),
        _ => None,
    };
    MillraceError::Parse {
        message: message.to_string(),
        position,
    }
}

impl From<DataFusionError> for MillraceError {
    fn from(e: DataFusionError) -> Self {
        classify_datafusion_error(e)
    }
}

impl From<datafusion::arrow::error::ArrowError> for MillraceError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        classify_arrow_error(e)
    }
}

fn classify_arrow_error(e: datafusion::arrow::error::ArrowError) -> MillraceError {
    use datafusion::arrow::error::ArrowError;
    match e {
        ArrowError::DivideByZero => MillraceError::Data {
            sqlstate: "22012",
            message: "division by zero".into(),
        },
        ArrowError::CastError(m) | ArrowError::ParseError(m) => MillraceError::Data {
            sqlstate: "22P02",
            message: m,
        },
        ArrowError::ArithmeticOverflow(m) => MillraceError::Data {
            sqlstate: "22003",
            message: m,
        },
        ArrowError::InvalidArgumentError(m) => MillraceError::Data {
            sqlstate: "22023",
            message: m,
        },
        other => MillraceError::Execution(other.to_string()),
    }
}

fn classify_datafusion_error(e: DataFusionError) -> MillraceError {
    match e {
        DataFusionError::SQL(pe, _) => MillraceError::from(*pe),
        DataFusionError::ArrowError(ae, _) => classify_arrow_error(*ae),
        DataFusionError::NotImplemented(m) => MillraceError::NotSupported(m),
        DataFusionError::Plan(m) => {
            if let Some(name) = m
                .strip_prefix("table '")
                .and_then(|rest| rest.split('\'').next())
                .filter(|_| m.ends_with("not found"))
            {
                let short = name.rsplit('.').next().unwrap_or(name).to_string();
                return MillraceError::UnknownRelation(short);
            }
            MillraceError::Plan(m)
        }
        DataFusionError::SchemaError(se, _) => match *se {
            datafusion::common::SchemaError::FieldNotFound { .. } => MillraceError::Data {
                sqlstate: "42703",
                message: se.to_string(),
            },
            other => MillraceError::Plan(other.to_string()),
        },
        DataFusionError::Context(ctx, inner) => match classify_datafusion_error(*inner) {
            MillraceError::Plan(m) => MillraceError::Plan(format!("{ctx}: {m}")),
            MillraceError::Execution(m) => MillraceError::Execution(format!("{ctx}: {m}")),
            other => other,
        },
        DataFusionError::Diagnostic(_, inner) => classify_datafusion_error(*inner),
        DataFusionError::Shared(inner) => MillraceError::Execution(inner.to_string()),
        DataFusionError::Execution(m) => {
            if m.contains("Cannot cast") || m.contains("cast") && m.contains("value") {
                MillraceError::Data {
                    sqlstate: "22P02",
                    message: m,
                }
            } else if m.starts_with("unrecognized configuration parameter") {
                MillraceError::Data {
                    sqlstate: "42704",
                    message: m,
                }
            } else if m.contains("Divide by zero") || m.contains("division by zero") {
                MillraceError::Data {
                    sqlstate: "22012",
                    message: "division by zero".into(),
                }
            } else {
                MillraceError::Execution(m)
            }
        }
        other => MillraceError::Execution(other.strip_backtrace()),
    }
}
