//! Test helpers: a real `millrace serve` process on a loopback ephemeral
//! port with its own temporary data directory, killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server process.
pub struct TestServer {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server on a fresh data directory.
    pub fn start() -> anyhow::Result<Self> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_path_buf();
        let mut s = Self::start_on(&dir, &[])?;
        s._temp = Some(temp);
        Ok(s)
    }

    /// Starts a server on `data_dir` with extra arguments.
    pub fn start_on(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// Starts a server on `data_dir` with extra arguments and environment.
    pub fn start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        // MILLRACE_TEST_WRAP runs the server under a debugger or profiler,
        // e.g. "gdb -batch -ex run -ex bt --args".
        let wrap = std::env::var("MILLRACE_TEST_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(env!("CARGO_BIN_EXE_millrace"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_millrace")),
        };
        let mut child = command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .env("MILLRACE_WORKERS", "2")
            // Views' checkpointed runs are compacted after 4 KiB instead
            // of 4 MiB, so that the restart and crash tests go through
            // compactions too.
            .env("MILLRACE_CHECKPOINT_COMPACT_BYTES", "4096")
            .arg("--log-level")
            .arg("warn")
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                let port = addr.rsplit(':').next().unwrap_or("0").parse()?;
                return Ok(Self {
                    child,
                    port,
                    data_dir: data_dir.to_path_buf(),
                    _temp: None,
                });
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("server exited before listening: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("server did not start within 60 s");
            }
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A libpq-style connection string.
    pub fn conn_str(&self) -> String {
        format!("host=127.0.0.1 port={} user=millrace dbname=dev", self.port)
    }

    /// Connects with tokio-postgres, driving the connection in the background.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.conn_str(), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id();
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Keeps the data directory after the server is dropped (for restarts).
    pub fn take_temp(&mut self) -> Option<tempfile::TempDir> {
        self._temp.take()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
pub mod kafka;
