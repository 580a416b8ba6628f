//! `COPY ... TO STDOUT` and `COPY ... FROM STDIN`, in PostgreSQL's text,
//! CSV and binary formats.
//!
//! Out: rows are encoded exactly as a query's result rows (the same text
//! of every value), then framed per format. In: the data is split into
//! text fields here, and the engine reads each field as its column's type
//! and commits every row at once or none ([`crate::sql::Engine::copy_in`]).
//!
//! CSV fields are split here rather than by a CSV crate because
//! PostgreSQL's CSV reading tells an unquoted empty field (NULL) from a
//! quoted one (an empty string), which the crates do not report.

use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, ObjectName,
    Statement,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use pgwire::api::portal::Format;
use pgwire::error::PgWireResult;

use super::encode;
use crate::error::MillraceError;
use crate::sql::statement::Command;

type Result<T> = std::result::Result<T, MillraceError>;

/// A `COPY ... FROM STDIN` in progress: where the rows go and the data
/// received so far.
#[derive(Debug)]
pub struct CopyIn {
    /// Target table.
    pub table: String,
    /// Columns the data holds, in order.
    pub columns: Vec<String>,
    /// Format options.
    pub options: CopyOptions,
    /// Data received so far.
    pub data: BytesMut,
}

/// The most `COPY ... FROM STDIN` data held at once; more is refused
/// rather than risking the server's memory.
pub const MAX_COPY_IN_BYTES: usize = 1 << 30;

/// The data format of a `COPY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab-separated, backslash escapes, `\N` for NULL.
    Text,
    /// Comma-separated, quoted where needed, empty for NULL.
    Csv,
    /// PostgreSQL's binary `PGCOPY` format.
    Binary,
}

/// The options of a `COPY`.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Data format.
    pub format: CopyFormat,
    /// A first line naming the columns (CSV only).
    pub header: bool,
    /// Field separator.
    pub delimiter: u8,
    /// How NULL is written.
    pub null: String,
    /// CSV quote character.
    pub quote: u8,
    /// CSV escape character (inside quotes).
    pub escape: u8,
}

impl CopyOptions {
    /// The wire's overall format code: 1 for binary, 0 otherwise.
    pub fn wire_format(&self) -> i8 {
        i8::from(self.format == CopyFormat::Binary)
    }
}

/// What a `COPY` statement asks for.
#[derive(Debug, Clone)]
pub enum CopyPlan {
    /// `COPY relation | (query) TO STDOUT`: the query to run.
    Out {
        /// The query, as a command the engine runs.
        query: Command,
        /// Format options.
        options: CopyOptions,
    },
    /// `COPY table [(columns)] FROM STDIN`.
    In {
        /// Target table.
        table: String,
        /// Columns given, in order (empty: all).
        columns: Vec<String>,
        /// Format options.
        options: CopyOptions,
    },
}

fn single_byte(c: char, what: &str) -> Result<u8> {
    u8::try_from(u32::from(c))
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| {
            MillraceError::not_supported(format!("COPY {what} must be a single ASCII character"))
        })
}

