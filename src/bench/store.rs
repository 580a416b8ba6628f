//! The state-store benchmark behind the choice of the default store
//! (`docs/storage.md`): each implementation of [`StateStore`] is loaded
//! with live state, then takes checkpoint-like commits (a batch of changed
//! keys, durable when the commit returns), then is reopened and read whole,
//! as recovery does. Disk use is compared with the live state's size.

use std::path::Path;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::Result;
use crate::storage::{open_in, StateStore, StoreKind, WriteBatch};

/// What one store measured.
#[derive(Debug, Clone)]
pub struct StoreRun {
    /// The store.
    pub kind: StoreKind,
    /// Live keys after loading.
    pub keys: u64,
    /// Bytes of keys and values live.
    pub live_bytes: u64,
    /// Seconds to load the live state, in commits of `batch` keys.
    pub load_seconds: f64,
    /// Checkpoint commits made.
    pub commits: u64,
    /// Keys changed per commit.
    pub batch: usize,
    /// Commits per second.
    pub commits_per_second: f64,
    /// Median commit latency, milliseconds.
    pub commit_p50_ms: f64,
    /// 99th percentile commit latency, milliseconds.
    pub commit_p99_ms: f64,
    /// Seconds to reopen the store (with its checks) and read every key.
    pub recovery_seconds: f64,
    /// Bytes on disk after the run.
    pub disk_bytes: u64,
}

/// The size of everything under `path` (a file or a directory).
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| disk_usage(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

fn key(i: u64) -> Vec<u8> {
    // Row-format-like keys: 16 bytes, spread over the keyspace.
    let mut k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes().to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// Loads `keys` keys of `value_bytes` each into a new store of `kind` in
/// `dir`, makes `commits` commits that each overwrite `batch` random live
/// keys, then reopens the store and reads it whole.
pub fn run(
    kind: StoreKind,
    dir: &Path,
    keys: u64,
    value_bytes: usize,
    commits: u64,
    batch: usize,
) -> Result<StoreRun> {
    let _ = std::fs::remove_dir_all(dir);
    let mut rng = SmallRng::seed_from_u64(42);
    let store = open_in(dir, Some(kind))?;
    let value = |rng: &mut SmallRng| -> Vec<u8> {
        let mut v = vec![0u8; value_bytes];
        rng.fill(v.as_mut_slice());
        v
    };
    let load_start = Instant::now();
    let load_batch = 10_000u64;
    let mut i = 0;
    while i < keys {
        let mut b = WriteBatch::default();
        for j in i..(i + load_batch).min(keys) {
            b.put("state", key(j), value(&mut rng));
        }
        store.write(b)?;
        i += load_batch;
    }
    let load_seconds = load_start.elapsed().as_secs_f64();

    let mut latencies = Vec::with_capacity(commits as usize);
    let start = Instant::now();
    for _ in 0..commits {
        let mut b = WriteBatch::default();
        for _ in 0..batch {
            b.put("state", key(rng.random_range(0..keys)), value(&mut rng));
        }
        let t = Instant::now();
        store.write(b)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(store);
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        latencies
            .get(((latencies.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };

    let recovery_start = Instant::now();
    let store: std::sync::Arc<dyn StateStore> = open_in(dir, None)?;
    let read = store.scan("state")?;
    let recovery_seconds = recovery_start.elapsed().as_secs_f64();
    let live_bytes: u64 = read.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    let read_keys = read.len() as u64;
    drop(read);
    drop(store);
    let disk_bytes = disk_usage(dir);
    let _ = std::fs::remove_dir_all(dir);
    Ok(StoreRun {
        kind,
        keys: read_keys,
        live_bytes,
        load_seconds,
        commits,
        batch,
        commits_per_second: commits as f64 / seconds,
        commit_p50_ms: pick(0.5),
        commit_p99_ms: pick(0.99),
        recovery_seconds,
        disk_bytes,
    })
}

/// The runs as a Markdown table.
pub fn markdown(runs: &[StoreRun]) -> String {
    let mut out = String::from(
        "| store | live keys | live MiB | load s | commits | keys/commit | commits/s | commit p50 ms | commit p99 ms | reopen + read s | disk MiB | disk / live |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for r in runs {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} |\n",
            r.kind.name(),
            r.keys,
            mib(r.live_bytes),
            r.load_seconds,
            r.commits,
            r.batch,
            r.commits_per_second,
            r.commit_p50_ms,
            r.commit_p99_ms,
            r.recovery_seconds,
            mib(r.disk_bytes),
            r.disk_bytes as f64 / r.live_bytes.max(1) as f64,
        ));
    }
    out
}
