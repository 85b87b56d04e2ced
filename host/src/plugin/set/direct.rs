//! Direct messages: may a user address these users on this topic?

use super::{AUTHORIZER_FAILED, Interface, PluginSet, convert};
use crate::routing::Topic;
use crate::subject::Subject;

impl PluginSet {
    /// Asks every direct-authorizer that applies to `topic` whether
    /// `subject` may publish on it to `users`: `None` when none applies,
    /// else allowed or the first refusal. Fails closed: a plugin that traps
    /// or times out refuses.
    pub fn authorize_direct(
        &self,
        subject: &Subject,
        topic: &Topic,
        users: &[String],
    ) -> Option<Result<(), String>> {
        let mut asked = false;
        let mut wit_subject = None;
        let wit_topic = convert::topic(topic);
        for entry in &self.entries {
            if !entry.applies(Interface::DirectAuthorizer, Some(topic)) {
                continue;
            }
            asked = true;
            let s = wit_subject.get_or_insert_with(|| convert::subject(subject));
            match entry.plugin.authorize_direct(s, &wit_topic, users) {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Some(Err(why)),
                Err(_) => return Some(Err(AUTHORIZER_FAILED.to_owned())),
            }
        }
        asked.then_some(Ok(()))
    }
}
