//! Cost proportional to the change: one insert into a 1,000,000-row table
//! touches O(1) aggregate state and emits O(1) rows, shown by counting the
//! operators' work, not by timing.

use millrace::sql::{Engine, EngineOptions};
use millrace::storage::open_in;
use millrace::stream::operator::OperatorStats;

async fn run(engine: &Engine, sql: &str) {
    let (_, err) = engine.execute_all(sql, &EngineOptions::default()).await;
    assert!(err.is_none(), "{sql}: {err:?}");
}

fn find<'a>(stats: &'a [(String, OperatorStats)], prefix: &str) -> &'a OperatorStats {
    &stats
        .iter()
        .find(|(d, _)| d.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} operator in {stats:?}"))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_insert_into_a_million_rows_is_constant_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(open_in(dir.path(), None).expect("store"))
        .await
        .expect("engine");
    run(&engine, "CREATE TABLE big (k bigint, v bigint)").await;
    run(&engine, "CREATE TABLE dim (k bigint, label text)").await;
    run(
        &engine,
        "INSERT INTO big SELECT value % 1000, value FROM generate_series(1, 1000000) AS s(value)",
    )
    .await;
    run(
        &engine,
        "INSERT INTO dim SELECT value, 'l' || value FROM generate_series(0, 999) AS s(value)",
    )
    .await;
    run(
        &engine,
        "CREATE MATERIALIZED VIEW per_key AS SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM big GROUP BY k",
    )
    .await;
    run(
        &engine,
        "CREATE MATERIALIZED VIEW labelled AS SELECT d.label, count(*) AS n FROM big b JOIN dim d ON b.k = d.k GROUP BY d.label",
    )
    .await;

    let before_agg = engine.view_stats("per_key").await.expect("per_key");
    let before_join = engine.view_stats("labelled").await.expect("labelled");
    run(&engine, "INSERT INTO big VALUES (7, -1)").await;
    let after_agg = engine.view_stats("per_key").await.expect("per_key");
    let after_join = engine.view_stats("labelled").await.expect("labelled");

    let agg_before = find(&before_agg, "Aggregate");
    let agg_after = find(&after_agg, "Aggregate");
    assert_eq!(agg_after.rows_in - agg_before.rows_in, 1);
    assert_eq!(
        agg_after.state_touched - agg_before.state_touched,
        1,
        "one group touched"
    );
    assert_eq!(
        agg_after.rows_out - agg_before.rows_out,
        2,
        "retract old row, insert new row"
    );

    let join_before = find(&before_join, "Join");
    let join_after = find(&after_join, "Join");
    assert_eq!(join_after.rows_in - join_before.rows_in, 1);
    // One probe hit (the matching dim row) plus indexing the new row.
    assert!(join_after.state_touched - join_before.state_touched <= 2);
    assert_eq!(join_after.rows_out - join_before.rows_out, 1);
    let jagg_before = find(&before_join, "Aggregate");
    let jagg_after = find(&after_join, "Aggregate");
    assert_eq!(jagg_after.state_touched - jagg_before.state_touched, 1);
    assert_eq!(jagg_after.rows_out - jagg_before.rows_out, 2);

    // And the answer is right.
    let (outputs, err) = engine
        .execute_all(
            "SELECT n, lo FROM per_key WHERE k = 7",
            &EngineOptions::default(),
        )
        .await;
    assert!(err.is_none());
    let rows = match &outputs[0] {
        millrace::sql::QueryOutput::Rows { batches, .. } => {
            millrace::stream::pretty::to_pretty_lines(
                &millrace::stream::ChangeBatch::with_uniform_weight(batches[0].clone(), 1),
            )
            .expect("render")
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(rows, vec!["1001 -1 | +1"]);
}
