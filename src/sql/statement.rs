//! Statement splitting and classification.
//!
//! SQL text is split into statements at top-level semicolons using
//! sqlparser's tokenizer (so semicolons in strings and comments are safe).
//! Each statement is then either one of Millrace's own commands, which have
//! no PostgreSQL syntax (`FLUSH`, `SHOW MATERIALIZED VIEWS`, `SHOW CREATE
//! MATERIALIZED VIEW ...`), or a sqlparser [`Statement`] in the PostgreSQL
//! dialect.

use datafusion::sql::sqlparser::ast::Statement;
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
}

impl ObjectKind {
    /// The SQL words for this kind (`MATERIALIZED VIEW`).
    pub fn sql_name(&self) -> &'static str {
        match self {
            ObjectKind::Table => "TABLE",
            ObjectKind::View => "VIEW",
            ObjectKind::MaterializedView => "MATERIALIZED VIEW",
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
    /// Anything sqlparser parses.
    Sql(Box<Statement>),
    /// An empty statement (only whitespace or comments).
    Empty,
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
    if let Some(tokens) = words(&stmt.text) {
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
        .map_err(|e| {
            let err = parse_error(Some(&stmt.text), e);
            match err {
                MillraceError::Parse { message, position } => MillraceError::Parse {
                    message,
                    position: position.map(|p| whole[..stmt.offset].chars().count() + p),
                },
                other => other,
            }
        })?;
    match statements.len() {
        0 => Ok(Command::Empty),
        1 => Ok(Command::Sql(Box::new(statements.remove(0)))),
        _ => Err(MillraceError::Parse {
            message: "expected one statement".into(),
            position: None,
        }),
    }
}

fn own_command(tokens: &[Token]) -> Option<Command> {
    let first = tokens.first()?;
    if is_word(first, "FLUSH") && tokens.len() == 1 {
        return Some(Command::Flush);
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
            _ => None,
        }
    };
    match rest {
        [a] if is_word(a, "TABLES") => Some(Command::ShowObjects(ObjectKind::Table)),
        [a] if is_word(a, "VIEWS") => Some(Command::ShowObjects(ObjectKind::View)),
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
