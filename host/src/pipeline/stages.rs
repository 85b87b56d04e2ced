//! A node's two stages, assembled the same way whatever the bus: the bus
//! chooses only how many lanes route and where routed events go.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Edge, EventStats, Outlet, Router};
use crate::executor::PluginExecutor;
use crate::hub::Hub;
use crate::store::history::History;

/// What both stages are built from.
pub struct StageParts {
    /// Local sessions (the edge's recipients).
    pub hub: Arc<Hub>,
    /// Plugin calls.
    pub executor: Arc<PluginExecutor>,
    /// Event counters.
    pub stats: Arc<EventStats>,
    /// The history writer, when history is kept.
    pub history: Option<Arc<History>>,
    /// Cancelled when the node starts draining: routing stops taking events.
    pub draining: CancellationToken,
}

/// The router and the edge of one node.
pub struct Stages {
    /// Asks the routing plugins where each event goes.
    pub router: Arc<Router>,
    /// Fans routed events out to this node's sessions.
    pub edge: Arc<Edge>,
}

impl Stages {
    /// Starts the edge with `edge_lanes` lanes and the router with
    /// `router_lanes`, sending through what `outlet` makes of the edge (on
    /// one node, the edge itself; in a cluster, the deliveries between
    /// nodes).
    pub fn assemble(
        parts: &StageParts,
        edge_lanes: usize,
        router_lanes: usize,
        outlet: impl FnOnce(&Arc<Edge>) -> Arc<dyn Outlet>,
    ) -> Stages {
        let edge = Edge::start(
            edge_lanes,
            parts.hub.clone(),
            parts.executor.clone(),
            parts.stats.clone(),
            parts.history.clone(),
        );
        let router = Arc::new(Router::start(
            router_lanes,
            parts.executor.clone(),
            outlet(&edge),
            parts.stats.clone(),
            parts.history.clone(),
            parts.draining.clone(),
        ));
        Stages { router, edge }
    }
}
