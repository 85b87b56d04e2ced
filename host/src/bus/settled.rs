//! The settled floor: an id of the current epoch up to which every event
//! has been routed. A session that read it before going live knows that
//! nothing at or below it was routed after: whatever it is shown later of
//! any partition lies above it (`routing::Shown`).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::routing::EventId;

/// How often a bus learns its settled floor anew.
pub const EVERY: Duration = Duration::from_secs(1);

/// The newest settled floor learnt, if any yet.
#[derive(Debug, Default)]
pub struct Settled(Mutex<Option<EventId>>);

impl Settled {
    /// The floor learnt last.
    pub fn get(&self) -> Option<EventId> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Everything up to `id` has been routed (a floor of another epoch
    /// replaces the old one; a lower one of the same epoch is ignored).
    pub fn set(&self, id: EventId) {
        let mut floor = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match *floor {
            Some(f) if f.epoch == id.epoch && f.seq >= id.seq => {}
            _ => *floor = Some(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_only_rises_within_an_epoch() {
        let s = Settled::default();
        assert_eq!(s.get(), None);
        s.set(EventId { epoch: 1, seq: 5 });
        s.set(EventId { epoch: 1, seq: 3 });
        assert_eq!(s.get(), Some(EventId { epoch: 1, seq: 5 }));
        s.set(EventId { epoch: 2, seq: 1 });
        assert_eq!(s.get(), Some(EventId { epoch: 2, seq: 1 }));
    }
}
