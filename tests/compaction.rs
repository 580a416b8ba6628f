//! A view's checkpoint runs are compacted beside the dataflow and the
//! result written by a later checkpoint: after many checkpoints the view
//! holds a few runs, among them a base a background compaction wrote, and
//! a restart restores the same view.

use std::sync::Arc;
use std::time::Duration;

use millrace::sql::checkpoint::{self as ck, FoldedRuns, BASE_PIECES_AT, RUN_SLOT};
use millrace::sql::{Engine, EngineOptions};
use millrace::storage::{open_in, StateStore};

async fn run(engine: &Engine, sql: &str) {
    let (_, err) = engine.execute_all(sql, &EngineOptions::default()).await;
    assert!(err.is_none(), "{sql}: {err:?}");
}

/// The runs of the one view whose runs namespace is not empty.
fn view_runs(store: &dyn StateStore) -> (u64, Vec<(u64, Vec<u8>)>) {
    (0..64)
        .map(|id| (id, ck::read_runs(store, id).expect("runs")))
        .find(|(_, runs)| !runs.is_empty())
        .expect("a view with runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_compacted_in_the_background_and_stay_few() {
    // Compact from 4 KiB of runs on (this test binary holds only this test).
    std::env::set_var("MILLRACE_CHECKPOINT_COMPACT_BYTES", "4096");
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn StateStore> = open_in(dir.path(), None).expect("store");
    // Only the statements checkpoint (each in its own commit).
    let hour = Some(Duration::from_secs(3600));
    let engine = Engine::open_with(store.clone(), hour)
        .await
        .expect("engine");
    run(&engine, "CREATE TABLE t (k bigint, v bigint)").await;
    run(
        &engine,
        "CREATE MATERIALIZED VIEW per_key AS SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k",
    )
    .await;
    let statements = 400;
    for i in 0..statements {
        let from = i * 100;
        run(
            &engine,
            &format!(
                "INSERT INTO t SELECT value % 60, value FROM generate_series({from}, {}) AS s(value)",
                from + 99
            ),
        )
        .await;
        if i % 20 == 0 {
            // Time for a compaction thread to end between two checkpoints.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (id, runs) = view_runs(store.as_ref());
    assert!(
        runs.len() < statements as usize / 4,
        "{} runs after {statements} checkpoints: not compacted",
        runs.len()
    );
    assert!(
        runs.iter().any(|(seq, _)| seq % RUN_SLOT >= BASE_PIECES_AT),
        "no base written by a background compaction among {:?}",
        runs.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let base_end = store
        .get(&ck::view_namespace(id), ck::BASE_END_KEY)
        .expect("get")
        .map(|b| ck::decode_sequence(&b).expect("base end"))
        .expect("a base end");
    let mut live = 0usize;
    FoldedRuns::of_runs(&runs, base_end)
        .expect("runs fold")
        .for_each(|k, v| {
            live += k.len() + v.len();
            Ok(())
        })
        .expect("runs read");
    let stored: usize = runs.iter().map(|(_, r)| r.len()).sum();
    assert!(
        stored <= 6 * live + 64 * 1024,
        "{stored} bytes of runs for {live} bytes of live state"
    );
    // Restored from those runs, the view goes on exactly.
    drop(engine);
    let engine = Engine::open_with(store.clone(), hour)
        .await
        .expect("reopen");
    run(&engine, "INSERT INTO t VALUES (0, 1)").await;
    let (results, err) = engine
        .execute_all(
            "SELECT count(*) FROM ( \
               (SELECT k, n, s FROM per_key EXCEPT ALL \
                SELECT k, count(*), sum(v) FROM t GROUP BY k) \
               UNION ALL \
               (SELECT k, count(*), sum(v) FROM t GROUP BY k EXCEPT ALL \
                SELECT k, n, s FROM per_key)) AS differ",
            &EngineOptions::default(),
        )
        .await;
    assert!(err.is_none(), "{err:?}");
    // The one count, as the result's debug text prints its column.
    let text: String = format!("{results:?}").split_whitespace().collect();
    assert!(
        text.contains("PrimitiveArray<Int64>[0,]"),
        "the restored view differs from the table: {text}"
    );
}
