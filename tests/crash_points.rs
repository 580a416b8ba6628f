//! Recovery from crashes at chosen points of a checkpoint: before its
//! write, inside the store's commit, right after it, and in the middle of
//! restoring the views on start. The server (built with the `crash-points`
//! feature) aborts itself there (`MILLRACE_CRASH_AT`); a restart must then
//! go on to views that count every generated row exactly once. Also a
//! checkpoint that fails while being built (`MILLRACE_FAIL_AT`).

#![cfg(feature = "crash-points")]

mod common;

use std::time::{Duration, Instant};

use common::TestServer;

/// Rows the generator produces.
const ROWS: i64 = 60_000;

const SETUP: &str = "
    CREATE SOURCE gen (id BIGINT) WITH (
      connector = 'datagen', datagen.rows.per.second = '20000',
      datagen.rows.limit = '60000', fields.id.kind = 'sequence', fields.id.start = '1');
    CREATE MATERIALIZED VIEW per_key AS
      SELECT id % 5 AS k, count(*) AS n, sum(id) AS s FROM gen GROUP BY id % 5;
    CREATE MATERIALIZED VIEW total AS SELECT count(*) AS n, max(id) AS hi FROM gen;";

const ARGS: [&str; 2] = ["--checkpoint-interval-ms", "50"];

/// `per_key` over ids `1..=ROWS`, as `k|n|s` lines.
fn expected() -> Vec<String> {
    (0..5)
        .map(|k| {
            let ids = (1..=ROWS).filter(|id| id % 5 == k);
            let (n, s) = ids.fold((0i64, 0i64), |(n, s), id| (n + 1, s + id));
            format!("{k}|{n}|{s}")
        })
        .collect()
}

/// Waits for the generator to finish on a server started normally, then
/// checks both views.
async fn assert_exact(server: &TestServer) -> anyhow::Result<()> {
    let client = server.connect().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let total: i64 = client
            .query_opt("SELECT n FROM total", &[])
            .await?
            .map(|r| r.get(0))
            .unwrap_or(0);
        if total >= ROWS || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other view's reader may be a moment behind.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got;
    loop {
        got = client
            .query(
                "SELECT k || '|' || n || '|' || s FROM per_key ORDER BY k",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>();
        if got == expected() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, expected());
    let row = client.query_one("SELECT n, hi FROM total", &[]).await?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (ROWS, ROWS));
    // Each reader went on from its view's checkpoint: it generated fewer
    // rows than the whole stream (a view rebuilt from the start would have
    // all of them generated again).
    for message in client.simple_query("SHOW SOURCES").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = message {
            let rows: i64 = r.get("rows").unwrap_or("0").parse()?;
            assert!(
                rows < ROWS,
                "the reader for {:?} produced the whole stream again",
                r.get("view")
            );
        }
    }
    Ok(())
}

/// Starts a server that aborts at `point` (its `nth` time), lets it run
/// into it, then restarts normally and checks the views.
async fn crash_at(point: &str, nth: u32) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let crash = format!("{point}:{nth}");
    let mut server =
        TestServer::start_with_env(temp.path(), &ARGS, &[("MILLRACE_CRASH_AT", &crash)])?;
    server.connect().await?.batch_execute(SETUP).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.exited() {
            break status;
        }
        anyhow::ensure!(Instant::now() < deadline, "{point} was never reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "{point}: the server should have aborted");
    drop(server);
    let server = TestServer::start_on(temp.path(), &ARGS)?;
    assert_exact(&server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_a_checkpoint_is_written_recovers_exactly() -> anyhow::Result<()> {
    crash_at("checkpoint-before", 5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_the_commit_of_a_checkpoint_recovers_exactly() -> anyhow::Result<()> {
    crash_at("store-commit", 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_checkpoint_recovers_exactly() -> anyhow::Result<()> {
    crash_at("checkpoint-after", 5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_restoring_recovers_exactly() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let server = TestServer::start_on(temp.path(), &ARGS)?;
    server.connect().await?.batch_execute(SETUP).await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill()?;
    // The restart aborts after restoring the first view.
    let failed =
        TestServer::start_with_env(temp.path(), &ARGS, &[("MILLRACE_CRASH_AT", "restore")]);
    assert!(
        failed.is_err(),
        "the restart should have aborted while restoring"
    );
    let server = TestServer::start_on(temp.path(), &ARGS)?;
    assert_exact(&server).await
}

/// A checkpoint that fails while it is built (after the operators handed
/// over their changes) stops checkpoints, the views go on, and a restart
/// goes on from the last whole checkpoint, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_built_stops_checkpoints_and_recovers_exactly(
) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let server = TestServer::start_with_env(
        temp.path(),
        &ARGS,
        &[("MILLRACE_FAIL_AT", "checkpoint-build:5")],
    )?;
    let client = server.connect().await?;
    client.batch_execute(SETUP).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed: bool = client
            .query_one("SELECT failed FROM millrace_catalog.checkpoints", &[])
            .await?
            .get(0);
        if failed {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "checkpoints never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The views go on without checkpoints.
    let count = |client: tokio_postgres::Client| async move {
        let n: i64 = client.query_one("SELECT n FROM total", &[]).await?.get(0);
        anyhow::Ok((client, n))
    };
    let (client, before) = count(client).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_client, after) = count(client).await?;
    assert!(after > before, "the views stopped: {before} then {after}");
    server.kill()?;
    let server = TestServer::start_on(temp.path(), &ARGS)?;
    assert_exact(&server).await
}
