//! Redis for the distributed mode: its version and the raw `SET key val NX PX`
//! ceiling (the shape of a lock acquire), one command per round trip or pipelined.

use crate::pg::{Ceiling, drive};
use anyhow::Context;
use redis::aio::MultiplexedConnection;
use std::time::Duration;

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url).context("parsing the Redis URL")?;
    match tokio::time::timeout(Duration::from_secs(15), client.get_multiplexed_async_connection()).await {
        Ok(conn) => conn.context("connecting to Redis"),
        Err(_) => anyhow::bail!("connecting to Redis timed out after 15 s"),
    }
}

/// `redis_version` from `INFO server`.
pub async fn version(url: &str) -> anyhow::Result<String> {
    let mut conn = connect(url).await?;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
        .context("INFO server names no redis_version")
}

/// `SET <unique key> 1 NX PX 2000` on `conns` connections (each its own
/// socket, so nothing is multiplexed between them), `pipeline` commands per
/// round trip. Keys are unique per run, expire after 2 s, and are removed at the end.
pub async fn set_nx_ceiling(url: &str, conns: usize, pipeline: usize, duration: Duration) -> anyhow::Result<Ceiling> {
    let prefix = format!("zg_bench:{}", crate::pg::random_hex());
    let mut states = Vec::new();
    for c in 0..conns {
        states.push((connect(url).await?, format!("{prefix}:{c}")));
    }
    let pipeline = pipeline.max(1);
    let result = drive(states, pipeline as u64, duration, move |(mut conn, prefix), n| async move {
        let r = if pipeline == 1 {
            redis::cmd("SET")
                .arg(format!("{prefix}:{n}"))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(2000)
                .query_async::<redis::Value>(&mut conn)
                .await
                .map(|_| ())
        } else {
            let mut pipe = redis::pipe();
            for i in 0..pipeline {
                pipe.cmd("SET").arg(format!("{prefix}:{n}:{i}")).arg(1).arg("NX").arg("PX").arg(2000);
            }
            pipe.query_async::<Vec<redis::Value>>(&mut conn).await.map(|_| ())
        };
        ((conn, prefix), r.map_err(anyhow::Error::from))
    })
    .await?;
    // Left to expire, the keys keep Redis busy for seconds into the next phase.
    remove(url, &prefix).await?;
    Ok(result)
}

/// Unlinks every key under `prefix` (SCAN, so Redis stays responsive).
async fn remove(url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut conn = connect(url).await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK").arg(&keys).query_async::<redis::Value>(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
