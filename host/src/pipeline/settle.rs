//! The opaque token by which the router stage settles an ingest message
//! on its bus, without knowing the bus.

/// Settles an ingest message once its event has been routed: told whether
/// its deliveries went out. Opaque to the pipeline (on NATS, it queues the
/// acknowledgement of the ingest message behind history). Dropped
/// unsettled (a lane that stopped), it settles as not delivered.
pub struct Settle(Option<Box<dyn FnOnce(bool) + Send>>);

impl Settle {
    /// Settles by calling `f`.
    pub fn new(f: impl FnOnce(bool) + Send + 'static) -> Self {
        Settle(Some(Box::new(f)))
    }

    /// The event is handled: `delivered` if its deliveries went out.
    pub fn done(mut self, delivered: bool) {
        if let Some(f) = self.0.take() {
            f(delivered)
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(false)
        }
    }
}
