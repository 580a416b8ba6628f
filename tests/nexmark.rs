//! Every Nexmark benchmark query, run through the engine from the built-in
//! generator at a small event count, must equal DataFusion's batch
//! evaluation of the same query over the same events.

use millrace::bench::{run_single, Feed, QUERIES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nexmark_query_matches_the_batch_oracle() -> anyhow::Result<()> {
    for (name, _) in QUERIES {
        let result = run_single(name, 20_000, true, &Feed::Generator).await?;
        assert!(result.rows_in > 0, "{name} read nothing");
        assert!(result.view_rows > 0, "{name} produced nothing");
        assert!(result.verified, "{name} differs from the batch oracle");
    }
    Ok(())
}
