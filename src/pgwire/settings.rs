//! The run-time settings a session can `SET`, `SHOW` and `RESET`.
//!
//! One table, [`SETTINGS`], lists every setting Millrace knows by its
//! PostgreSQL name, with its default, whether the server reports it to the
//! client in a `ParameterStatus` message, and which values it accepts. The
//! startup parameters, `SHOW`, `SHOW ALL` and `pg_settings` all read it, so
//! they cannot disagree. Names containing a dot are custom settings
//! (`SET myapp.tenant = 'x'`), accepted as in PostgreSQL.

use crate::error::MillraceError;

/// The PostgreSQL version Millrace reports to clients.
pub const SERVER_VERSION: &str = "16.6";

/// Which values a setting accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// Any text.
    Any,
    /// `on`/`off` and PostgreSQL's other boolean spellings.
    Bool,
    /// An integer, optionally with a unit suffix (`30s`, `4MB`).
    Quantity,
    /// One of the listed values (case-insensitive); the first is canonical
    /// for each spelling that names it.
    OneOf(&'static [&'static str]),
    /// Fixed by the server: `SET` is refused.
    ReadOnly,
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The name as PostgreSQL spells it (`DateStyle`, `search_path`).
    pub name: &'static str,
    /// The value a new session starts with.
    pub default: &'static str,
    /// Sent to the client in `ParameterStatus` at startup and when changed.
    pub reported: bool,
    /// Which values `SET` accepts.
    pub accepts: Accepts,
    /// What the setting does in Millrace.
    pub description: &'static str,
}

const fn setting(
    name: &'static str,
    default: &'static str,
    reported: bool,
    accepts: Accepts,
    description: &'static str,
) -> Setting {
    Setting {
        name,
        default,
        reported,
        accepts,
        description,
    }
}

use Accepts::{Any, Bool, OneOf, Quantity, ReadOnly};

/// Every setting Millrace knows, sorted by lower-cased name.
pub const SETTINGS: &[Setting] = &[
    setting("application_name", "", true, Any, "Sets the application name reported in statistics and logs."),
    setting("block_size", "8192", false, ReadOnly, "Shows the size of a disk block (reported for compatibility)."),
    setting("bytea_output", "hex", false, OneOf(&["hex"]), "Sets the output format for bytea; Millrace writes hex."),
    setting("client_encoding", "UTF8", true, OneOf(&["UTF8", "UNICODE", "UTF-8", "SQL_ASCII"]), "Sets the client's character set encoding; Millrace sends UTF-8."),
    setting("client_min_messages", "notice", false, OneOf(&["debug5", "debug4", "debug3", "debug2", "debug1", "log", "notice", "warning", "error"]), "Sets the message levels that are sent to the client."),
    setting("DateStyle", "ISO, MDY", true, OneOf(&["ISO, MDY", "ISO", "ISO, DMY", "ISO, YMD", "MDY", "DMY", "YMD"]), "Sets the display format for date and time values; Millrace writes ISO 8601."),
    setting("default_table_access_method", "heap", false, OneOf(&["heap"]), "Sets the access method of new tables (reported for compatibility)."),
    setting("default_transaction_isolation", "read committed", false, OneOf(&["read committed", "read uncommitted", "repeatable read", "serializable"]), "Sets the isolation level of new transactions; every Millrace statement reads one committed snapshot."),
    setting("default_transaction_read_only", "off", true, Bool, "Refuses writes in new transactions when on."),
    setting("extra_float_digits", "1", false, Quantity, "Sets the number of digits displayed for floating-point values; Millrace always writes the shortest exact form."),
    setting("idle_in_transaction_session_timeout", "0", false, Quantity, "Accepted for compatibility; not enforced."),
    setting("in_hot_standby", "off", true, ReadOnly, "Shows whether the server is a hot standby."),
    setting("integer_datetimes", "on", true, ReadOnly, "Shows whether datetimes are integer based."),
    setting("IntervalStyle", "postgres", true, OneOf(&["postgres"]), "Sets the display format for interval values."),
    setting("is_superuser", "on", true, ReadOnly, "Shows whether the current user is a superuser."),
    setting("jit", "off", false, Bool, "Accepted for compatibility; Millrace has no JIT."),
    setting("lc_collate", "C", false, ReadOnly, "Shows the collation order locale."),
    setting("lc_ctype", "C", false, ReadOnly, "Shows the character classification locale."),
    setting("lc_messages", "C", false, Any, "Sets the language in which messages are displayed; Millrace writes English."),
    setting("lc_monetary", "C", false, Any, "Sets the locale for formatting monetary amounts."),
    setting("lc_numeric", "C", false, Any, "Sets the locale for formatting numbers."),
    setting("lc_time", "C", false, Any, "Sets the locale for formatting date and time values."),
    setting("lock_timeout", "0", false, Quantity, "Accepted for compatibility; Millrace readers never wait for locks."),
    setting("max_connections", "100", false, ReadOnly, "Shows the advertised maximum number of concurrent connections."),
    setting("max_identifier_length", "63", false, ReadOnly, "Shows the maximum identifier length."),
    setting("max_index_keys", "32", false, ReadOnly, "Shows the maximum number of index keys."),
    setting("row_security", "on", false, Bool, "Accepted for compatibility."),
    setting("search_path", "\"$user\", public", false, Any, "Sets the schema search order for names that are not schema-qualified."),
    setting("server_encoding", "UTF8", true, ReadOnly, "Shows the server (database) character set encoding."),
    setting("server_version", SERVER_VERSION, true, ReadOnly, "Shows the PostgreSQL version the server speaks as."),
    setting("server_version_num", "160006", false, ReadOnly, "Shows the PostgreSQL version as an integer."),
    setting("session_authorization", "", true, ReadOnly, "Shows the session user name."),
    setting("standard_conforming_strings", "on", true, OneOf(&["on"]), "Causes '...' strings to treat backslashes literally."),
    setting("statement_timeout", "0", false, Quantity, "Accepted for compatibility; not enforced."),
    setting("synchronous_commit", "on", false, OneOf(&["on", "off", "local", "remote_write", "remote_apply"]), "Accepted for compatibility."),
    setting("TimeZone", "UTC", true, Any, "Sets the time zone for displaying time stamps; Millrace writes them in UTC with an explicit offset."),
    setting("timezone_abbreviations", "Default", false, Any, "Selects a file of time zone abbreviations."),
    setting("transaction_isolation", "read committed", false, OneOf(&["read committed", "read uncommitted", "repeatable read", "serializable"]), "Sets the current transaction's isolation level."),
    setting("transaction_read_only", "off", false, Bool, "Refuses writes in the current transaction when on."),
    setting("work_mem", "4MB", false, Quantity, "Accepted for compatibility."),
];

