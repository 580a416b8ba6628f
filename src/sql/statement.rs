//! Statement splitting and classification.
//!
//! SQL text is split into statements at top-level semicolons using
//! sqlparser's tokenizer (so semicolons in strings and comments are safe).
//! Each statement is then either one of Millrace's own commands, which have
//! no PostgreSQL syntax (`FLUSH`, `SHOW MATERIALIZED VIEWS`, `SHOW CREATE
//! MATERIALIZED VIEW ...`), or a sqlparser [`Statement`] in the PostgreSQL
//! dialect.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::{ColumnDef, ColumnOption, Statement, TableConstraint, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Word};

use crate::error::{parse_error, MillraceError, Result};

/// Kinds of relation, as named in `SHOW` and `DROP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A table written with INSERT/UPDATE/DELETE.
    Table,
    /// A plain (non-materialized) view.
    View,
    /// A materialized view maintained incrementally.
    MaterializedView,
    /// A continuous source of rows.
    Source,
    /// A continuous export of a relation's changes.
    Sink,
}

impl ObjectKind {
    /// The SQL words for this kind (`MATERIALIZED VIEW`).
    pub fn sql_name(&self) -> &'static str {
        match self {
            ObjectKind::Table => "TABLE",
            ObjectKind::View => "VIEW",
            ObjectKind::MaterializedView => "MATERIALIZED VIEW",
            ObjectKind::Source => "SOURCE",
            ObjectKind::Sink => "SINK",
        }
    }
}

/// A parsed `CREATE SINK`.
#[derive(Debug, Clone)]
pub struct CreateSink {
    /// Sink name.
    pub name: String,
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// The table or view whose changes are exported.
    pub from: String,
    /// `WITH` options, keys lower-cased.
    pub options: BTreeMap<String, String>,
    /// `FORMAT x ENCODE y`, lower-cased, when given.
    pub format: Option<(String, String)>,
    /// The statement's text, as written.
    pub sql: String,
}

/// One `INCLUDE` clause of `CREATE SOURCE`: a column filled from each
/// record's metadata rather than its payload.
#[derive(Debug, Clone)]
pub struct IncludeClause {
    /// `key`, `partition`, `offset`, `timestamp` or `header`.
    pub what: String,
    /// The header's name, for `INCLUDE header 'name'`.
    pub header: Option<String>,
    /// The column's name (`AS name`); defaults to `_rw_kafka_`-free names:
    /// `_key`, `_partition`, `_offset`, `_timestamp`, `_header_<name>`.
    pub column: String,
    /// The column's declared type, when given after its name.
    pub data_type: Option<datafusion::sql::sqlparser::ast::DataType>,
}

/// A statement ready to execute.
#[derive(Debug, Clone)]
pub enum Command {
    /// `FLUSH`
    Flush,
    /// `SHOW TABLES`, `SHOW VIEWS`, `SHOW MATERIALIZED VIEWS`
    ShowObjects(ObjectKind),
    /// `SHOW CREATE TABLE | VIEW | MATERIALIZED VIEW name`
    ShowCreate(ObjectKind, String),
    /// `CREATE SOURCE name [(columns)] WITH (options) [FORMAT f ENCODE e]`
    CreateSource(Box<CreateSource>),
    /// `CREATE SINK name FROM relation WITH (options) [FORMAT f ENCODE e]`
    CreateSink(Box<CreateSink>),
    /// `DROP SOURCE | SINK [IF EXISTS] name, ... [CASCADE]`
    DropSource {
        /// Source or sink.
        kind: ObjectKind,
        /// Names to drop.
        names: Vec<String>,
        /// No error when absent.
        if_exists: bool,
        /// Drop dependents too.
        cascade: bool,
    },
    /// `SUBSCRIBE [TO] relation [WITH (snapshot = bool)]`, or
    /// `DECLARE c CURSOR [WITH HOLD] FOR SUBSCRIBE ...`.
    Subscribe(Subscribe),
    /// Anything sqlparser parses.
    Sql(Box<Statement>),
    /// An empty statement (only whitespace or comments).
    Empty,
}

/// A parsed `SUBSCRIBE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The table or view whose changes are streamed.
    pub relation: String,
    /// Send the current rows first (the default).
    pub snapshot: bool,
    /// When declared as a cursor: its name and whether it is `WITH HOLD`.
    pub cursor: Option<(String, bool)>,
}

