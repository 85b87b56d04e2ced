//! The relay under a backlog, on a real `nats-server`: raw publishes that
//! waited in the ingest stream while no node ran, more than a node keeps
//! JetStream publishes in flight, are all relayed to their partition and
//! routed once each.

mod support;

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::json;
use support::cluster::*;
use support::nats::{NatsServer, bus_section};
use support::process::GatewayProcess;
use support::*;
use switchyard_host::routing::partition::partition_of_str;

/// Raw publishes waiting: more than the node's 5,000 publishes in flight.
const BACKLOG: u64 = 12_000;

/// Before, the relay took copies as fast as the backlog came and awaited
/// each new publish's permit inside its loop, while the acknowledgements
/// that give permits back were futures only that same loop polled: with
/// every permit held it waited for good, having relayed about 5,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_publish_window_is_relayed_whole() {
    let db = fresh_postgres().await;
    let nats = NatsServer::single();
    let bus = format!("{}[store]\nurl = {db:?}\n", bus_section(&[nats.url()], 1));
    let mut first = GatewayProcess::start("k", &bus).await;
    eventually("k relays", Duration::from_secs(30), async || {
        first.metric("switchyard_bus_relay_owner").await == Some(1)
    })
    .await;
    first.kill().await;

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let mut acks = VecDeque::new();
    for n in 0..BACKLOG {
        let body = json!({ "n": n }).to_string();
        acks.push_back(
            js.publish("sy.in.news.backlog", body.into())
                .await
                .expect("publish"),
        );
        if acks.len() >= 1_000
            && let Some(ack) = acks.pop_front()
        {
            ack.await.expect("stored");
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }

    let b = node("b", &nats.url(), &db).await;
    eventually(
        "the backlog relayed",
        Duration::from_secs(120),
        async || b.metric("switchyard_bus_relayed_total").await == BACKLOG,
    )
    .await;
    let p = partition_of_str("news.backlog", PARTITIONS as u16);
    let routed = format!("switchyard_bus_partition_routed_total{{partition=\"{p}\"}} {BACKLOG}\n");
    eventually("the backlog routed", Duration::from_secs(60), async || {
        b.get_text("/metrics").await.1.contains(&routed)
    })
    .await;
    assert_eq!(b.metric("switchyard_bus_relay_errors_total").await, 0);
}
