-- Retention deletes an event once no stream holds it: that check looks
-- history rows up by event, not by topic.
CREATE INDEX IF NOT EXISTS sy_history_event ON sy_history (epoch, seq);