/// Parses `SUBSCRIBE` and `DECLARE ... FOR SUBSCRIBE`; `None` for any
/// other statement.
fn parse_subscribe(tokens: &[Token]) -> Option<Result<Subscribe>> {
    let syntax = |message: &str| {
        Some(Err(MillraceError::Parse {
            message: message.to_string(),
            position: None,
        }))
    };
    let (cursor, rest) = if keyword(tokens.first()?) == Some(Keyword::DECLARE) {
        let for_at = tokens
            .iter()
            .position(|t| keyword(t) == Some(Keyword::FOR))?;
        if !tokens
            .get(for_at + 1)
            .is_some_and(|t| is_word(t, "SUBSCRIBE"))
        {
            return None;
        }
        let name = object_name(tokens.get(1..2)?)?;
        let modifiers: Vec<String> = tokens[2..for_at]
            .iter()
            .map(|t| t.to_string().to_ascii_uppercase())
            .collect();
        let hold =
            match modifiers.join(" ").as_str() {
                "CURSOR"
                | "NO SCROLL CURSOR"
                | "CURSOR WITHOUT HOLD"
                | "NO SCROLL CURSOR WITHOUT HOLD" => false,
                "CURSOR WITH HOLD" | "NO SCROLL CURSOR WITH HOLD" => true,
                _ => return syntax(
                    "DECLARE ... FOR SUBSCRIBE takes [NO SCROLL] CURSOR [WITH HOLD | WITHOUT HOLD]",
                ),
            };
        (Some((name, hold)), &tokens[for_at + 2..])
    } else if is_word(tokens.first()?, "SUBSCRIBE") {
        (None, &tokens[1..])
    } else {
        return None;
    };
    let rest = match rest.first() {
        Some(t) if keyword(t) == Some(Keyword::TO) => &rest[1..],
        _ => rest,
    };
    let with_at = rest
        .iter()
        .position(|t| keyword(t) == Some(Keyword::WITH))
        .unwrap_or(rest.len());
    let Some(relation) = object_name(&rest[..with_at]) else {
        return syntax("SUBSCRIBE needs the name of a table or view: SUBSCRIBE TO name [WITH (snapshot = false)]");
    };
    let mut snapshot = true;
    match &rest[with_at..] {
        [] => {}
        [_with, Token::LParen, name, Token::Eq, value, Token::RParen]
            if is_word(name, "SNAPSHOT") =>
        {
            snapshot = match value {
                Token::Word(w) if w.value.eq_ignore_ascii_case("true") => true,
                Token::Word(w) if w.value.eq_ignore_ascii_case("false") => false,
                Token::SingleQuotedString(v) if v.eq_ignore_ascii_case("true") => true,
                Token::SingleQuotedString(v) if v.eq_ignore_ascii_case("false") => false,
                _ => return syntax("SUBSCRIBE option snapshot takes true or false"),
            };
        }
        _ => return syntax("SUBSCRIBE takes one option: WITH (snapshot = true | false)"),
    }
    Some(Ok(Subscribe {
        relation,
        snapshot,
        cursor,
    }))
}

/// A parsed `CREATE SOURCE`.
#[derive(Debug, Clone)]
pub struct CreateSource {
    /// Source name.
    pub name: String,
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// Declared columns (possibly none).
    pub columns: Vec<ColumnDef>,
    /// `WITH` options, keys lower-cased.
    pub options: BTreeMap<String, String>,
    /// `FORMAT x ENCODE y`, lower-cased, when given.
    pub format: Option<(String, String)>,
    /// Options after `ENCODE y (...)`, keys lower-cased.
    pub encode_options: BTreeMap<String, String>,
    /// `PRIMARY KEY (columns)` among the column definitions.
    pub primary_key: Vec<String>,
    /// `INCLUDE key | partition | offset | timestamp | header 'name' [AS
    /// column [type]]` clauses, in order.
    pub includes: Vec<IncludeClause>,
    /// `WATERMARK FOR column AS expr` among the column definitions.
    pub watermark: Option<WatermarkClause>,
    /// The statement's text, as written.
    pub sql: String,
}

/// One statement of a multi-statement string.
#[derive(Debug, Clone)]
pub struct StatementText {
    /// Byte offset of the statement within the whole text.
    pub offset: usize,
    /// The statement's text, without the terminating semicolon.
    pub text: String,
}

fn tokenizer_error(sql: &str, e: impl std::fmt::Display) -> MillraceError {
    parse_error(Some(sql), ParserError::TokenizerError(e.to_string()))
}

/// `WATERMARK FOR column AS expression` in the column list of `CREATE
/// TABLE` or `CREATE SOURCE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkClause {
    /// The event-time column, lower-cased unless quoted.
    pub column: String,
    /// The watermark expression as written.
    pub expr: String,
}

/// The clauses about event time that sqlparser does not know, taken out of
/// a statement's text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeClauses {
    /// `WATERMARK FOR ...` of a table or source.
    pub watermark: Option<WatermarkClause>,
    /// `EMIT ON WINDOW CLOSE` at the end of `CREATE MATERIALIZED VIEW`.
    pub emit_on_window_close: bool,
}

