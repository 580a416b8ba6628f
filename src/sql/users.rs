//! Login users and their SCRAM-SHA-256 verifiers.
//!
//! `CREATE USER name [WITH] PASSWORD 'secret'` stores a random salt and the
//! salted password (PBKDF2-HMAC-SHA-256, 4096 iterations, as PostgreSQL
//! does), never the password. When the server requires passwords
//! (`--auth scram`), clients prove they know it through SCRAM; the
//! verifier alone cannot be used to log in elsewhere. Users persist in the
//! state store beside the catalog.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::{MillraceError, Result};
use crate::storage::{StateStore, WriteBatch};

/// Store namespace of the users.
pub const USERS_NAMESPACE: &str = "users";

/// The user `MILLRACE_PASSWORD` gives a password to at start.
pub const DEFAULT_USER: &str = "millrace";

/// PBKDF2 iterations of the stored verifiers (PostgreSQL's default).
pub const SCRAM_ITERATIONS: usize = 4096;

/// One login user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's name.
    pub name: String,
    /// Salt of the verifier.
    pub salt: Vec<u8>,
    /// The salted password; `None` for a user that cannot log in with a
    /// password.
    pub salted_password: Option<Vec<u8>>,
    /// May do anything (the start-up user, and users made `SUPERUSER`).
    #[serde(default)]
    pub superuser: bool,
    /// Relations the user may read (`GRANT SELECT`); `*` for all of them.
    #[serde(default)]
    pub select: std::collections::BTreeSet<String>,
}

/// The grant of `GRANT SELECT ON ALL TABLES IN SCHEMA public`.
pub const ALL_RELATIONS: &str = "*";

/// The users, readable without the engine's writer lock (logins read them).
pub struct Users {
    store: Arc<dyn StateStore>,
    by_name: RwLock<BTreeMap<String, UserRecord>>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Users({})", self.count())
    }
}

fn poisoned() -> MillraceError {
    MillraceError::execution("the user list is unavailable after a panic")
}

fn verifier(password: Option<&str>) -> (Vec<u8>, Option<Vec<u8>>) {
    let salt = rand::random::<[u8; 16]>().to_vec();
    let salted = password
        .map(|p| pgwire::api::auth::sasl::scram::gen_salted_password(p, &salt, SCRAM_ITERATIONS));
    (salt, salted)
}

impl Users {
    /// Loads the users from `store`.
    pub fn load(store: Arc<dyn StateStore>) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for (_, value) in store.scan(USERS_NAMESPACE)? {
            let user: UserRecord = serde_json::from_slice(&value)
                .map_err(|e| MillraceError::storage(format!("a stored user is unreadable: {e}")))?;
            by_name.insert(user.name.clone(), user);
        }
        Ok(Self {
            store,
            by_name: RwLock::new(by_name),
        })
    }

    /// Stores `name` with a new verifier of `password`, durably first.
    fn store_user(
        &self,
        users: &mut BTreeMap<String, UserRecord>,
        name: &str,
        password: Option<&str>,
        superuser: bool,
    ) -> Result<()> {
        let (salt, salted_password) = verifier(password);
        let user = UserRecord {
            name: name.to_string(),
            salt,
            salted_password,
            superuser,
            select: users
                .get(name)
                .map(|u| u.select.clone())
                .unwrap_or_default(),
        };
        self.write_record(&user)?;
        users.insert(name.to_string(), user);
        Ok(())
    }

    /// The user named `name`.
    pub fn get(&self, name: &str) -> Option<UserRecord> {
        self.by_name.read().ok()?.get(name).cloned()
    }

    /// How many users exist.
    pub fn count(&self) -> usize {
        self.by_name.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether `user` may read `relation`.
    pub fn may_read(&self, user: &str, relation: &str) -> bool {
        self.get(user).is_some_and(|u| {
            u.superuser || u.select.contains(relation) || u.select.contains(ALL_RELATIONS)
        })
    }

    /// Whether `user` may do anything.
    pub fn is_superuser(&self, user: &str) -> bool {
        self.get(user).is_some_and(|u| u.superuser)
    }

    /// `GRANT SELECT` (`grant`) or `REVOKE SELECT` on `relations` to `user`.
    pub fn set_select(&self, user: &str, relations: &[String], grant: bool) -> Result<()> {
        let mut users = self.by_name.write().map_err(|_| poisoned())?;
        let Some(record) = users.get(user) else {
            return Err(MillraceError::Data {
                sqlstate: "42704",
                message: format!("role \"{user}\" does not exist"),
            });
        };
        let mut record = record.clone();
        for r in relations {
            if grant {
                record.select.insert(r.clone());
            } else {
                record.select.remove(r);
            }
        }
        self.write_record(&record)?;
        users.insert(user.to_string(), record);
        Ok(())
    }

    fn write_record(&self, user: &UserRecord) -> Result<()> {
        let mut batch = WriteBatch::default();
        let value = serde_json::to_vec(user).map_err(MillraceError::storage)?;
        batch.put(USERS_NAMESPACE, user.name.as_bytes().to_vec(), value);
        self.store.write(batch)
    }

    /// `CREATE USER`.
    pub fn create(
        &self,
        name: &str,
        password: Option<&str>,
        superuser: bool,
        if_not_exists: bool,
    ) -> Result<bool> {
        let mut users = self.by_name.write().map_err(|_| poisoned())?;
        if users.contains_key(name) {
            if if_not_exists {
                return Ok(false);
            }
            return Err(MillraceError::Data {
                sqlstate: "42710",
                message: format!("role \"{name}\" already exists"),
            });
        }
        self.store_user(&mut users, name, password, superuser)?;
        Ok(true)
    }

    /// `ALTER USER ... PASSWORD`, or creates the user as a superuser (for
    /// the password given at start).
    pub fn set_password(&self, name: &str, password: Option<&str>, create: bool) -> Result<()> {
        let mut users = self.by_name.write().map_err(|_| poisoned())?;
        if !create && !users.contains_key(name) {
            return Err(MillraceError::Data {
                sqlstate: "42704",
                message: format!("role \"{name}\" does not exist"),
            });
        }
        let superuser = users.get(name).map_or(create, |u| u.superuser);
        self.store_user(&mut users, name, password, superuser)
    }

    /// `DROP USER`.
    pub fn drop_user(&self, name: &str, if_exists: bool) -> Result<()> {
        let mut users = self.by_name.write().map_err(|_| poisoned())?;
        if users.remove(name).is_none() {
            if if_exists {
                return Ok(());
            }
            return Err(MillraceError::Data {
                sqlstate: "42704",
                message: format!("role \"{name}\" does not exist"),
            });
        }
        let mut batch = WriteBatch::default();
        batch.delete(USERS_NAMESPACE, name.as_bytes().to_vec());
        self.store.write(batch)
    }

    /// The user names, for `pg_roles`-like listings.
    pub fn names(&self) -> Vec<String> {
        self.by_name
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}
