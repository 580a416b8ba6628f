//! Server start-up: the data directory lock, the engine, the optional
//! init-SQL file, the wire listener and clean shutdown on a signal.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fs2::FileExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::error::{MillraceError, Result};
use crate::pgwire::AuthMode;
use crate::sql::{Engine, EngineOptions};

/// Default address the server listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4588";

/// Everything `millrace serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// Directory holding the state store.
    pub data_dir: PathBuf,
    /// The state store a new data directory gets (an existing one keeps
    /// its own); `None`: the default.
    pub state_store: Option<crate::storage::StoreKind>,
    /// How often checkpoints are taken; `None`: never.
    pub checkpoint_interval: Option<std::time::Duration>,
    /// SQL file run once the server is up.
    pub init_sql: Option<PathBuf>,
    /// TLS certificate chain and private key (PEM files); without them
    /// clients asking for TLS are told it is not offered.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How clients authenticate; `None`: trust on a loopback address,
    /// SCRAM passwords on any other.
    pub auth: Option<AuthMode>,
    /// A password for the user `millrace`, set (and the user created) at
    /// start.
    pub password: Option<String>,
}

/// Holds the exclusive lock on a data directory for the server's lifetime.
pub struct DataDirLock {
    _file: File,
}

/// Creates `dir` if needed and locks it, failing if another server holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("LOCK");
    let file = File::create(&path)?;
    file.try_lock_exclusive().map_err(|_| {
        MillraceError::storage(format!(
            "data directory {} is in use by another Millrace server",
            dir.display()
        ))
    })?;
    Ok(DataDirLock { _file: file })
}

/// Runs the init-SQL file; objects that already exist are left alone.
pub async fn run_init_sql(engine: &Engine, path: &Path) -> Result<()> {
    let sql = std::fs::read_to_string(path).map_err(|e| {
        MillraceError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot read init SQL file {}: {e}", path.display()),
        ))
    })?;
    let options = EngineOptions {
        skip_existing: true,
        ..Default::default()
    };
    let (outputs, error) = engine.execute_all(&sql, &options).await;
    if let Some(e) = error {
        return Err(MillraceError::execution(format!(
            "init SQL file {} failed at statement {}: {e}",
            path.display(),
            outputs.len() + 1
        )));
    }
    info!(statements = outputs.len(), file = %path.display(), "init SQL applied");
    Ok(())
}

/// Runs the server until `shutdown` turns true. Prints the bound address as
/// `listening on ADDR` on standard output once it accepts connections.
pub async fn run(config: ServerConfig, shutdown: watch::Receiver<bool>) -> Result<()> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(crate::pgwire::tls_acceptor(cert, key)?),
        None => None,
    };
    let _lock = lock_data_dir(&config.data_dir)?;
    let engine = Engine::open_with(
        crate::storage::open_in(&config.data_dir, config.state_store)?,
        config.checkpoint_interval,
    )
    .await?;
    let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
        MillraceError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", config.listen),
        ))
    })?;
    let addr: SocketAddr = listener.local_addr()?;
    if let Some(password) = &config.password {
        engine
            .users()
            .set_password(crate::sql::users::DEFAULT_USER, Some(password), true)?;
    }
    let auth = config.auth.unwrap_or(if addr.ip().is_loopback() {
        AuthMode::Trust
    } else {
        AuthMode::Scram
    });
    if auth.checks_passwords() && engine.users().count() == 0 {
        return Err(MillraceError::execution(format!(
            "password authentication is required on {addr}, but no user has a password: \
             set MILLRACE_PASSWORD to give the user \"{}\" one",
            crate::sql::users::DEFAULT_USER
        )));
    }
    if let Some(path) = &config.init_sql {
        run_init_sql(&engine, path).await?;
    }
    info!(%addr, data_dir = %config.data_dir.display(), tls = config.tls.is_some(), "Millrace is ready");
    println!("listening on {addr}");
    info!(?auth, "client authentication");
    crate::pgwire::serve(Arc::clone(&engine), listener, tls, auth, shutdown).await?;
    engine.flush_store()?;
    info!("state flushed; bye");
    Ok(())
}