fn options_of(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<CopyOptions> {
    let mut format = CopyFormat::Text;
    let (mut header, mut delimiter, mut null, mut quote, mut escape) =
        (false, None, None, b'"', None);
    for o in options {
        match o {
            CopyOption::Format(name) => {
                format = match name.value.to_ascii_lowercase().as_str() {
                    "text" => CopyFormat::Text,
                    "csv" => CopyFormat::Csv,
                    "binary" => CopyFormat::Binary,
                    other => {
                        return Err(MillraceError::Data {
                            sqlstate: "22023",
                            message: format!("COPY format \"{other}\" not recognized"),
                        })
                    }
                }
            }
            CopyOption::Header(h) => header = *h,
            CopyOption::Delimiter(c) => delimiter = Some(single_byte(*c, "delimiter")?),
            CopyOption::Null(n) => null = Some(n.clone()),
            CopyOption::Quote(c) => quote = single_byte(*c, "quote")?,
            CopyOption::Escape(c) => escape = Some(single_byte(*c, "escape")?),
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => return Err(MillraceError::not_supported(format!("COPY option {other}"))),
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => format = CopyFormat::Binary,
            CopyLegacyOption::Csv(csv) => {
                format = CopyFormat::Csv;
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(q) => quote = single_byte(*q, "quote")?,
                        CopyLegacyCsvOption::Escape(e) => escape = Some(single_byte(*e, "escape")?),
                        other => {
                            return Err(MillraceError::not_supported(format!(
                                "COPY option {other}"
                            )))
                        }
                    }
                }
            }
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Delimiter(c) => delimiter = Some(single_byte(*c, "delimiter")?),
            CopyLegacyOption::Null(n) => null = Some(n.clone()),
            other => return Err(MillraceError::not_supported(format!("COPY option {other}"))),
        }
    }
    if header && format != CopyFormat::Csv {
        return Err(MillraceError::not_supported(
            "COPY HEADER outside CSV format",
        ));
    }
    let csv = format == CopyFormat::Csv;
    Ok(CopyOptions {
        format,
        header,
        delimiter: delimiter.unwrap_or(if csv { b',' } else { b'\t' }),
        null: null.unwrap_or_else(|| if csv { String::new() } else { "\\N".into() }),
        quote,
        escape: escape.unwrap_or(quote),
    })
}

