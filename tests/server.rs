//! End-to-end tests of the server process: extended protocol with
//! parameters and binary results, restart persistence, the data-directory
//! lock, init SQL, concurrent sessions, consistent reads, and malformed
//! wire input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::TestServer;

#[tokio::test]
async fn extended_protocol_with_parameters_and_binary_results() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE t (b boolean, s smallint, i integer, l bigint, r real, d double precision,
                             n numeric(10,2), v varchar, dt date, ts timestamp, tz timestamptz, by bytea);
             CREATE MATERIALIZED VIEW mv AS SELECT i, count(*) AS c, sum(l) AS total FROM t GROUP BY i;",
        )
        .await?;
    let insert = client
        .prepare("INSERT INTO t (b, s, i, l, r, d, v, by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .await?;
    for k in 0..3i32 {
        let n = client
            .execute(
                &insert,
                &[
                    &(k % 2 == 0),
                    &(k as i16),
                    &(k % 2),
                    &(k as i64 * 10),
                    &(k as f32 + 0.5),
                    &(k as f64 * 1.25),
                    &format!("row{k}"),
                    &vec![k as u8, 255u8],
                ],
            )
            .await?;
        assert_eq!(n, 1);
    }
    // tokio-postgres asks for binary results: every type must decode.
    let rows = client
        .query(
            "SELECT b, s, i, l, r, d, v, by FROM t WHERE i = $1 ORDER BY l",
            &[&0i32],
        )
        .await?;
    assert_eq!(rows.len(), 2);
    let b: bool = rows[1].get(0);
    let s: i16 = rows[1].get(1);
    let l: i64 = rows[1].get(3);
    let r: f32 = rows[1].get(4);
    let d: f64 = rows[1].get(5);
    let v: String = rows[1].get(6);
    let by: Vec<u8> = rows[1].get(7);
    assert_eq!(
        (b, s, l, r, d, v.as_str(), by),
        (true, 2, 20, 2.5, 2.5, "row2", vec![2u8, 255])
    );

    let agg = client
        .query("SELECT i, c, total FROM mv ORDER BY i", &[])
        .await?;
    let got: Vec<(i32, i64, i64)> = agg.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got, vec![(0, 2, 20), (1, 1, 10)]);

    let upd = client
        .execute("UPDATE t SET l = l + $1 WHERE i = $2", &[&5i64, &1i32])
        .await?;
    assert_eq!(upd, 1);
    let del = client
        .execute("DELETE FROM t WHERE s = $1", &[&0i16])
        .await?;
    assert_eq!(del, 1);
    let agg = client
        .query("SELECT i, c, total FROM mv ORDER BY i", &[])
        .await?;
    let got: Vec<(i32, i64, i64)> = agg.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got, vec![(0, 1, 20), (1, 1, 15)]);

    // Temporal and numeric types in binary.
    client
        .batch_execute(
            "INSERT INTO t (i, n, dt, ts, tz) VALUES (7, 12.34, DATE '2024-02-29', TIMESTAMP '2024-01-02 03:04:05.5', TIMESTAMPTZ '2024-01-02 03:04:05+00')",
        )
        .await?;
    let row = client
        .query_one("SELECT n, dt, ts, tz, v FROM t WHERE i = $1", &[&7i32])
        .await?;
    let n: rust_decimal::Decimal = row.get(0);
    let dt: chrono::NaiveDate = row.get(1);
    let ts: chrono::NaiveDateTime = row.get(2);
    let tz: chrono::DateTime<chrono::Utc> = row.get(3);
    let v: Option<String> = row.get(4);
    assert_eq!(n.to_string(), "12.34");
    assert_eq!(dt.to_string(), "2024-02-29");
    assert_eq!(ts.to_string(), "2024-01-02 03:04:05.500");
    assert_eq!(tz.to_rfc3339(), "2024-01-02T03:04:05+00:00");
    assert_eq!(v, None);
    // jsonb in binary: the version byte and the text.
    client
        .batch_execute("CREATE TABLE docs (j jsonb); INSERT INTO docs VALUES ('{\"a\": [1, 2]}')")
        .await?;
    let row = client.query_one("SELECT j FROM docs", &[]).await?;
    assert_eq!(
        row.columns()[0].type_(),
        &tokio_postgres::types::Type::JSONB
    );
    let j: serde_json::Value = row.get(0);
    assert_eq!(j, serde_json::json!({"a": [1, 2]}));
    // The client refuses to send text where the server said it wants an
    // integer: the parameter type reached it.
    let err = client
        .query("SELECT count(*) FROM t WHERE i = $1", &[&"seven"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("error"), "{err}");
    let still: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    assert_eq!(still, 3);

    // Errors carry SQLSTATEs over the extended protocol too.
    let err = client.prepare("SELECT * FROM missing").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    let err = client.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));
    Ok(())
}

