//! Crash durability of tables written with `INSERT`, proven by killing the
//! server: on each state store, writers insert while the server is killed
//! with SIGKILL at random moments and restarted. Every acknowledged
//! statement must be there after the restart, whole and once; a statement
//! in flight at the kill may be there (whole) or not; nothing else.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use rand::{Rng, SeedableRng};

/// Rows per `INSERT` statement: a statement lands whole or not at all.
const ROWS_PER_STATEMENT: i64 = 5;

/// What the writers know: statements acknowledged, and statements sent
/// whose answer was lost to the kill.
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeSet<i64>,
    in_flight: BTreeSet<i64>,
}

/// One writer: inserts statement after statement, numbered from `first`
/// with stride `stride`, until its connection dies.
async fn write_until_killed(
    client: tokio_postgres::Client,
    first: i64,
    stride: i64,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut statement = first;
    loop {
        let values: Vec<String> = (0..ROWS_PER_STATEMENT)
            .map(|r| format!("({statement}, {r}, 'payload {statement}/{r}')"))
            .collect();
        let sql = format!("INSERT INTO events VALUES {}", values.join(", "));
        ledger.lock().expect("ledger").in_flight.insert(statement);
        match client.batch_execute(&sql).await {
            Ok(()) => {
                let mut l = ledger.lock().expect("ledger");
                l.in_flight.remove(&statement);
                l.acknowledged.insert(statement);
            }
            Err(_) => return,
        }
        statement += stride;
    }
}

async fn kill_loop(store: &str, cycles: usize, seed: u64) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().to_path_buf();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut next_first = 0i64;
    for cycle in 0..cycles {
        let server = TestServer::start_on(&dir, &["--state-store", store])?;
        if cycle == 0 {
            server
                .connect()
                .await?
                .batch_execute(
                    "CREATE TABLE events (statement bigint, part bigint, payload text);
                     CREATE MATERIALIZED VIEW per_statement AS
                       SELECT statement, count(*) AS parts FROM events GROUP BY statement;",
                )
                .await?;
        }
        // Two writers on their own connections, with numbers of their own
        // this cycle so that nothing is ever inserted twice on purpose.
        let mut writers = Vec::new();
        for w in 0..2i64 {
            let client = server.connect().await?;
            writers.push(tokio::spawn(write_until_killed(
                client,
                next_first + w,
                2,
                ledger.clone(),
            )));
        }
        next_first += 1_000_000;
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        server.kill()?;
        for w in writers {
            w.await?;
        }

        // Restart and compare with the ledger.
        let server = TestServer::start_on(&dir, &[])?;
        let client = server.connect().await?;
        let mut parts: BTreeMap<i64, i64> = BTreeMap::new();
        for row in client
            .query("SELECT statement, part FROM events", &[])
            .await?
        {
            *parts.entry(row.get(0)).or_default() += 1;
            let part: i64 = row.get(1);
            assert!((0..ROWS_PER_STATEMENT).contains(&part));
        }
        // The view, rebuilt on start, must agree with the table.
        let view: Vec<(i64, i64)> = client
            .query("SELECT statement, parts FROM per_statement", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut l = ledger.lock().expect("ledger");
        for s in &l.acknowledged {
            assert_eq!(
                parts.get(s).copied(),
                Some(ROWS_PER_STATEMENT),
                "{store}, cycle {cycle}: acknowledged statement {s} lost or torn"
            );
        }
        for (s, n) in &parts {
            assert_eq!(
                *n, ROWS_PER_STATEMENT,
                "{store}, cycle {cycle}: statement {s} has {n} rows, not {ROWS_PER_STATEMENT}"
            );
            assert!(
                l.acknowledged.contains(s) || l.in_flight.contains(s),
                "{store}, cycle {cycle}: statement {s} was never sent"
            );
        }
        // A statement in flight at the kill either landed or did not; from
        // now on it counts as what it is.
        let landed: Vec<i64> = l
            .in_flight
            .iter()
            .copied()
            .filter(|s| parts.contains_key(s))
            .collect();
        l.acknowledged.extend(landed);
        l.in_flight.clear();
        assert_eq!(parts.len(), l.acknowledged.len(), "{store}, cycle {cycle}");
        assert_eq!(view.len(), parts.len(), "{store}, cycle {cycle}: the view");
        assert!(view.iter().all(|(s, n)| parts.get(s) == Some(n)));
        drop(l);
        server.kill()?;
    }
    let l = ledger.lock().expect("ledger");
    assert!(
        l.acknowledged.len() > cycles,
        "{store}: the writers barely wrote ({} statements)",
        l.acknowledged.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_inserts_survive_sigkill_on_redb() -> anyhow::Result<()> {
    kill_loop("redb", 10, 7).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_inserts_survive_sigkill_on_sled() -> anyhow::Result<()> {
    kill_loop("sled", 10, 11).await
}
