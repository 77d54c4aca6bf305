-- The notifications' (kind, subject, event) key is the arbiter of a decided correction's one SMS per decision
-- (storage.notifications._CORRECTION). A certificate's row never needs it: its subject is a fresh UVCI and the
-- person's waiting row is kept unique by notifications_waiting_certificate. Yet every certificate row paid for
-- it three times (the insert, the notifier's claim and its mark each write a new row version with an entry in
-- every index), at a certificate a second per persisted dose. So it covers corrections only.
DROP INDEX notifications_subject;
CREATE UNIQUE INDEX notifications_correction_subject ON notifications (subject, event) WHERE kind = 'correction';