#[tokio::test]
async fn restart_restores_tables_and_views() -> anyhow::Result<()> {
    let mut server = TestServer::start()?;
    let temp = server.take_temp();
    let dir = server.data_dir().to_path_buf();
    {
        let client = server.connect().await?;
        client
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY, g text, v bigint);
                 CREATE TABLE u (g text, label text);
                 INSERT INTO t VALUES (1, 'a', 10), (2, 'a', 20), (3, 'b', 5);
                 INSERT INTO u VALUES ('a', 'A'), ('b', 'B');
                 CREATE MATERIALIZED VIEW s AS SELECT g, sum(v) AS total, max(v) AS biggest FROM t GROUP BY g;
                 CREATE MATERIALIZED VIEW j AS SELECT u.label, s.total FROM s JOIN u ON s.g = u.g;
                 CREATE VIEW plain AS SELECT label FROM j WHERE total > 10;
                 DELETE FROM t WHERE id = 2;
                 FLUSH;",
            )
            .await?;
    }
    let status = server.stop()?;
    assert!(status.success(), "clean shutdown on SIGTERM: {status}");

    let server = TestServer::start_on(&dir, &[])?;
    let client = server.connect().await?;
    let rows = client
        .query("SELECT label, total FROM j ORDER BY label", &[])
        .await?;
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("A".into(), 10), ("B".into(), 5)]);
    // The restored views keep being maintained.
    client
        .batch_execute("INSERT INTO t VALUES (4, 'b', 100)")
        .await?;
    let top: i64 = client
        .query_one("SELECT biggest FROM s WHERE g = 'b'", &[])
        .await?
        .get(0);
    assert_eq!(top, 100);
    let rows = client.query("SELECT label FROM plain", &[]).await?;
    assert_eq!(rows.len(), 1);
    // The primary key survives too.
    let err = client
        .batch_execute("INSERT INTO t VALUES (1, 'x', 0)")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"));
    drop(server);
    drop(temp);
    Ok(())
}

