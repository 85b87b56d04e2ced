//! Event ids as replay cursors: `<epoch, hex>-<sequence>`. The sequence
//! orders every event of an epoch (one per ingest stream or store); a cursor
//! from another epoch cannot be replayed from.

use std::fmt;

/// A parsed event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Which sequence space (the ingest stream's or the store's creation, ms).
    pub epoch: u64,
    /// The position in it, from 1.
    pub seq: u64,
}

impl EventId {
    /// The id of an event not yet ingested (no ingest gives out sequence 0).
    pub const UNASSIGNED: EventId = EventId { epoch: 0, seq: 0 };

    /// Reads `<hex epoch>-<decimal seq>`; `None` for anything else.
    pub fn parse(s: &str) -> Option<EventId> {
        let (epoch, seq) = s.trim().split_once('-')?;
        Some(EventId {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_junk_is_refused() {
        let id = EventId {
            epoch: 0x19a2b3c4d5e,
            seq: 42,
        };
        assert_eq!(id.to_string(), "19a2b3c4d5e-42");
        assert_eq!(EventId::parse("19a2b3c4d5e-42"), Some(id));
        for junk in ["", "42", "zz-1", "1a-", "1a-x", "1a-1-2"] {
            assert_eq!(EventId::parse(junk), None, "{junk}");
        }
        assert!(EventId { epoch: 1, seq: 9 } < EventId { epoch: 1, seq: 10 });
    }
}