/// Byte offsets of `sql`'s tokens (without whitespace and comments), with
/// the tokens.
fn located_tokens(sql: &str) -> Result<Vec<(Token, usize, usize)>> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| tokenizer_error(sql, e))?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let to_byte = |line: u64, col: u64| -> usize {
        let start = line_starts
            .get((line as usize).saturating_sub(1))
            .copied()
            .unwrap_or(sql.len());
        sql[start..]
            .char_indices()
            .nth((col as usize).saturating_sub(1))
            .map(|(i, _)| start + i)
            .unwrap_or(sql.len())
    };
    Ok(tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .map(|t| {
            let start = to_byte(t.span.start.line, t.span.start.column);
            let end = to_byte(t.span.end.line, t.span.end.column);
            (t.token, start, end)
        })
        .collect())
}

/// Takes `WATERMARK FOR column AS expr` out of the column list of a `CREATE
/// TABLE` or `CREATE SOURCE`, and a trailing `EMIT ON WINDOW CLOSE` off a
/// `CREATE MATERIALIZED VIEW`; returns the remaining text and the clauses.
/// Other statements come back unchanged.
pub fn take_time_clauses(sql: &str) -> Result<(String, TimeClauses)> {
    let tokens = located_tokens(sql)?;
    let mut clauses = TimeClauses::default();
    let words: Vec<&Token> = tokens.iter().map(|(t, _, _)| t).collect();
    // `EXPLAIN CREATE ...` too.
    let create = words
        .iter()
        .take(2)
        .any(|t| keyword(t) == Some(Keyword::CREATE));
    if !create {
        return Ok((sql.to_string(), clauses));
    }
    let mut text = sql.to_string();
    // EMIT ON WINDOW CLOSE, last.
    let n = words.len();
    if n >= 4
        && is_word(words[n - 4], "EMIT")
        && is_word(words[n - 3], "ON")
        && is_word(words[n - 2], "WINDOW")
        && is_word(words[n - 1], "CLOSE")
    {
        clauses.emit_on_window_close = true;
        text.truncate(tokens[n - 4].1);
    }
    let creates_columns = words
        .iter()
        .take(4)
        .any(|t| is_word(t, "TABLE") || is_word(t, "SOURCE"));
    if !creates_columns {
        return Ok((text, clauses));
    }
    // The first parenthesised list is the column list.
    let Some(open) = tokens.iter().position(|(t, _, _)| *t == Token::LParen) else {
        return Ok((text, clauses));
    };
    let mut depth = 0usize;
    let mut element_start = open + 1;
    let mut found: Option<(usize, usize)> = None;
    let mut close = None;
    for (i, (t, _, _)) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            Token::Comma if depth == 1 => element_start = i + 1,
            _ if depth == 1
                && i == element_start
                && is_word(t, "WATERMARK")
                && tokens
                    .get(i + 1)
                    .is_some_and(|(n, _, _)| keyword(n) == Some(Keyword::FOR)) =>
            {
                if found.is_some() {
                    return Err(MillraceError::Parse {
                        message: "only one WATERMARK FOR clause is allowed".into(),
                        position: None,
                    });
                }
                found = Some((i, 0));
            }
            _ => {}
        }
        if let Some((start, 0)) = found {
            // The clause ends before the next comma or the closing paren.
            let next = tokens.get(i + 1).map(|(t, _, _)| t);
            if depth == 1 && matches!(next, Some(Token::Comma) | Some(Token::RParen)) {
                found = Some((start, i));
            }
        }
    }
    let (Some((start, last)), Some(close)) = (found, close) else {
        return Ok((text, clauses));
    };
    if last == 0 {
        return Err(MillraceError::Parse {
            message: "Expected: WATERMARK FOR column AS expression".into(),
            position: None,
        });
    }
    let clause = &tokens[start..=last];
    let column = match clause.get(2).map(|(t, _, _)| t) {
        Some(Token::Word(w)) => match w.quote_style {
            Some(_) => w.value.clone(),
            None => w.value.to_ascii_lowercase(),
        },
        _ => {
            return Err(MillraceError::Parse {
                message: "Expected: a column name after WATERMARK FOR".into(),
                position: None,
            })
        }
    };
    if clause.len() < 5 || keyword(&clause[3].0) != Some(Keyword::AS) {
        return Err(MillraceError::Parse {
            message: format!("Expected: WATERMARK FOR {column} AS expression"),
            position: None,
        });
    }
    let expr = sql[clause[4].1..clause[clause.len() - 1].2]
        .trim()
        .to_string();
    // Cut the clause with the comma before it (or after it, when first).
    let (cut_from, cut_to) = if start > open + 1 {
        (tokens[start - 1].1, clause[clause.len() - 1].2)
    } else if last + 1 < close {
        (tokens[start].1, tokens[last + 2].1)
    } else {
        (tokens[start].1, clause[clause.len() - 1].2)
    };
    let mut stripped = String::with_capacity(text.len());
    stripped.push_str(&text[..cut_from]);
    stripped.push_str(&text[cut_to.min(text.len())..]);
    clauses.watermark = Some(WatermarkClause { column, expr });
    Ok((stripped, clauses))
}