/// A view with a temporal filter is checkpointed: after a SIGKILL it is
/// restored, not rebuilt, and at once shows what the clock did while the
/// server was down (a row expired, a row became valid); inserts, updates
/// and deletes then go on through the restored filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporal_view_is_restored_and_catches_up_with_the_clock() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().to_path_buf();
    let server = TestServer::start_on(&dir, &["--checkpoint-interval-ms", "100"])?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let live = |client: tokio_postgres::Client| async move {
        let rows = client.query("SELECT id FROM live ORDER BY id", &[]).await?;
        anyhow::Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
    };
    {
        let client = server.connect().await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE ev (id BIGINT PRIMARY KEY, valid_from TIMESTAMPTZ, valid_until TIMESTAMPTZ);
                 CREATE MATERIALIZED VIEW live AS
                   SELECT id FROM ev WHERE now() >= valid_from AND now() < valid_until;
                 INSERT INTO ev VALUES
                   (1, to_timestamp({past}), to_timestamp({soon})),
                   (2, to_timestamp({soon}), to_timestamp({later})),
                   (3, to_timestamp({past}), to_timestamp({later})),
                   (4, to_timestamp({later}), to_timestamp({much_later}));",
                past = now - 3600,
                soon = now + 3,
                later = now + 3600,
                much_later = now + 7200,
            ))
            .await?;
        assert_eq!(live(client).await?, vec![1, 3]);
    }
    server.kill()?;
    // Row 1 expires and row 2 becomes valid while the server is down.
    let wake = std::time::UNIX_EPOCH + Duration::from_secs((now + 4) as u64);
    if let Ok(wait) = wake.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let server = TestServer::start_on(&dir, &["--checkpoint-interval-ms", "100"])?;
    let client = server.connect().await?;
    let checkpointed: i64 = client
        .query_one("SELECT views FROM millrace_catalog.checkpoints", &[])
        .await?
        .get(0);
    assert_eq!(checkpointed, 1, "the temporal view is checkpointed");
    assert_eq!(live(server.connect().await?).await?, vec![2, 3]);
    client
        .batch_execute(&format!(
            "DELETE FROM ev WHERE id = 3;
             UPDATE ev SET valid_from = to_timestamp({past}) WHERE id = 4;
             INSERT INTO ev VALUES (5, to_timestamp({past}), to_timestamp({later}));",
            past = now - 3600,
            later = now + 3600,
        ))
        .await?;
    assert_eq!(live(server.connect().await?).await?, vec![2, 4, 5]);
    drop(server);
    drop(temp);
    Ok(())
}

#[test]
fn second_server_on_same_data_dir_is_refused() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let second = TestServer::start_on(server.data_dir(), &[]);
    let err = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("exited before listening"),
        "second server must refuse: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn init_sql_runs_once_and_restart_keeps_objects() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let sql_path = temp.path().join("init.sql");
    std::fs::write(
        &sql_path,
        "CREATE TABLE IF NOT EXISTS k (x int);\nCREATE TABLE k2 (x int);\nCREATE MATERIALIZED VIEW kc AS SELECT count(*) AS n FROM k;\n",
    )?;
    let data = temp.path().join("data");
    let init = sql_path.to_string_lossy().to_string();
    let server = TestServer::start_on(&data, &["--init-sql", &init])?;
    {
        let client = server.connect().await?;
        client
            .batch_execute("INSERT INTO k VALUES (1), (2)")
            .await?;
    }
    server.stop()?;
    let server = TestServer::start_on(&data, &["--init-sql", &init])?;
    let client = server.connect().await?;
    let n: i64 = client.query_one("SELECT n FROM kc", &[]).await?.get(0);
    assert_eq!(n, 2);
    Ok(())
}

