//! RabbitMQ for the distributed mode: its version and the raw ceilings of
//! what zapgate does with it — publish with publisher confirms to a quorum
//! queue, and consume from it with manual acks (`multiple`) — measured with
//! lapin directly, on a queue of the run's own that is deleted at the end.

use crate::pg::{Ceiling, drive, random_hex};
use anyhow::Context;
use futures::StreamExt;
use futures::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::time::{Duration, Instant};

/// About the size of what the relay publishes (`{"id","attempt"}`).
const PAYLOAD: &[u8] = br#"{"id":"msg_01a2488a26fe7199b2dafdf8bb05b457","attempt":0}"#;

async fn connect(url: &str) -> anyhow::Result<Connection> {
    match tokio::time::timeout(Duration::from_secs(15), Connection::connect(url, ConnectionProperties::default())).await
    {
        Ok(conn) => conn.context("connecting to RabbitMQ"),
        Err(_) => anyhow::bail!("connecting to RabbitMQ timed out after 15 s"),
    }
}

/// The broker's version, from `rabbitmqctl version` (lapin does not expose
/// the server properties of the handshake); checks the URL answers first.
pub async fn version(url: &str) -> anyhow::Result<String> {
    let conn = connect(url).await?;
    let _ = conn.close(200, "reachable".into()).await;
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new("timeout").args(["-k", "5", "20", "rabbitmqctl", "-q", "version"]).output()
    })
    .await?;
    Ok(match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "unknown (rabbitmqctl could not tell)".into(),
    })
}

/// A durable quorum queue, as zapgate declares its shards.
async fn declare(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .context("declaring the ceiling's quorum queue")?;
    Ok(())
}

/// The two ceilings, measured one after the other on one quorum queue.
pub struct Ceilings {
    pub publish: Ceiling,
    pub consume: Ceiling,
}

/// Publish: `conns` connections, one confirm channel each, `batch` persistent
/// messages written back to back and then every confirm awaited (how the
/// relay publishes). Consume: one consumer with prefetch `batch × 4` acking
/// with `multiple` every `batch` deliveries (how workers ack), until the
/// queue is empty or `duration` has passed.
pub async fn ceilings(url: &str, conns: usize, batch: usize, duration: Duration) -> anyhow::Result<Ceilings> {
    let queue = format!("zg_bench_{}", random_hex());
    let admin = connect(url).await?;
    let admin_channel = admin.create_channel().await?;
    declare(&admin_channel, &queue).await?;
    let result = measure(url, &queue, conns, batch.max(1), duration).await;
    let _ = admin_channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = admin.close(200, "ceilings measured".into()).await;
    result
}

async fn measure(url: &str, queue: &str, conns: usize, batch: usize, duration: Duration) -> anyhow::Result<Ceilings> {
    let mut states = Vec::new();
    for _ in 0..conns.max(1) {
        let conn = connect(url).await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        states.push((conn, channel, queue.to_owned()));
    }
    let publish = drive(states, batch as u64, duration, move |(conn, channel, queue), _| async move {
        let r = publish_batch(&channel, &queue, batch).await;
        ((conn, channel, queue), r)
    })
    .await?;

    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    let prefetch = u16::try_from(batch * 4).unwrap_or(u16::MAX);
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(queue.into(), "zg-bench".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let cpu0 = crate::loadgen::process_cpu_seconds();
    let started = Instant::now();
    let (mut got, mut unacked) = (0u64, 0usize);
    while got < publish.ops && started.elapsed() < duration {
        let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await else { break };
        let delivery = delivery.context("consuming")?;
        got += 1;
        unacked += 1;
        if unacked >= batch || got == publish.ops {
            channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true }).await?;
            unacked = 0;
        }
    }
    let consume = Ceiling {
        ops: got,
        round_trips: got.div_ceil(batch as u64),
        errors: 0,
        elapsed: started.elapsed(),
        hist: crate::loadgen::histogram(),
        client_cpu: crate::loadgen::process_cpu_seconds() - cpu0,
    };
    let _ = conn.close(200, "consumed".into()).await;
    Ok(Ceilings { publish, consume })
}

async fn publish_batch(channel: &Channel, queue: &str, batch: usize) -> anyhow::Result<()> {
    let props = BasicProperties::default().with_delivery_mode(2);
    let sent = join_all((0..batch).map(|_| {
        channel.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), PAYLOAD, props.clone())
    }))
    .await;
    for confirm in join_all(sent.into_iter().map(|s| async move { s?.await })).await {
        match confirm? {
            Confirmation::Ack(_) => {}
            other => anyhow::bail!("not confirmed: {other:?}"),
        }
    }
    Ok(())
}
