//! Pure routing concepts: topics, topic patterns and the event envelope. No I/O.

pub mod event;
pub mod topic;

pub use event::{Event, Routed};
pub use topic::{Topic, TopicError, TopicPattern};
