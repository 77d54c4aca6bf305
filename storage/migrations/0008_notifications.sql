-- Notifications to citizens (issue 18): an SMS when their certificate is issued or updated, and when their
-- correction request is decided, each with a link and never the data. A row is written in the transaction
-- that stores the certificate (storage.certificates.issue: the certifiers' and a lookup's) or records the
-- decision (storage.citizen.decide), so a committed certificate or decision always has its notification,
-- and none is written for one that rolled back. Notifier processes (workers/notify.py) send them: they claim
-- due rows with FOR UPDATE SKIP LOCKED for a lease (due_at moves past it), send outside any transaction,
-- then mark the row sent, or move due_at out by a backoff when the gateway failed. Delivery is at least
-- once: a notifier that dies between the gateway's answer and the mark sends again after the lease.
--
-- Deduplicated per certificate: a person has at most one certificate notification waiting. A newer
-- certificate stored before it was sent replaces its UVCI (`subject`) and keeps its event, so a person whose
-- certificate is superseded twice before sending gets one SMS, about the current certificate, and never two
-- for the same one. (An SMS in flight while its row is replaced still goes; the row then stays due and the
-- current certificate gets its own.) A correction request gets one per decision (approved, rejected).
--
-- The phone is not copied here: the notifier reads the one on record when it sends (persons.phone, the
-- phone of the person's latest record that has one; for a correction, the phone its code went to first).

CREATE TABLE notifications (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('certificate', 'correction')),
    national_id text NOT NULL,
    subject     text NOT NULL,  -- certificate: the UVCI it tells of; correction: the request id
    event       text NOT NULL CHECK (event IN ('issued', 'updated', 'approved', 'rejected')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    due_at      timestamptz NOT NULL DEFAULT now(),  -- the next attempt; a claim moves it a lease ahead
    attempts    integer NOT NULL DEFAULT 0,
    sent_at     timestamptz,
    outcome     text CHECK (outcome IN ('sent', 'no_phone'))  -- set with sent_at
);
-- One certificate notification waiting per person: the arbiter of the issuers' upsert.
CREATE UNIQUE INDEX notifications_waiting_certificate ON notifications (national_id)
    WHERE kind = 'certificate' AND sent_at IS NULL;
CREATE UNIQUE INDEX notifications_subject ON notifications (kind, subject, event);
CREATE INDEX notifications_due ON notifications (due_at) WHERE sent_at IS NULL;
CREATE INDEX notifications_sent ON notifications (sent_at) WHERE sent_at IS NOT NULL;  -- retention
