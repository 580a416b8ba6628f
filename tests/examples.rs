//! Every file under `sql-examples/` runs without error against a real
//! server, so the examples never go stale.

mod common;

use std::path::{Path, PathBuf};

fn sql_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                sql_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "sql") {
                out.push(p);
            }
        }
    }
}

#[tokio::test]
async fn every_example_runs() -> anyhow::Result<()> {
    let mut files = Vec::new();
    sql_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("sql-examples"),
        &mut files,
    );
    files.sort();
    assert!(!files.is_empty(), "no examples found");
    for file in files {
        let server = common::TestServer::start()?;
        let client = server.connect().await?;
        let sql = std::fs::read_to_string(&file)?;
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", file.display()))?;
    }
    Ok(())
}
