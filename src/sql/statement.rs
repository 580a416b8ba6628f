//! Statement splitting and classification.
//!
//! SQL text is split into statements at top-level semicolons using
//! sqlparser's tokenizer (so semicolons in strings and comments are safe).
//! Each statement is then either one of Millrace's own commands, which have
//! no PostgreSQL syntax (`FLUSH`, `SHOW MATERIALIZED VIEWS`, `SHOW CREATE
//! MATERIALIZED VIEW ...`), or a sqlparser [`Statement`] in the PostgreSQL
//! dialect.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::{ColumnDef, Statement, Value};
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
}

impl ObjectKind {
    /// The SQL words for this kind (`MATERIALIZED VIEW`).
    pub fn sql_name(&self) -> &'static str {
        match self {
            ObjectKind::Table => "TABLE",
            ObjectKind::View => "VIEW",
            ObjectKind::MaterializedView => "MATERIALIZED VIEW",
            ObjectKind::Source => "SOURCE",
        }
    }
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
    /// `DROP SOURCE [IF EXISTS] name, ... [CASCADE]`
    DropSource {
        /// Names to drop.
        names: Vec<String>,
        /// No error when absent.
        if_exists: bool,
        /// Drop dependents too.
        cascade: bool,
    },
    /// Anything sqlparser parses.
    Sql(Box<Statement>),
    /// An empty statement (only whitespace or comments).
    Empty,
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

/// Splits `sql` at top-level semicolons.
pub fn split_statements(sql: &str) -> Result<Vec<StatementText>> {
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
    let mut out = Vec::new();
    let mut start = 0usize;
    for t in &tokens {
        if t.token == Token::SemiColon {
            let end = to_byte(t.span.start.line, t.span.start.column);
            push_statement(&mut out, sql, start, end);
            start = end + 1;
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
    if let Some(tokens) = words(&stmt.text) {
        if tokens.len() >= 2
            && keyword(&tokens[0]) == Some(Keyword::CREATE)
            && is_word(&tokens[1], "SOURCE")
        {
            return parse_create_source(&stmt.text).map_err(relocate);
        }
        if let Some(cmd) = own_command(&tokens) {
            return Ok(cmd);
        }
        if tokens.is_empty() {
            return Ok(Command::Empty);
        }
    }
    let dialect = PostgreSqlDialect {};
    let mut statements = Parser::new(&dialect)
        .try_with_sql(&stmt.text)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| relocate(parse_error(Some(&stmt.text), e)))?;
    match statements.len() {
        0 => Ok(Command::Empty),
        1 => Ok(Command::Sql(Box::new(statements.remove(0)))),
        _ => Err(MillraceError::Parse {
            message: "expected one statement".into(),
            position: None,
        }),
    }
}

/// Parses `CREATE SOURCE [IF NOT EXISTS] name [(columns)] WITH (key = value,
/// ...) [FORMAT f ENCODE e]`, where keys may be dotted (`fields.id.kind`).
fn parse_create_source(text: &str) -> Result<Command> {
    let dialect = PostgreSqlDialect {};
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
        .map(|i| {
            if i.quote_style.is_some() {
                i.value.clone()
            } else {
                i.value.to_ascii_lowercase()
            }
        })
        .ok_or_else(|| MillraceError::plan("invalid source name"))?;
    let columns = if p.peek_token().token == Token::LParen {
        let (columns, constraints) = p.parse_columns().map_err(err)?;
        if !constraints.is_empty() {
            return Err(MillraceError::not_supported("constraints on a source"));
        }
        columns
    } else {
        vec![]
    };
    let mut options = BTreeMap::new();
    if p.parse_keyword(Keyword::WITH) {
        p.expect_token(&Token::LParen).map_err(err)?;
        loop {
            let mut key = p.parse_identifier().map_err(err)?.value;
            while p.consume_token(&Token::Period) {
                key.push('.');
                key.push_str(&p.parse_identifier().map_err(err)?.value);
            }
            p.expect_token(&Token::Eq).map_err(err)?;
            let value = match p.parse_value().map_err(err)?.value {
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
        p.expect_token(&Token::RParen).map_err(err)?;
    }
    let mut format = None;
    if p.peek_token().token != Token::EOF && is_word(&p.peek_token().token, "FORMAT") {
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
        format = Some((f, e));
    }
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
        sql: text.trim().to_string(),
    })))
}

fn own_command(tokens: &[Token]) -> Option<Command> {
    let first = tokens.first()?;
    if is_word(first, "FLUSH") && tokens.len() == 1 {
        return Some(Command::Flush);
    }
    if keyword(first) == Some(Keyword::DROP) && tokens.len() >= 3 && is_word(&tokens[1], "SOURCE") {
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
            _ => None,
        }
    };
    match rest {
        [a] if is_word(a, "TABLES") => Some(Command::ShowObjects(ObjectKind::Table)),
        [a] if is_word(a, "VIEWS") => Some(Command::ShowObjects(ObjectKind::View)),
        [a] if is_word(a, "SOURCES") => Some(Command::ShowObjects(ObjectKind::Source)),
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
            Some(Command::DropSource { names, if_exists: true, cascade: true }) if names == ["a", "b"]
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
    fn parse_error_position_points_into_whole_text() {
        let sql = "SELECT 1; SELEC 2";
        let parts = split_statements(sql).unwrap();
        match parse_statement(sql, &parts[1]) {
            Err(MillraceError::Parse { position, .. }) => assert_eq!(position, Some(11)),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }
}
