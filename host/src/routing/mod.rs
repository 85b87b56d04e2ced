//! Pure routing concepts: topics, topic patterns and the event envelope. No I/O.

pub mod event;
pub mod event_id;
pub mod topic;

pub use event::{Event, Routed};
pub use event_id::EventId;
pub use topic::{Topic, TopicError, TopicPattern};