fn ident_name(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

fn table_name(name: &ObjectName) -> Result<String> {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .ok_or_else(|| MillraceError::plan(format!("COPY of {name}: not a relation name")))
}

/// Reads a `COPY` statement.
pub fn plan(stmt: &Statement) -> Result<CopyPlan> {
    let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        values,
    } = stmt
    else {
        return Err(MillraceError::execution("not a COPY statement"));
    };
    let options = options_of(options, legacy_options)?;
    match (to, target) {
        (true, CopyTarget::Stdout) => {
            let sql = match source {
                CopySource::Query(q) => q.to_string(),
                CopySource::Table {
                    table_name,
                    columns,
                } => {
                    let list = if columns.is_empty() {
                        "*".to_string()
                    } else {
                        columns
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    format!("SELECT {list} FROM {table_name}")
                }
            };
            let query = Parser::parse_sql(&PostgreSqlDialect {}, &sql)?
                .pop()
                .ok_or_else(|| MillraceError::plan("COPY without a query"))?;
            Ok(CopyPlan::Out {
                query: Command::Sql(Box::new(query)),
                options,
            })
        }
        (false, CopyTarget::Stdin) => {
            let CopySource::Table {
                table_name: name,
                columns,
            } = source
            else {
                return Err(MillraceError::plan("COPY FROM needs a table, not a query"));
            };
            if !values.is_empty() {
                return Err(MillraceError::not_supported(
                    "data inline after COPY FROM STDIN; send it as COPY data",
                ));
            }
            if options.format == CopyFormat::Binary {
                return Err(MillraceError::not_supported(
                    "COPY FROM STDIN in binary format (text and CSV are supported)",
                ));
            }
            Ok(CopyPlan::In {
                table: table_name(name)?,
                columns: columns.iter().map(ident_name).collect(),
                options,
            })
        }
        (_, CopyTarget::File { .. } | CopyTarget::Program { .. }) => {
            Err(MillraceError::not_supported(
                "COPY to or from a server file or program: use STDIN/STDOUT (psql's \\copy)",
            ))
        }
        (true, CopyTarget::Stdin) | (false, CopyTarget::Stdout) => Err(MillraceError::plan(
            "COPY TO needs STDOUT and COPY FROM needs STDIN",
        )),
    }
}

/// The fixed start of a binary `COPY`: signature, flags, extension length.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Encodes query results as `COPY` data: one message per row, the header
/// (binary signature or CSV column names) joined to the first.
pub fn encode_out(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    options: &CopyOptions,
) -> PgWireResult<Vec<Bytes>> {
    let format = if options.format == CopyFormat::Binary {
        Format::UnifiedBinary
    } else {
        Format::UnifiedText
    };
    let fields = std::sync::Arc::new(encode::pg_fields(schema, &format)?);
    let mut header = BytesMut::new();
    match options.format {
        CopyFormat::Binary => header.put_slice(BINARY_HEADER),
        CopyFormat::Csv if options.header => {
            let names: Vec<Option<&[u8]>> = schema
                .fields()
                .iter()
                .map(|f| Some(f.name().as_bytes()))
                .collect();
            write_line(&mut header, &names, options);
        }
        _ => {}
    }
    let mut out = Vec::new();
    for batch in batches {
        for row in encode::encode_batch(&fields, batch) {
            let row = row?;
            let mut buf = std::mem::take(&mut header);
            if options.format == CopyFormat::Binary {
                // A DataRow body is the binary row: length-prefixed values.
                buf.put_i16(row.field_count);
                buf.put_slice(&row.data);
            } else {
                let values = split_data_row(&row.data, row.field_count);
                write_line(&mut buf, &values, options);
            }
            out.push(buf.freeze());
        }
    }
    if !header.is_empty() {
        out.push(header.freeze());
    }
    Ok(out)
}

/// The values of a `DataRow` body: `None` for NULL.
fn split_data_row(data: &[u8], count: i16) -> Vec<Option<&[u8]>> {
    let mut values = Vec::with_capacity(count.max(0) as usize);
    let mut at = 0;
    for _ in 0..count {
        let Some(len) = data.get(at..at + 4) else {
            break;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len < 0 {
            values.push(None);
        } else {
            let end = (at + len as usize).min(data.len());
            values.push(Some(&data[at..end]));
            at = end;
        }
    }
    values
}

fn write_line(out: &mut BytesMut, values: &[Option<&[u8]>], options: &CopyOptions) {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.put_u8(options.delimiter);
        }
        match (value, options.format) {
            (None, _) => out.put_slice(options.null.as_bytes()),
            (Some(v), CopyFormat::Csv) => {
                let needs_quotes = v.is_empty() && options.null.is_empty()
                    || v == &options.null.as_bytes()
                    || v.iter().any(|&b| {
                        b == options.delimiter || b == options.quote || b == b'\n' || b == b'\r'
                    });
                if needs_quotes {
                    out.put_u8(options.quote);
                    for &b in v.iter() {
                        if b == options.quote || b == options.escape {
                            out.put_u8(options.escape);
                        }
                        out.put_u8(b);
                    }
                    out.put_u8(options.quote);
                } else {
                    out.put_slice(v);
                }
            }
            (Some(v), _) => {
                for &b in v.iter() {
                    match b {
                        b'\\' => out.put_slice(b"\\\\"),
                        b'\n' => out.put_slice(b"\\n"),
                        b'\r' => out.put_slice(b"\\r"),
                        b'\t' if options.delimiter == b'\t' => out.put_slice(b"\\t"),
                        b if b == options.delimiter => {
                            out.put_u8(b'\\');
                            out.put_u8(b);
                        }
                        b => out.put_u8(b),
                    }
                }
            }
        }
    }
    out.put_u8(b'\n');
}

/// Splits `COPY FROM` data into rows of text fields (`None` for NULL),
/// checking each row has `columns` fields. Returns the rows and the line
/// number of the first (after a CSV header).
pub fn parse_in(
    data: &[u8],
    columns: usize,
    table: &str,
    options: &CopyOptions,
) -> Result<(Vec<Vec<Option<String>>>, usize)> {
    let text = std::str::from_utf8(data).map_err(|e| MillraceError::Data {
        sqlstate: "22021",
        message: format!("COPY {table}: data is not valid UTF-8 ({e})"),
    })?;
    let records = match options.format {
        CopyFormat::Csv => csv_records(text, options, table)?,
        _ => text_records(text, options, table)?,
    };
    let skip = usize::from(options.header);
    let mut rows = Vec::with_capacity(records.len().saturating_sub(skip));
    for (line, fields) in records.into_iter().skip(skip) {
        if fields.len() != columns {
            let message = if fields.len() < columns {
                format!("missing data for a column (COPY {table}, line {line})")
            } else {
                format!("extra data after last expected column (COPY {table}, line {line})")
            };
            return Err(MillraceError::Data {
                sqlstate: "22P04",
                message,
            });
        }
        rows.push(fields);
    }
    Ok((rows, 1 + skip))
}

