//! Pure routing concepts: topics, topic patterns, partitions and the event
//! envelope. No I/O.

pub mod cursor;
pub mod event;
pub mod event_id;
pub mod partition;
pub mod published;
pub mod topic;

pub use cursor::{Cursor, Shown};
pub use event::{Event, Origin, Routed};
pub use event_id::EventId;
pub use partition::{Partition, partition_of, partition_of_str};
pub use topic::{Topic, TopicError, TopicPattern};
