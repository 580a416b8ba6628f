//! `COPY` over the wire, through tokio-postgres's copy API: out in text,
//! CSV (with a header) and binary, in from text and CSV, a failed copy
//! that commits nothing and names its line, and views that follow copied
//! rows through later updates and deletes.

mod common;

use bytes::Bytes;
use common::TestServer;
use futures::{SinkExt, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;

async fn copy_out(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<String> {
    let stream = client.copy_out(sql).await?;
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    Ok(String::from_utf8(chunks.concat())?)
}

async fn copy_in(
    client: &tokio_postgres::Client,
    sql: &str,
    data: &str,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in(sql).await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(data.to_string())).await?;
    sink.finish().await
}

#[tokio::test]
async fn copy_in_and_out_in_every_format() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer varchar(10), amount numeric(10,2),
                                  placed timestamp, paid boolean);
             CREATE MATERIALIZED VIEW totals AS
               SELECT customer, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer;",
        )
        .await?;

    let text = "1\tann\t10.50\t2026-01-02 03:04:05\tt\n2\tbob\t\\N\t2026-01-03 00:00:00\tf\n";
    assert_eq!(copy_in(&client, "COPY orders FROM STDIN", text).await?, 2);
    let csv = "id,customer,amount\n3,\"o,hara\",1.25\n4,ann,2.00\n";
    assert_eq!(
        copy_in(
            &client,
            "COPY orders (id, customer, amount) FROM STDIN WITH (FORMAT csv, HEADER)",
            csv
        )
        .await?,
        2
    );

    // Text out: tab-separated, \N for NULL, values written as SELECT writes them.
    let out = copy_out(&client, "COPY (SELECT * FROM orders ORDER BY id) TO STDOUT").await?;
    assert_eq!(
        out,
        "1\tann\t10.50\t2026-01-02 03:04:05\tt\n\
         2\tbob\t\\N\t2026-01-03 00:00:00\tf\n\
         3\to,hara\t1.25\t\\N\t\\N\n\
         4\tann\t2.00\t\\N\t\\N\n"
    );
    // CSV out of a materialized view, with a header.
    let out = copy_out(
        &client,
        "COPY (SELECT * FROM totals ORDER BY customer) TO STDOUT WITH (FORMAT csv, HEADER)",
    )
    .await?;
    assert_eq!(
        out,
        "customer,n,total\nann,2,12.50\nbob,1,\no,hara,1,1.25\n".replace("o,hara,", "\"o,hara\",")
    );
    let out = copy_out(&client, "COPY totals (customer) TO STDOUT").await?;
    assert_eq!(out.lines().count(), 3);

    // Binary out, read back with the client's own binary COPY decoder.
    let stream = client
        .copy_out("COPY (SELECT id, customer FROM orders ORDER BY id) TO STDOUT (FORMAT binary)")
        .await?;
    let rows: Vec<_> = BinaryCopyOutStream::new(stream, &[Type::INT8, Type::VARCHAR])
        .try_collect()
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert_eq!(names, vec!["ann", "bob", "o,hara", "ann"]);

    // Copied rows flow through updates and deletes like inserted ones.
    client
        .batch_execute(
            "UPDATE orders SET amount = 5 WHERE id = 2; DELETE FROM orders WHERE id = 4;",
        )
        .await?;
    let rows = client
        .query(
            "SELECT customer, n, total::text FROM totals ORDER BY customer",
            &[],
        )
        .await?;
    let got: Vec<(String, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ann".into(), 1, "10.50".into()),
            ("bob".into(), 1, "5.00".into()),
            ("o,hara".into(), 1, "1.25".into()),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_copy_commits_nothing_and_names_the_line() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    client
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, n integer NOT NULL, s varchar(3))")
        .await?;
    let cases = [
        ("1\t1\ta\n2\tx\tb\n", "22P02", "line 2"),
        ("1\t1\ta\n2\t2\n", "22P04", "line 2"),
        ("1\t1\ta\n1\t2\tb\n", "23505", "t_pkey"),
        ("1\t\\N\ta\n", "23502", "\"n\""),
        ("1\t1\tlong\n", "22001", "character varying(3)"),
    ];
    for (data, state, detail) in cases {
        let err = copy_in(&client, "COPY t FROM STDIN", data)
            .await
            .expect_err("bad data must fail");
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), state, "{data:?}: {db}");
        assert!(
            db.message().contains(detail) || db.detail().unwrap_or("").contains(detail),
            "{data:?}: {db}"
        );
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    assert_eq!(count, 0, "nothing committed from failed copies");

    // Copy into something that is not a table, or from a server file.
    client
        .batch_execute("CREATE VIEW v AS SELECT * FROM t")
        .await?;
    let err = client
        .batch_execute("COPY v FROM STDIN")
        .await
        .expect_err("view");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42809"));
    let err = client
        .batch_execute("COPY t TO '/tmp/t.csv'")
        .await
        .expect_err("file");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("0A000"));
    // The connection is still usable.
    assert_eq!(
        copy_in(&client, "COPY t FROM STDIN", "7\t7\tok\n").await?,
        1
    );
    Ok(())
}
