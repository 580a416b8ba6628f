//! The README's quickstart SQL runs through the real `psql` without an error,
//! so the first thing a new user types keeps working.

mod common;

use std::process::Command;

#[test]
fn readme_quickstart_runs_in_psql() -> anyhow::Result<()> {
    if Command::new("psql").arg("--version").output().is_err() {
        anyhow::bail!("psql is not installed; scripts/test.sh installs postgresql-client");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))?;
    let start = readme
        .find("```sql\n")
        .ok_or_else(|| anyhow::anyhow!("README has no sql block"))?
        + "```sql\n".len();
    let end = start
        + readme[start..]
            .find("```")
            .ok_or_else(|| anyhow::anyhow!("unterminated sql block"))?;
    let sql = &readme[start..end];
    let server = common::TestServer::start()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("quickstart.sql");
    std::fs::write(&file, sql)?;
    let out = Command::new("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "millrace",
            "-d",
            "dev",
        ])
        .arg("-p")
        .arg(server.port.to_string())
        .arg("-f")
        .arg(&file)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psql failed:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    // The view followed the update and the delete: FR has orders 1 and 3 (10 + 40).
    assert!(stdout.contains("FR"), "{stdout}");
    assert!(stdout.contains("50.00"), "{stdout}");
    Ok(())
}