type Records = Vec<(usize, Vec<Option<String>>)>;

/// Text format: one row per line, fields split at the delimiter, the
/// null string (before unescaping) for NULL, backslash escapes.
fn text_records(text: &str, options: &CopyOptions, table: &str) -> Result<Records> {
    let mut records = Vec::new();
    let delimiter = char::from(options.delimiter);
    let lines: Vec<&str> = text.split('\n').collect();
    for (n, line) in lines.iter().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line == "\\." {
            break;
        }
        // The newline ending the last row leaves an empty last piece.
        if line.is_empty() && n + 1 == lines.len() {
            continue;
        }
        let mut fields = Vec::new();
        let mut raw = String::new();
        let mut chars = line.chars().peekable();
        let finish = |raw: &mut String, fields: &mut Vec<Option<String>>| -> Result<()> {
            if *raw == options.null {
                fields.push(None);
            } else {
                fields.push(Some(unescape(raw).ok_or_else(|| MillraceError::Data {
                    sqlstate: "22P02",
                    message: format!("invalid escape in COPY data (COPY {table}, line {})", n + 1),
                })?));
            }
            raw.clear();
            Ok(())
        };
        while let Some(c) = chars.next() {
            if c == '\\' {
                raw.push(c);
                if let Some(next) = chars.next() {
                    raw.push(next);
                }
            } else if c == delimiter {
                finish(&mut raw, &mut fields)?;
            } else {
                raw.push(c);
            }
        }
        finish(&mut raw, &mut fields)?;
        records.push((n + 1, fields));
    }
    Ok(records)
}