#[tokio::test]
async fn concurrent_sessions_and_consistent_reads() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let setup = server.connect().await?;
    setup
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, bucket int, v bigint);
             INSERT INTO acct SELECT value, value % 4, 100 FROM generate_series(1, 200) AS s(value);
             CREATE MATERIALIZED VIEW per_bucket AS SELECT bucket, sum(v) AS total FROM acct GROUP BY bucket;",
        )
        .await?;
    // Writers move value between rows; the grand total never changes, so a
    // reader that ever sees a different total saw half of a change.
    let mut writers = Vec::new();
    for w in 0..3 {
        let client = server.connect().await?;
        writers.push(tokio::spawn(async move {
            for k in 0..30i32 {
                let a = (w * 37 + k * 7) % 200 + 1;
                let b = (a + 11) % 200 + 1;
                client
                    .batch_execute(&format!(
                        "UPDATE acct SET v = v + CASE WHEN id = {a} THEN -3 ELSE 3 END WHERE id IN ({a}, {b})"
                    ))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    let reader = server.connect().await?;
    for _ in 0..40 {
        let row = reader
            .query_one("SELECT (SELECT sum(total) FROM per_bucket)::bigint, (SELECT sum(v) FROM acct)::bigint", &[])
            .await?;
        let (view_total, table_total): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(view_total, 20_000);
        assert_eq!(table_total, 20_000);
    }
    for w in writers {
        w.await??;
    }
    Ok(())
}

#[tokio::test]
async fn reads_during_a_stream_see_whole_epochs_that_only_grow() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    // Two views over one stream: every epoch adds to both at once.
    client
        .batch_execute(
            "CREATE SOURCE ticks (n bigint) WITH (connector = 'datagen',
               datagen.rows.per.second = '20000', datagen.rows.limit = '60000',
               fields.n.kind = 'sequence');
             CREATE MATERIALIZED VIEW tick_count AS SELECT count(*) AS c, sum(n) AS s FROM ticks;
             CREATE MATERIALIZED VIEW tick_max AS SELECT max(n) AS m FROM ticks;",
        )
        .await?;
    let mut last = 0i64;
    let mut reads = 0;
    while last < 60_000 && reads < 10_000 {
        let row = client
            .query_one(
                "SELECT coalesce((SELECT c FROM tick_count), 0), coalesce((SELECT s FROM tick_count)::bigint, 0)",
                &[],
            )
            .await?;
        let (count, sum): (i64, i64) = (row.get(0), row.get(1));
        // A sequence from 1: a whole prefix of it is visible, never part
        // of an epoch, and never less than before.
        assert_eq!(sum, count * (count + 1) / 2, "half an epoch visible");
        assert!(count >= last, "a read went back from {last} to {count}");
        last = count;
        reads += 1;
    }
    client.batch_execute("FLUSH").await?;
    let row = client
        .query_one(
            "SELECT (SELECT c FROM tick_count), (SELECT m FROM tick_max)",
            &[],
        )
        .await?;
    let (count, max): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((count, max), (60_000, 60_000));
    Ok(())
}

#[tokio::test]
async fn malformed_wire_input_closes_only_that_connection() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let healthy = server.connect().await?;
    healthy.batch_execute("CREATE TABLE ok (x int)").await?;

    let garbage: Vec<Vec<u8>> = vec![
        // A startup packet claiming a huge length.
        vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        // A truncated startup packet.
        vec![0, 0, 0, 40, 0, 3, 0],
        // Random bytes.
        (0..64u8).map(|i| i.wrapping_mul(37)).collect(),
    ];
    for bytes in garbage {
        let mut sock = TcpStream::connect(("127.0.0.1", server.port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        sock.write_all(&bytes)?;
        let _ = sock.shutdown(std::net::Shutdown::Write);
        let mut buf = Vec::new();
        // The server answers with an error or just closes; it must not hang.
        let _ = sock.read_to_end(&mut buf);
    }
    // A message with a bad type byte after a valid startup.
    {
        let raw = server.connect().await?;
        raw.batch_execute("SELECT 1").await?;
    }
    healthy.batch_execute("INSERT INTO ok VALUES (1)").await?;
    let n: i64 = healthy
        .query_one("SELECT count(*) FROM ok", &[])
        .await?
        .get(0);
    assert_eq!(n, 1);
    Ok(())
}

/// A portal with a row limit inside a transaction: each `Execute(2)` is
/// followed by a `Sync`, and the next one resumes where the last stopped.
#[tokio::test]
async fn portals_with_row_limits_survive_sync_in_a_transaction() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let mut client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE nums (n bigint PRIMARY KEY);
             INSERT INTO nums VALUES (1), (2), (3), (4), (5);",
        )
        .await?;
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare("SELECT n FROM nums WHERE n > $1 ORDER BY n")
        .await?;
    let portal = tx.bind(&stmt, &[&0i64]).await?;
    let mut seen = Vec::new();
    for expected in [2, 2, 1, 0] {
        let rows = tx.query_portal(&portal, 2).await?;
        assert_eq!(rows.len(), expected, "rows after {seen:?}");
        seen.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    tx.commit().await?;
    Ok(())
}

/// A subscription is listed in `millrace_catalog.subscriptions` while its
/// client reads it, with the epochs waiting unread, and is gone once the
/// client disconnects: the server keeps nothing for a client that left.
#[tokio::test]
async fn subscriptions_end_when_their_client_disconnects() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let observer = server.connect().await?;
    observer
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, amount bigint);
             INSERT INTO orders VALUES (1, 10);",
        )
        .await?;
    let listed = "SELECT relation, pending_epochs FROM millrace_catalog.subscriptions";

    let subscriber = server.connect().await?;
    subscriber
        .batch_execute("BEGIN; DECLARE c CURSOR FOR SUBSCRIBE TO orders")
        .await?;
    let first = subscriber.query("FETCH 1 c", &[]).await?;
    anyhow::ensure!(first.len() == 1, "the snapshot row: {first:?}");
    let rows = observer.query(listed, &[]).await?;
    anyhow::ensure!(rows.len() == 1, "one open subscription: {rows:?}");
    anyhow::ensure!(rows[0].get::<_, String>(0) == "orders");
    anyhow::ensure!(rows[0].get::<_, i64>(1) == 0, "nothing unread yet");

    observer
        .batch_execute("INSERT INTO orders VALUES (2, 20); INSERT INTO orders VALUES (3, 30);")
        .await?;
    let rows = observer.query(listed, &[]).await?;
    anyhow::ensure!(
        rows.len() == 1 && rows[0].get::<_, i64>(1) == 2,
        "two commits wait unread: {rows:?}"
    );

    drop(subscriber);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let rows = observer.query(listed, &[]).await?;
        if rows.is_empty() {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the subscription outlived its client: {rows:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The table's later commits go on without it.
    observer
        .batch_execute("INSERT INTO orders VALUES (4, 40)")
        .await?;
    let count: i64 = observer
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    anyhow::ensure!(count == 4);
    Ok(())
}

/// `FETCH` prepared through the extended protocol is described with its
/// cursor's columns and returns them in the format asked for (binary, as
/// tokio-postgres asks); PostgreSQL's `FETCH n c` and `FETCH c` (no `FROM`)
/// are accepted.
#[tokio::test]
async fn fetch_through_the_extended_protocol_returns_typed_rows() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE nums (n bigint PRIMARY KEY, label varchar);
             INSERT INTO nums VALUES (1, 'one'), (2, 'two'), (3, 'three'), (4, 'four');
             BEGIN;
             DECLARE c CURSOR FOR SELECT n, label FROM nums ORDER BY n;",
        )
        .await?;
    let two = client.query("FETCH 2 c", &[]).await?;
    let got: Vec<(i64, String)> = two.iter().map(|r| (r.get(0), r.get(1))).collect();
    anyhow::ensure!(
        got == vec![(1, "one".to_string()), (2, "two".to_string())],
        "{got:?}"
    );
    let next = client.query("FETCH c", &[]).await?;
    anyhow::ensure!(next.len() == 1 && next[0].get::<_, i64>(0) == 3);
    let rest = client.query("FETCH ALL FROM c", &[]).await?;
    anyhow::ensure!(rest.len() == 1 && rest[0].get::<_, i64>(0) == 4);
    let none = client.query("FETCH ALL FROM c", &[]).await?;
    anyhow::ensure!(none.is_empty());
    let missing = client.query("FETCH 1 nope", &[]).await;
    anyhow::ensure!(
        missing
            .as_ref()
            .err()
            .and_then(|e| e.code())
            .is_some_and(|c| c.code() == "34000"),
        "{missing:?}"
    );
    client.batch_execute("ROLLBACK").await?;
    Ok(())
}

