//! Typed access to a source's `WITH (...)` options, with errors that name
//! the option and the value.

use std::collections::BTreeMap;

use crate::error::{MillraceError, Result};

/// The options of one `CREATE SOURCE`, with a record of which were read so
/// that unknown (misspelled) options can be refused.
pub struct Options<'a> {
    map: &'a BTreeMap<String, String>,
    used: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl<'a> Options<'a> {
    /// Wraps the option map.
    pub fn new(map: &'a BTreeMap<String, String>) -> Self {
        let used =
            std::cell::RefCell::new(std::collections::BTreeSet::from(["connector".to_string()]));
        Self { map, used }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.used.borrow_mut().insert(key.to_string());
        self.map.get(key).map(|s| s.as_str())
    }

    /// `key` parsed as `T`, or `default` when absent.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// `key` parsed as `T`, if present.
    pub fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|e| invalid(format!("invalid value '{v}' for option {key}: {e}"))),
        }
    }

    /// Refuses options that were never read.
    pub fn reject_unknown(&self) -> Result<()> {
        let used = self.used.borrow();
        let unknown: Vec<&str> = self
            .map
            .keys()
            .filter(|k| !used.contains(k.as_str()))
            .map(|k| k.as_str())
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(invalid(format!(
                "unknown source option(s): {}",
                unknown.join(", ")
            )))
        }
    }
}

/// An invalid source option (SQLSTATE 22023, invalid parameter value).
pub fn invalid(message: impl Into<String>) -> MillraceError {
    MillraceError::Data {
        sqlstate: "22023",
        message: message.into(),
    }
}