/// Removes text-format backslash escapes; `None` for a malformed escape.
fn unescape(raw: &str) -> Option<String> {
    if !raw.contains('\\') {
        return Some(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            'x' => {
                let mut code = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match chars.peek().and_then(|d| d.to_digit(16)) {
                        Some(d) => {
                            code = code * 16 + d;
                            chars.next();
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push('x');
                } else {
                    out.push(char::from_u32(code)?);
                }
            }
            d @ '0'..='7' => {
                let mut code = d.to_digit(8)?;
                for _ in 0..2 {
                    match chars.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            code = code * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(code)?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// CSV: quoted fields may hold delimiters, quotes (escaped) and newlines;
/// an unquoted field equal to the null string is NULL.
fn csv_records(text: &str, options: &CopyOptions, table: &str) -> Result<Records> {
    let (delimiter, quote, escape) = (
        char::from(options.delimiter),
        char::from(options.quote),
        char::from(options.escape),
    );
    let mut records = Vec::new();
    let mut fields: Vec<Option<String>> = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    let end_field = |field: &mut String, quoted: &mut bool, fields: &mut Vec<Option<String>>| {
        if !*quoted && *field == options.null {
            fields.push(None);
        } else {
            fields.push(Some(std::mem::take(field)));
        }
        field.clear();
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            let next = chars.peek().copied();
            if c == escape && escape != quote && (next == Some(quote) || next == Some(escape)) {
                // An escaped quote or escape character, when they differ.
                field.push(next.unwrap_or(c));
                chars.next();
            } else if c == quote && escape == quote && next == Some(quote) {
                // A doubled quote is a literal quote.
                field.push(quote);
                chars.next();
            } else if c == quote {
                in_quotes = false;
            } else {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            continue;
        }
        match c {
            c if c == quote => {
                in_quotes = true;
                quoted = true;
            }
            c if c == delimiter => end_field(&mut field, &mut quoted, &mut fields),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                end_field(&mut field, &mut quoted, &mut fields);
                records.push((record_line, std::mem::take(&mut fields)));
                line += 1;
                record_line = line;
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err(MillraceError::Data {
            sqlstate: "22P04",
            message: format!("unterminated CSV quoted field (COPY {table}, line {record_line})"),
        });
    }
    if !field.is_empty() || quoted || !fields.is_empty() {
        end_field(&mut field, &mut quoted, &mut fields);
        records.push((record_line, fields));
    }
    // A line holding only `\.` ends the data, as in PostgreSQL.
    if let Some(end) = records
        .iter()
        .position(|(_, f)| f.len() == 1 && f[0].as_deref() == Some("\\."))
    {
        records.truncate(end);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(format: CopyFormat, header: bool) -> CopyOptions {
        let csv = format == CopyFormat::Csv;
        CopyOptions {
            format,
            header,
            delimiter: if csv { b',' } else { b'\t' },
            null: if csv { String::new() } else { "\\N".into() },
            quote: b'"',
            escape: b'"',
        }
    }

    #[test]
    fn text_lines_unescape_and_read_nulls() {
        let (rows, first) = parse_in(
            b"1\tann\\tlee\t\\N\n2\tline\\nbreak\tx\\\\y\n",
            3,
            "t",
            &options(CopyFormat::Text, false),
        )
        .expect("parses");
        assert_eq!(first, 1);
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), Some("ann\tlee".into()), None],
                vec![
                    Some("2".into()),
                    Some("line\nbreak".into()),
                    Some("x\\y".into())
                ],
            ]
        );
        let err = parse_in(b"1\t2\n3\n", 2, "t", &options(CopyFormat::Text, false))
            .expect_err("short line");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn csv_quotes_nulls_and_header() {
        let (rows, first) = parse_in(
            b"id,name,note\n1,\"a,b\",\n2,\"say \"\"hi\"\"\",\"\"\n3,\"multi\nline\",x\n",
            3,
            "t",
            &options(CopyFormat::Csv, true),
        )
        .expect("parses");
        assert_eq!(first, 2);
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), Some("a,b".into()), None],
                vec![Some("2".into()), Some("say \"hi\"".into()), Some("".into())],
                vec![
                    Some("3".into()),
                    Some("multi\nline".into()),
                    Some("x".into())
                ],
            ]
        );
        let err = parse_in(b"1,\"open\n", 2, "t", &options(CopyFormat::Csv, false))
            .expect_err("unterminated");
        assert!(err.to_string().contains("unterminated"), "{err}");
    }

    #[test]
    fn lines_are_written_with_escapes_and_quotes() {
        let mut out = BytesMut::new();
        let values = [Some(&b"a\tb"[..]), None, Some(&b"c\\d"[..])];
        write_line(&mut out, &values, &options(CopyFormat::Text, false));
        assert_eq!(&out[..], b"a\\tb\t\\N\tc\\\\d\n");
        let mut out = BytesMut::new();
        let values = [Some(&b"a,b"[..]), None, Some(&b""[..]), Some(&b"q\"q"[..])];
        write_line(&mut out, &values, &options(CopyFormat::Csv, false));
        assert_eq!(&out[..], b"\"a,b\",,\"\",\"q\"\"q\"\n");
    }

    #[test]
    fn statements_are_planned() {
        let stmt = |sql: &str| {
            Parser::parse_sql(&PostgreSqlDialect {}, sql)
                .expect("parses")
                .pop()
                .expect("one")
        };
        let CopyPlan::Out { options, .. } =
            plan(&stmt("COPY (SELECT 1) TO STDOUT WITH (FORMAT csv, HEADER)")).expect("plan")
        else {
            panic!("not out")
        };
        assert!(options.header && options.format == CopyFormat::Csv);
        let CopyPlan::In { table, columns, .. } =
            plan(&stmt("COPY Orders (id, Name) FROM STDIN")).expect("plan")
        else {
            panic!("not in")
        };
        assert_eq!(
            (table.as_str(), columns),
            ("orders", vec!["id".to_string(), "name".to_string()])
        );
        assert!(plan(&stmt("COPY t TO '/tmp/x'")).is_err());
        assert!(plan(&stmt("COPY t FROM STDIN WITH (FORMAT binary)")).is_err());
    }
}