/// The setting named `name` (case-insensitive), if Millrace knows it.
pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

/// Whether `name` is a custom (`prefix.name`) setting.
pub fn is_custom(name: &str) -> bool {
    name.contains('.')
}

/// PostgreSQL's error for a name that is neither known nor custom.
pub fn unknown(name: &str) -> MillraceError {
    MillraceError::Data {
        sqlstate: "42704",
        message: format!("unrecognized configuration parameter \"{name}\""),
    }
}

fn invalid(name: &str, value: &str, hint: &str) -> MillraceError {
    MillraceError::Data {
        sqlstate: "22023",
        message: format!("invalid value for parameter \"{name}\": \"{value}\"{hint}"),
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// Checks `value` for `setting` and returns it in canonical form.
pub fn validate(setting: &Setting, value: &str) -> Result<String, MillraceError> {
    match setting.accepts {
        Any => Ok(value.to_string()),
        ReadOnly => Err(MillraceError::Data {
            sqlstate: "55P02",
            message: format!("parameter \"{}\" cannot be changed", setting.name),
        }),
        Bool => match parse_bool(value) {
            Some(true) => Ok("on".into()),
            Some(false) => Ok("off".into()),
            None => Err(invalid(setting.name, value, "")),
        },
        Quantity => {
            let digits = value
                .trim()
                .trim_start_matches('-')
                .trim_end_matches(|c: char| c.is_ascii_alphabetic());
            if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                Ok(value.trim().to_string())
            } else {
                Err(invalid(setting.name, value, ""))
            }
        }
        OneOf(values) => canonical_choice(setting, values, value),
    }
}

fn canonical_choice(
    setting: &Setting,
    values: &[&str],
    value: &str,
) -> Result<String, MillraceError> {
    let normal = |v: &str| {
        v.split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wanted = normal(value);
    if !values.iter().any(|v| normal(v) == wanted) {
        return Err(invalid(
            setting.name,
            value,
            &format!(" (Millrace accepts: {})", values.join("; ")),
        ));
    }
    Ok(match setting.name {
        // Every spelling of UTF-8 is reported as PostgreSQL reports it.
        "client_encoding" if wanted != "sql_ascii" => "UTF8".into(),
        "client_encoding" => "SQL_ASCII".into(),
        // Output stays ISO; the field order is kept, as PostgreSQL does.
        "DateStyle" => {
            let order = wanted
                .split(", ")
                .find(|p| *p != "iso")
                .unwrap_or("mdy")
                .to_ascii_uppercase();
            format!("ISO, {order}")
        }
        _ => values
            .iter()
            .find(|v| normal(v) == wanted)
            .map(|v| v.to_string())
            .unwrap_or(wanted),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_defaults_are_valid() {
        let names: Vec<String> = SETTINGS.iter().map(|s| s.name.to_lowercase()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for s in SETTINGS {
            if s.accepts != ReadOnly {
                assert_eq!(
                    validate(s, s.default).ok().as_deref(),
                    Some(s.default),
                    "{}",
                    s.name
                );
            }
        }
    }

    #[test]
    fn values_are_checked_and_canonical() {
        let date_style = find("datestyle").expect("known");
        assert_eq!(
            validate(date_style, "iso").ok().as_deref(),
            Some("ISO, MDY")
        );
        assert_eq!(
            validate(date_style, "ISO, DMY").ok().as_deref(),
            Some("ISO, DMY")
        );
        assert!(validate(date_style, "SQL, DMY").is_err());
        let encoding = find("CLIENT_ENCODING").expect("known");
        assert_eq!(validate(encoding, "unicode").ok().as_deref(), Some("UTF8"));
        assert!(validate(encoding, "LATIN1").is_err());
        let read_only = find("default_transaction_read_only").expect("known");
        assert_eq!(validate(read_only, "true").ok().as_deref(), Some("on"));
        assert!(validate(read_only, "maybe").is_err());
        let timeout = find("statement_timeout").expect("known");
        assert!(validate(timeout, "30s").is_ok());
        assert!(validate(timeout, "soon").is_err());
        let version = find("server_version").expect("known");
        assert_eq!(
            validate(version, "9.6").err().map(|e| e.sqlstate()),
            Some("55P02")
        );
        assert!(find("no_such_setting").is_none());
        assert!(is_custom("myapp.tenant"));
    }
}