#[tokio::test]
async fn watermarks_survive_a_restart_and_bounded_streams_close_their_windows() -> anyhow::Result<()>
{
    let mut server = TestServer::start()?;
    let temp = server.take_temp();
    let dir = server.data_dir().to_path_buf();
    {
        let client = server.connect().await?;
        client
            .batch_execute(
                "CREATE TABLE ev (id int, ts timestamp, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
                 CREATE MATERIALIZED VIEW closed AS
                   SELECT window_start, count(*) AS n FROM TUMBLE(ev, ts, INTERVAL '10' SECOND)
                   GROUP BY window_start EMIT ON WINDOW CLOSE;
                 INSERT INTO ev VALUES (1, '2026-01-01 00:00:01'), (2, '2026-01-01 00:00:17');
                 INSERT INTO ev VALUES (3, '2026-01-01 00:00:02');
                 FLUSH;",
            )
            .await?;
    }
    assert!(server.stop()?.success());

    let server = TestServer::start_on(&dir, &[])?;
    let client = server.connect().await?;
    let windows = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, i64)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let closed = "SELECT window_start::text, n FROM closed ORDER BY 1";
    // The late row stayed out; the closed window is the same after restart.
    assert_eq!(
        windows(client.query(closed, &[]).await?),
        vec![("2026-01-01 00:00:00".to_string(), 1)]
    );
    // The table's watermark came back with its rows: a late row is still
    // late, and deleting behind the watermark is still refused.
    client
        .batch_execute("INSERT INTO ev VALUES (4, '2026-01-01 00:00:03')")
        .await?;
    let n: i64 = client
        .query_one("SELECT count(*) FROM ev", &[])
        .await?
        .get(0);
    assert_eq!(n, 2);
    let err = client
        .batch_execute("DELETE FROM ev WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22000"));
    client
        .batch_execute("INSERT INTO ev VALUES (5, '2026-01-01 00:00:40')")
        .await?;
    assert_eq!(
        windows(client.query(closed, &[]).await?),
        vec![
            ("2026-01-01 00:00:00".to_string(), 1),
            ("2026-01-01 00:00:10".to_string(), 1)
        ]
    );

    // A bounded source: when its stream ends, its watermark goes to the
    // end and every window closes, so the EMIT ON WINDOW CLOSE view ends
    // equal to the continuously updated one.
    client
        .batch_execute(
            "CREATE SOURCE bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '50000',
                     nexmark.min.event.gap.in.ns = '0');
             CREATE MATERIALIZED VIEW live AS SELECT auction, window_start, count(*) AS n
               FROM TUMBLE(bid, date_time, INTERVAL '2' SECOND) GROUP BY auction, window_start;
             CREATE MATERIALIZED VIEW final AS SELECT auction, window_start, count(*) AS n
               FROM TUMBLE(bid, date_time, INTERVAL '2' SECOND) GROUP BY auction, window_start
               EMIT ON WINDOW CLOSE;",
        )
        .await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        client.batch_execute("FLUSH").await?;
        let ended: i64 = client
            .query_one(
                "SELECT count(*) FROM millrace_catalog.watermarks WHERE relation = 'bid' AND watermark = 'end'",
                &[],
            )
            .await?
            .get(0);
        if ended == 2 {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "bid never ended");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let diff: i64 = client
        .query_one(
            "SELECT count(*) FROM ((SELECT * FROM live EXCEPT SELECT * FROM final)
               UNION ALL (SELECT * FROM final EXCEPT SELECT * FROM live)) d",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(diff, 0);
    let (rows, late): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT (SELECT sum(n) FROM final), (SELECT sum(late_rows) FROM millrace_catalog.watermarks WHERE relation = 'bid')",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    assert!(rows > 40_000, "{rows} bids counted");
    assert_eq!(late, 0);
    drop(server);
    drop(temp);
    Ok(())
}