/// Splits `sql` at top-level semicolons.
pub fn split_statements(sql: &str) -> Result<Vec<StatementText>> {
    let mut out = Vec::new();
    let mut start = 0usize;
    for (token, at, _) in located_tokens(sql)? {
        if token == Token::SemiColon {
            push_statement(&mut out, sql, start, at);
            start = at + 1;
        }
    }
    push_statement(&mut out, sql, start, sql.len());
    Ok(out)
}

fn push_statement(out: &mut Vec<StatementText>, sql: &str, start: usize, end: usize) {
    let text = &sql[start.min(sql.len())..end.min(sql.len())];
    if has_tokens(text) {
        out.push(StatementText {
            offset: start,
            text: text.to_string(),
        });
    }
}

fn has_tokens(text: &str) -> bool {
    let dialect = PostgreSqlDialect {};
    match Tokenizer::new(&dialect, text).tokenize() {
        Ok(tokens) => tokens.iter().any(|t| !matches!(t, Token::Whitespace(_))),
        Err(_) => true,
    }
}

/// Words of a statement, upper-cased, for matching Millrace's own commands.
fn words(text: &str) -> Option<Vec<Token>> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, text).tokenize().ok()?;
    Some(
        tokens
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect(),
    )
}

fn keyword(t: &Token) -> Option<Keyword> {
    match t {
        Token::Word(Word {
            keyword,
            quote_style: None,
            ..
        }) => Some(*keyword),
        _ => None,
    }
}

fn is_word(t: &Token, w: &str) -> bool {
    matches!(t, Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(w))
}

fn object_name(tokens: &[Token]) -> Option<String> {
    let mut parts = Vec::new();
    let mut expect_name = true;
    for t in tokens {
        match (t, expect_name) {
            (Token::Word(w), true) => {
                parts.push(if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_ascii_lowercase()
                });
                expect_name = false;
            }
            (Token::Period, false) => expect_name = true,
            _ => return None,
        }
    }
    if expect_name {
        return None;
    }
    parts.pop()
}

/// Parses one statement's text. `offset` is where it starts in the whole
/// text, so parse error positions point into what the client sent.
pub fn parse_statement(whole: &str, stmt: &StatementText) -> Result<Command> {
    let relocate = |err: MillraceError| match err {
        MillraceError::Parse { message, position } => MillraceError::Parse {
            message,
            position: position.map(|p| whole[..stmt.offset].chars().count() + p),
        },
        other => other,
    };
    let tokens = words(&stmt.text);
    if let Some(tokens) = &tokens {
        if tokens.len() >= 2
            && keyword(&tokens[0]) == Some(Keyword::CREATE)
            && is_word(&tokens[1], "SOURCE")
        {
            return parse_create_source(&stmt.text).map_err(relocate);
        }
        if tokens.len() >= 2
            && keyword(&tokens[0]) == Some(Keyword::CREATE)
            && is_word(&tokens[1], "SINK")
        {
            return parse_create_sink(&stmt.text).map_err(relocate);
        }
        if let Some(subscribe) = parse_subscribe(tokens) {
            return subscribe.map(Command::Subscribe).map_err(relocate);
        }
        if let Some(cmd) = own_command(tokens) {
            return Ok(cmd);
        }
        if tokens.is_empty() {
            return Ok(Command::Empty);
        }
    }
    // PostgreSQL's `CREATE USER` / `ALTER USER` are `CREATE ROLE ... LOGIN`
    // / `ALTER ROLE`; sqlparser reads `CREATE USER` in another dialect's
    // syntax, so the role form is parsed.
    let role_form = tokens.as_deref().and_then(|tokens| match tokens {
        [first, user, ..]
            if matches!(keyword(first), Some(Keyword::CREATE | Keyword::ALTER))
                && keyword(user) == Some(Keyword::USER) =>
        {
            let upper = stmt.text.to_ascii_uppercase();
            let at = upper.find("USER")?;
            let login = if keyword(first) == Some(Keyword::CREATE) {
                " LOGIN"
            } else {
                ""
            };
            Some(format!(
                "{}ROLE{}{login}",
                &stmt.text[..at],
                &stmt.text[at + "USER".len()..]
            ))
        }
        _ => None,
    });
    let fetch_form = tokens.as_deref().and_then(fetch_with_from);
    // Event-time clauses (only in `[EXPLAIN] CREATE ...`) are read again by
    // the engine from the text.
    let creates = tokens.as_deref().is_some_and(|t| {
        t.iter()
            .take(2)
            .any(|w| keyword(w) == Some(Keyword::CREATE))
    });
    let timeless = if creates {
        take_time_clauses(&stmt.text).map_err(relocate)?.0
    } else {
        stmt.text.clone()
    };
    let text = role_form
        .as_deref()
        .or(fetch_form.as_deref())
        .unwrap_or(&timeless);
    let dialect = PostgreSqlDialect {};
    let mut statements = Parser::new(&dialect)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| relocate(parse_error(Some(&stmt.text), e)))?;
    match statements.len() {
        0 => Ok(Command::Empty),
        1 => {
            let mut statement = statements.remove(0);
            super::windows::rewrite_window_functions(&mut statement)?;
            Ok(Command::Sql(Box::new(statement)))
        }
        _ => Err(MillraceError::Parse {
            message: "expected one statement".into(),
            position: None,
        }),
    }
}

