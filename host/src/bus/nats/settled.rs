//! Learns the settled floor from the ingest stream: it is a work queue, so
//! its first sequence is the oldest event not yet acknowledged, and an
//! event is acknowledged only once routed and in history.

use std::sync::Arc;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::bus::settled::{EVERY, Settled};
use crate::routing::EventId;

/// Reads the ingest stream's state every [`EVERY`] until `stop`.
pub async fn follow(
    js: jetstream::Context,
    ingest_stream: String,
    settled: Arc<Settled>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let info = tokio::select! {
            info = js.get_stream(&ingest_stream) => info,
            () = stop.cancelled() => return,
        };
        match info {
            Ok(stream) => {
                let info = stream.cached_info();
                // The epoch is the stream's creation, as at provisioning: a
                // recreated stream's sequences are never taken for the old.
                let epoch = (info.created.unix_timestamp_nanos() / 1_000_000) as u64;
                settled.set(EventId {
                    epoch,
                    seq: info.state.first_sequence.saturating_sub(1),
                });
            }
            Err(e) => tracing::debug!(error = %e, "ingest stream state not read"),
        }
    }
}
