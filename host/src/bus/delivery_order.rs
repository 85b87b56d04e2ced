//! Whether a pull consumer's deliveries still come in order. Pure.
//!
//! A message that a broken connection lost in flight is redelivered by
//! JetStream only after its ack wait, behind later ones, which would put
//! a topic out of order. Every delivery carries the consumer's sequence,
//! which counts deliveries one by one: a skipped number is a delivery
//! lost on the way, and a stream sequence going back is a redelivery. In
//! both cases the consumer is recreated, so that delivery starts over,
//! in order, from the oldest unacknowledged message.

/// The next delivery a consumer should make.
#[derive(Debug, Default)]
pub struct DeliveryOrder {
    last_consumer: u64,
    last_stream: u64,
}

impl DeliveryOrder {
    /// True if the delivery numbered `consumer_seq` of the stream message
    /// `stream_seq` follows the previous one; false if one was lost or
    /// this is a redelivery.
    pub fn follows(&mut self, consumer_seq: u64, stream_seq: u64) -> bool {
        let in_order = consumer_seq == self.last_consumer + 1 && stream_seq > self.last_stream;
        if in_order {
            self.last_consumer = consumer_seq;
            self.last_stream = stream_seq;
        }
        in_order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_delivery_or_a_redelivery_breaks_the_order() {
        let mut o = DeliveryOrder::default();
        assert!(o.follows(1, 10));
        assert!(o.follows(2, 12), "stream gaps are other subjects");
        assert!(!o.follows(4, 13), "delivery 3 was lost in flight");
        assert!(o.follows(3, 13));
        assert!(!o.follows(4, 11), "a redelivery of an older message");
    }
}
