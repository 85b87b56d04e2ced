//! The NATS bus's series: connection, leases, relay, fencing, and each
//! partition this node routes.

use std::sync::atomic::Ordering;

use super::{Exposition, Kind};
use crate::bus::BusStats;
use crate::bus::nats::OwnedStatus;

/// Counters and gauges of the bus.
pub fn series(x: &mut Exposition, b: &BusStats) {
    let gauges: [(&'static str, &'static str, f64); 5] = [
        (
            "switchyard_bus_connected",
            "1 while the NATS control connection (JetStream, leases, requests) is up.",
            f64::from(u8::from(b.connected.load(Ordering::Relaxed))),
        ),
        (
            "switchyard_bus_delivery_connected",
            "1 while the NATS delivery connection (deliveries and beacons) is up.",
            f64::from(u8::from(b.delivery_connected.load(Ordering::Relaxed))),
        ),
        (
            "switchyard_bus_partitions_owned",
            "Partitions this node routes now.",
            b.partitions_owned.load(Ordering::Relaxed) as f64,
        ),
        (
            "switchyard_bus_relay_owner",
            "1 while this node relays raw publishes to their partitions.",
            f64::from(u8::from(b.relay_owner.load(Ordering::Relaxed))),
        ),
        (
            "switchyard_bus_interest_subjects",
            "Delivery subjects this node subscribes to.",
            b.interest_subjects.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, help, value) in gauges {
        x.sample(name, help, Kind::Gauge, &[], value);
    }
    let counters: [(&'static str, &'static str, u64); 24] = [
        (
            "switchyard_bus_leases_acquired_total",
            "Partition and relay leases this node took.",
            b.leases_acquired.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_leases_released_total",
            "Leases this node handed over.",
            b.leases_released.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_leases_lost_total",
            "Leases this node lost (another node took them, or renewal failed).",
            b.leases_lost.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_relayed_total",
            "Raw publishes this node relayed to their partitions.",
            b.relayed.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_relay_errors_total",
            "Relayed publishes NATS did not confirm (relayed again).",
            b.relay_errors.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_relay_reordered_total",
            "Relayed copies stored out of order (JetStream refused one after storing a later one).",
            b.relay_reordered.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_fenced_total",
            "Deliveries dropped because a later owner of their partition had been heard.",
            b.fenced.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_cover_failures_total",
            "Replays that could not confirm every partition's history in time (answered with a reset).",
            b.cover_failures.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_disconnects_total",
            "NATS control connections lost.",
            b.disconnects.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_delivery_disconnects_total",
            "NATS delivery connections lost (what was missed is repaired from history).",
            b.delivery_disconnects.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_malformed_total",
            "Messages from NATS that could not be read (dropped).",
            b.malformed.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_publish_errors_total",
            "Events NATS did not accept (the publisher got an error).",
            b.publish_errors.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_lag_refusals_total",
            "Publishes refused with 503 because their partition was past bus.max_lag_ms.",
            b.lag_refusals.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_delivery_errors_total",
            "Routed deliveries NATS did not take (routed again later).",
            b.delivery_errors.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_deliveries_received_total",
            "Deliveries received from NATS.",
            b.received.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_deliveries_local_total",
            "Deliveries this node routed to its own sessions in process (not through NATS).",
            b.local.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_deliveries_local_dropped_total",
            "Local deliveries dropped because the dispatcher was behind (repaired from history).",
            b.local_dropped.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_duplicates_total",
            "Deliveries received more than once and fanned out once.",
            b.duplicates.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_slow_consumer_total",
            "Times the NATS client dropped deliveries because this node fell behind.",
            b.slow_consumer.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_pull_requests_dropped_total",
            "Pull requests that expired with no word from the server (covered by the next one).",
            b.pulls_dropped.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_gaps_total",
            "Gaps detected in the deliveries (a missing predecessor, a tail a beacon named, a link loss).",
            b.gaps.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_recovered_total",
            "Deliveries repaired from history after a gap.",
            b.recovered.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_recovery_errors_total",
            "Repairs that failed (cover round or store query); the sessions were told.",
            b.recovery_errors.load(Ordering::Relaxed),
        ),
        (
            "switchyard_bus_gaps_unrepaired_total",
            "Subjects whose sessions were told events were lost (history keeps none, or cannot give them).",
            b.gaps_unrepaired.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        x.sample(name, help, Kind::Counter, &[], value as f64);
    }
}

/// Routed, backlog and lag of each partition this node routes.
pub fn partition_series(x: &mut Exposition, owned: &[OwnedStatus]) {
    for p in owned {
        let partition = p.partition.to_string();
        let l = [("partition", partition.as_str())];
        x.sample(
            "switchyard_bus_partition_routed_total",
            "Events this node took from the partition since it last took its lease.",
            Kind::Counter,
            &l,
            p.routed as f64,
        );
        x.sample(
            "switchyard_bus_partition_backlog",
            "Events waiting in a partition this node routes.",
            Kind::Gauge,
            &l,
            p.backlog as f64,
        );
        x.sample(
            "switchyard_bus_partition_lag_seconds",
            "How long the newest event taken from the partition waited, while more wait.",
            Kind::Gauge,
            &l,
            p.lag_ms as f64 / 1000.0,
        );
    }
}