/// PostgreSQL's `FETCH [direction] cursor` without `FROM`/`IN` (`FETCH 10
/// c`, `FETCH c`), spelled with `FROM` as sqlparser requires; `None` when
/// the statement is not such a `FETCH`.
fn fetch_with_from(tokens: &[Token]) -> Option<String> {
    let mut tokens = tokens.to_vec();
    while matches!(tokens.last(), Some(Token::SemiColon | Token::EOF)) {
        tokens.pop();
    }
    let (first, rest) = tokens.split_first()?;
    if !matches!(keyword(first), Some(Keyword::FETCH))
        || rest
            .iter()
            .any(|t| matches!(keyword(t), Some(Keyword::FROM | Keyword::IN)))
    {
        return None;
    }
    let (cursor, direction) = rest.split_last()?;
    let direction = if direction.is_empty() {
        "NEXT".to_string()
    } else {
        direction
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(format!("{first} {direction} FROM {cursor}"))
}

/// Parses `CREATE SOURCE [IF NOT EXISTS] name [(columns)] WITH (key = value,
/// ...) [FORMAT f ENCODE e]`, where keys may be dotted (`fields.id.kind`).
fn parse_create_source(written: &str) -> Result<Command> {
    let (stripped, clauses) = take_time_clauses(written)?;
    let text = stripped.as_str();
    // The generic dialect also parses `STRUCT<field type, ...>` column types,
    // which map nested JSON objects.
    let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
    let err = |e: ParserError| parse_error(Some(text), e);
    let mut p = Parser::new(&dialect).try_with_sql(text).map_err(err)?;
    p.expect_keyword(Keyword::CREATE).map_err(err)?;
    p.next_token(); // SOURCE
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_object_name(false).map_err(err)?;
    let name = name
        .0
        .last()
        .and_then(|n| n.as_ident())
        .map(ident_lower)
        .ok_or_else(|| MillraceError::plan("invalid source name"))?;
    let mut primary_key = Vec::new();
    let columns = if p.peek_token().token == Token::LParen {
        let (columns, constraints) = p.parse_columns().map_err(err)?;
        for c in constraints {
            match c {
                TableConstraint::PrimaryKey(pk) => {
                    for col in pk.columns {
                        primary_key.push(col.to_string().to_ascii_lowercase());
                    }
                }
                other => {
                    return Err(MillraceError::not_supported(format!(
                        "constraint {other} on a source (only PRIMARY KEY)"
                    )))
                }
            }
        }
        for c in &columns {
            for o in &c.options {
                if matches!(o.option, ColumnOption::PrimaryKey(_)) {
                    primary_key.push(ident_lower(&c.name));
                }
            }
        }
        columns
    } else {
        vec![]
    };
    let mut includes = Vec::new();
    while is_word(&p.peek_token().token, "INCLUDE") {
        p.next_token();
        let what = p
            .parse_identifier()
            .map_err(err)?
            .value
            .to_ascii_lowercase();
        let header = if what == "header" {
            match p.parse_value().map_err(err)?.value {
                Value::SingleQuotedString(s) => Some(s),
                other => {
                    return Err(MillraceError::Parse {
                        message: format!("Expected: a header name in quotes, found: {other}"),
                        position: None,
                    })
                }
            }
        } else {
            None
        };
        let (column, data_type) = if p.parse_keyword(Keyword::AS) {
            let column = ident_lower(&p.parse_identifier().map_err(err)?);
            let next = p.peek_token().token;
            let typed = !(next == Token::EOF
                || keyword(&next) == Some(Keyword::WITH)
                || is_word(&next, "INCLUDE")
                || is_word(&next, "FORMAT"));
            let data_type = if typed {
                Some(p.parse_data_type().map_err(err)?)
            } else {
                None
            };
            (column, data_type)
        } else {
            let column = match &header {
                Some(h) => format!("_header_{h}"),
                None => format!("_{what}"),
            };
            (column, None)
        };
        includes.push(IncludeClause {
            what,
            header,
            column,
            data_type,
        });
    }
    let options = if p.parse_keyword(Keyword::WITH) {
        parse_option_list(&mut p).map_err(err)?
    } else {
        BTreeMap::new()
    };
    let (format, encode_options) = parse_format_clause(&mut p, text)?;
    let trailing = p.peek_token();
    if trailing.token != Token::EOF {
        return Err(err(ParserError::ParserError(format!(
            "Expected: end of statement, found: {} at Line: {}, Column: {}",
            trailing.token, trailing.span.start.line, trailing.span.start.column
        ))));
    }
    Ok(Command::CreateSource(Box::new(CreateSource {
        name,
        if_not_exists,
        columns,
        options,
        format,
        encode_options,
        primary_key,
        includes,
        watermark: clauses.watermark,
        sql: written.trim().to_string(),
    })))
}

/// Parses `CREATE SINK [IF NOT EXISTS] name FROM relation WITH (key =
/// value, ...) [FORMAT f ENCODE e]`.
fn parse_create_sink(text: &str) -> Result<Command> {
    let dialect = PostgreSqlDialect {};
    let err = |e: ParserError| parse_error(Some(text), e);
    let mut p = Parser::new(&dialect).try_with_sql(text).map_err(err)?;
    p.expect_keyword(Keyword::CREATE).map_err(err)?;
    p.next_token(); // SINK
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = ident_lower(&p.parse_identifier().map_err(err)?);
    p.expect_keyword(Keyword::FROM).map_err(err)?;
    let from = p
        .parse_object_name(false)
        .map_err(err)?
        .0
        .last()
        .and_then(|n| n.as_ident())
        .map(ident_lower)
        .ok_or_else(|| MillraceError::plan("invalid relation name"))?;
    let options = if p.parse_keyword(Keyword::WITH) {
        parse_option_list(&mut p).map_err(err)?
    } else {
        BTreeMap::new()
    };
    let (format, encode_options) = parse_format_clause(&mut p, text)?;
    if !encode_options.is_empty() {
        return Err(MillraceError::not_supported("ENCODE options on a sink"));
    }
    let trailing = p.peek_token();
    if trailing.token != Token::EOF {
        return Err(err(ParserError::ParserError(format!(
            "Expected: end of statement, found: {} at Line: {}, Column: {}",
            trailing.token, trailing.span.start.line, trailing.span.start.column
        ))));
    }
    Ok(Command::CreateSink(Box::new(CreateSink {
        name,
        if_not_exists,
        from,
        options,
        format,
        sql: text.trim().to_string(),
    })))
}

/// Parses an optional `FORMAT f ENCODE e [(options)]`, lower-cased.
#[allow(clippy::type_complexity)]
fn parse_format_clause(
    p: &mut Parser<'_>,
    text: &str,
) -> Result<(Option<(String, String)>, BTreeMap<String, String>)> {
    let err = |e: ParserError| parse_error(Some(text), e);
    if !is_word(&p.peek_token().token, "FORMAT") {
        return Ok((None, BTreeMap::new()));
    }
    p.next_token();
    let f = p
        .parse_identifier()
        .map_err(err)?
        .value
        .to_ascii_lowercase();
    let next = p.next_token().token;
    if !is_word(&next, "ENCODE") {
        return Err(MillraceError::Parse {
            message: format!("Expected: ENCODE, found: {next}"),
            position: None,
        });
    }
    let e = p
        .parse_identifier()
        .map_err(err)?
        .value
        .to_ascii_lowercase();
    let options = if p.peek_token().token == Token::LParen {
        parse_option_list(p).map_err(err)?
    } else {
        BTreeMap::new()
    };
    Ok((Some((f, e)), options))
}

/// An unquoted identifier lower-cased, a quoted one as written.
fn ident_lower(i: &datafusion::sql::sqlparser::ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

/// Parses `(key = value, ...)` where keys may be dotted (`fields.id.kind`)
/// and values are literals; keys are lower-cased.
fn parse_option_list(
    p: &mut Parser<'_>,
) -> std::result::Result<BTreeMap<String, String>, ParserError> {
    let mut options = BTreeMap::new();
    p.expect_token(&Token::LParen)?;
    loop {
        let mut key = p.parse_identifier()?.value;
        while p.consume_token(&Token::Period) {
            key.push('.');
            key.push_str(&p.parse_identifier()?.value);
        }
        p.expect_token(&Token::Eq)?;
        let value = match p.parse_value()?.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s,
            Value::Number(n, _) => n,
            Value::Boolean(b) => b.to_string(),
            other => other.to_string(),
        };
        options.insert(key.to_ascii_lowercase(), value);
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    p.expect_token(&Token::RParen)?;
    Ok(options)
}

fn own_command(tokens: &[Token]) -> Option<Command> {
    let first = tokens.first()?;
    if is_word(first, "FLUSH") && tokens.len() == 1 {
        return Some(Command::Flush);
    }
    if keyword(first) == Some(Keyword::DROP)
        && tokens.len() >= 3
        && (is_word(&tokens[1], "SOURCE") || is_word(&tokens[1], "SINK"))
    {
        let kind = if is_word(&tokens[1], "SINK") {
            ObjectKind::Sink
        } else {
            ObjectKind::Source
        };
        let mut rest = &tokens[2..];
        let if_exists = rest.len() >= 2
            && keyword(&rest[0]) == Some(Keyword::IF)
            && keyword(&rest[1]) == Some(Keyword::EXISTS);
        if if_exists {
            rest = &rest[2..];
        }
        let cascade = rest
            .last()
            .is_some_and(|t| keyword(t) == Some(Keyword::CASCADE));
        if cascade
            || rest
                .last()
                .is_some_and(|t| keyword(t) == Some(Keyword::RESTRICT))
        {
            rest = &rest[..rest.len() - 1];
        }
        let names = rest
            .split(|t| *t == Token::Comma)
            .map(object_name)
            .collect::<Option<Vec<_>>>()?;
        return Some(Command::DropSource {
            kind,
            names,
            if_exists,
            cascade,
        });
    }
    if keyword(first) != Some(Keyword::SHOW) {
        return None;
    }
    let rest = &tokens[1..];
    let kind_len = |ts: &[Token]| -> Option<(ObjectKind, usize)> {
        match ts {
            [a, b, ..] if keyword(a) == Some(Keyword::MATERIALIZED) && is_word(b, "VIEW") => {
                Some((ObjectKind::MaterializedView, 2))
            }
            [a, ..] if keyword(a) == Some(Keyword::TABLE) => Some((ObjectKind::Table, 1)),
            [a, ..] if keyword(a) == Some(Keyword::VIEW) => Some((ObjectKind::View, 1)),
            [a, ..] if is_word(a, "SOURCE") => Some((ObjectKind::Source, 1)),
            [a, ..] if is_word(a, "SINK") => Some((ObjectKind::Sink, 1)),
            _ => None,
        }
    };
    match rest {
        [a] if is_word(a, "TABLES") => Some(Command::ShowObjects(ObjectKind::Table)),
        [a] if is_word(a, "VIEWS") => Some(Command::ShowObjects(ObjectKind::View)),
        [a] if is_word(a, "SOURCES") => Some(Command::ShowObjects(ObjectKind::Source)),
        [a] if is_word(a, "SINKS") => Some(Command::ShowObjects(ObjectKind::Sink)),
        [a, b] if keyword(a) == Some(Keyword::MATERIALIZED) && is_word(b, "VIEWS") => {
            Some(Command::ShowObjects(ObjectKind::MaterializedView))
        }
        [c, more @ ..] if keyword(c) == Some(Keyword::CREATE) => {
            let (kind, n) = kind_len(more)?;
            let name = object_name(&more[n..])?;
            Some(Command::ShowCreate(kind, name))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_statements() {
        let t = |sql: &str| {
            parse_statement(
                sql,
                &StatementText {
                    offset: 0,
                    text: sql.to_string(),
                },
            )
        };
        let Ok(Command::Subscribe(s)) = t("SUBSCRIBE TO Totals") else {
            panic!("not parsed")
        };
        assert_eq!(
            (s.relation.as_str(), s.snapshot, s.cursor),
            ("totals", true, None)
        );
        let Ok(Command::Subscribe(s)) = t("SUBSCRIBE totals WITH (snapshot = false)") else {
            panic!("not parsed")
        };
        assert!(!s.snapshot);
        let Ok(Command::Subscribe(s)) =
            t("DECLARE c CURSOR WITH HOLD FOR SUBSCRIBE TO totals WITH (snapshot = 'true')")
        else {
            panic!("not parsed")
        };
        assert_eq!(s.cursor, Some(("c".to_string(), true)));
        assert!(t("SUBSCRIBE TO").is_err());
        assert!(t("SUBSCRIBE TO t WITH (snapshot = maybe)").is_err());
        assert!(matches!(
            t("DECLARE c CURSOR FOR SELECT 1"),
            Ok(Command::Sql(_))
        ));
    }

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql = "SELECT 'a;b'; -- c;\nSELECT 2;;";
        let parts = split_statements(sql).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].text, "SELECT 'a;b'");
        assert_eq!(parts[1].text.trim(), "-- c;\nSELECT 2");
    }

    #[test]
    fn recognises_own_commands() {
        let t = |s: &str| own_command(&words(s).unwrap());
        assert!(matches!(t("flush"), Some(Command::Flush)));
        assert!(matches!(
            t("SHOW MATERIALIZED VIEWS"),
            Some(Command::ShowObjects(ObjectKind::MaterializedView))
        ));
        assert!(matches!(
            t("show create materialized view public.MyView"),
            Some(Command::ShowCreate(ObjectKind::MaterializedView, n)) if n == "myview"
        ));
        assert!(t("SELECT 1").is_none());
        assert!(matches!(
            t("DROP SOURCE IF EXISTS a, b CASCADE"),
            Some(Command::DropSource { names, if_exists: true, cascade: true, .. }) if names == ["a", "b"]
        ));
    }

    #[test]
    fn parses_create_source_with_dotted_options() {
        let sql = "CREATE SOURCE IF NOT EXISTS s (id bigint, v text) WITH (connector = 'datagen', fields.id.kind = 'sequence', datagen.rows.per.second = 5) FORMAT PLAIN ENCODE JSON";
        let parts = split_statements(sql).unwrap();
        match parse_statement(sql, &parts[0]).unwrap() {
            Command::CreateSource(cs) => {
                assert_eq!(cs.name, "s");
                assert!(cs.if_not_exists);
                assert_eq!(cs.columns.len(), 2);
                assert_eq!(cs.options["fields.id.kind"], "sequence");
                assert_eq!(cs.options["datagen.rows.per.second"], "5");
                assert_eq!(cs.format, Some(("plain".into(), "json".into())));
            }
            other => panic!("{other:?}"),
        }
        let bad = "CREATE SOURCE s WITH (connector 'x')";
        let parts = split_statements(bad).unwrap();
        assert!(matches!(
            parse_statement(bad, &parts[0]),
            Err(MillraceError::Parse { .. })
        ));
    }

    #[test]
    fn time_clauses_are_taken_out_of_the_text() {
        let (rest, c) = take_time_clauses(
            "CREATE TABLE t (id int, ts timestamp, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)",
        )
        .unwrap();
        assert_eq!(rest, "CREATE TABLE t (id int, ts timestamp)");
        assert_eq!(
            c.watermark,
            Some(WatermarkClause {
                column: "ts".into(),
                expr: "ts - INTERVAL '5' SECOND".into()
            })
        );
        let (rest, c) = take_time_clauses(
            "CREATE SOURCE s (WATERMARK FOR \"Ts\" AS \"Ts\", id int) WITH (connector = 'x')",
        )
        .unwrap();
        assert_eq!(rest, "CREATE SOURCE s (id int) WITH (connector = 'x')");
        assert_eq!(c.watermark.unwrap().column, "Ts");
        let (rest, c) =
            take_time_clauses("CREATE SOURCE s (WATERMARK FOR ts AS ts) WITH (a = 1)").unwrap();
        assert_eq!(rest, "CREATE SOURCE s () WITH (a = 1)");
        assert!(c.watermark.is_some());
        let (rest, c) = take_time_clauses(
            "CREATE MATERIALIZED VIEW v AS SELECT 1 FROM t GROUP BY x EMIT ON WINDOW CLOSE",
        )
        .unwrap();
        assert_eq!(
            rest.trim_end(),
            "CREATE MATERIALIZED VIEW v AS SELECT 1 FROM t GROUP BY x"
        );
        assert!(c.emit_on_window_close && c.watermark.is_none());
        let (rest, c) = take_time_clauses("SELECT watermark FROM t").unwrap();
        assert_eq!(
            (rest.as_str(), c),
            ("SELECT watermark FROM t", TimeClauses::default())
        );
        assert!(take_time_clauses("CREATE TABLE t (a int, WATERMARK FOR a)").is_err());
        assert!(take_time_clauses(
            "CREATE TABLE t (a int, WATERMARK FOR ts AS a, WATERMARK FOR a AS a)"
        )
        .is_err());
    }

    #[test]
    fn parse_error_position_points_into_whole_text() {
        let sql = "SELECT 1; SELEC 2";
        let parts = split_statements(sql).unwrap();
        match parse_statement(sql, &parts[1]) {
            Err(MillraceError::Parse { position, .. }) => assert_eq!(position, Some(11)),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }
}
