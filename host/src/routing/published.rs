//! What a publisher may put in an event besides its topic and payload: the
//! event name and the users it addresses directly. Pure checks, the same for
//! every protocol.

/// The longest event name accepted.
pub const MAX_NAME_BYTES: usize = 200;

/// The longest user id accepted (a token's `sub`, a direct recipient).
pub const MAX_USER_ID_BYTES: usize = 256;

/// Names the gateway gives its own SSE events and STOMP messages: an event
/// published under one would pass for the gateway telling the client that
/// its history was reset or events were dropped.
pub const RESERVED_NAMES: [&str; 3] = ["connected", "dropped", "reset"];

/// A publish the gateway refuses for what it carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishInputError {
    /// An empty or oversized name, or one with control characters.
    #[error("the event name must be 1 to {MAX_NAME_BYTES} bytes without control characters")]
    BadName,
    /// A name the gateway uses for its own events.
    #[error("the event name `{0}` is reserved for the gateway's own events")]
    ReservedName(String),
    /// More direct recipients than a user may address at once.
    #[error("to_users names {0} users; a user may address at most {1} (limits.max_recipients)")]
    TooManyRecipients(usize, usize),
    /// A recipient that is no user id.
    #[error(
        "to_users[{0}] is not a user id: 1 to {MAX_USER_ID_BYTES} bytes without control characters"
    )]
    BadRecipient(usize),
}

/// Whether `s` can be a user id: it goes into log lines, frame headers and
/// store keys, so no control characters, and a bounded length.
pub fn is_user_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_USER_ID_BYTES && !s.chars().any(char::is_control)
}

/// Refuses an event name no client could tell from the gateway's own, or
/// that would break a frame.
pub fn check_name(name: &str) -> Result<(), PublishInputError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(PublishInputError::BadName);
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(PublishInputError::ReservedName(name.to_owned()));
    }
    Ok(())
}

/// Refuses recipients that are no user ids and, when `max` is given (a
/// user publishing), more of them than `max`.
pub fn check_recipients(users: &[String], max: Option<usize>) -> Result<(), PublishInputError> {
    if let Some(max) = max.filter(|&m| users.len() > m) {
        return Err(PublishInputError::TooManyRecipients(users.len(), max));
    }
    match users.iter().position(|u| !is_user_id(u)) {
        Some(i) => Err(PublishInputError::BadRecipient(i)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_gateway_uses_or_that_break_a_frame_are_refused() {
        assert_eq!(check_name("message"), Ok(()));
        assert_eq!(check_name("order.created"), Ok(()));
        for reserved in RESERVED_NAMES {
            assert_eq!(
                check_name(reserved),
                Err(PublishInputError::ReservedName(reserved.to_owned()))
            );
        }
        for bad in ["", "a\nb", "a\rb", "nul\0", &"x".repeat(MAX_NAME_BYTES + 1)] {
            assert_eq!(check_name(bad), Err(PublishInputError::BadName), "{bad:?}");
        }
        assert_eq!(check_name(&"x".repeat(MAX_NAME_BYTES)), Ok(()));
    }

    #[test]
    fn recipients_are_user_ids_and_a_user_addresses_a_bounded_number() {
        let users: Vec<String> = (0..5).map(|i| format!("u{i}")).collect();
        assert_eq!(check_recipients(&users, Some(5)), Ok(()));
        assert_eq!(check_recipients(&users, None), Ok(()));
        assert_eq!(
            check_recipients(&users, Some(4)),
            Err(PublishInputError::TooManyRecipients(5, 4))
        );
        let bad = vec!["ann".to_owned(), "b\nob".to_owned()];
        assert_eq!(
            check_recipients(&bad, None),
            Err(PublishInputError::BadRecipient(1))
        );
        assert!(!is_user_id(""));
        assert!(!is_user_id(&"u".repeat(MAX_USER_ID_BYTES + 1)));
        assert!(is_user_id(&"ü".repeat(MAX_USER_ID_BYTES / 2)));
    }
}
