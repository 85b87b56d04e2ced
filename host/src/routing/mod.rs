//! Pure routing concepts: topics, topic patterns, partitions and the event
//! envelope. No I/O.

pub mod event;
pub mod event_id;
pub mod partition;
pub mod topic;

pub use event::{Event, Origin, Routed};
pub use event_id::EventId;
pub use partition::{Partition, partition_of};
pub use topic::{Topic, TopicError, TopicPattern};
