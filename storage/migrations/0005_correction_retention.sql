-- Citizen correction requests, round 2 (issue 16).
--
-- The one-time code goes to a phone on record for the person (otp_phone: the phone a site recorded for
-- them), never to the phone a request names. identity says how the person is to be identified: 'code'
-- (a phone on record), 'in_person' (none: checked in person at the province), or 'no_record' (a request
-- about existing records for a national ID that has none: it awaits nobody, keeps no evidence and expires
-- like an unconfirmed code request). Unconfirmed requests expire: expires_at is set while a request is
-- unconfirmed and cleared once it is confirmed or decided, and a retention job deletes the expired ones
-- with their evidence (ON DELETE CASCADE). evidence_bytes is what a request's images weigh, so the room
-- left for unconfirmed requests is read without the images; each identity has its own room (in-person
-- requests one per province), so a flood of one kind never refuses the others.
--
-- Requests still awaiting their code when this runs had it sent to the phone they typed: that code is
-- void (otp_hash cleared), no new one can be sent (no otp_phone), and they expire an hour after filing.

ALTER TABLE correction_requests
    ADD COLUMN identity       text NOT NULL DEFAULT 'code' CHECK (identity IN ('code', 'in_person', 'no_record')),
    ADD COLUMN otp_phone      text,
    ADD COLUMN evidence_bytes bigint NOT NULL DEFAULT 0,
    ADD COLUMN expires_at     timestamptz,
    ADD COLUMN confirm_by     timestamptz; -- unconfirmed: codes are checked and sent until then (any identity)

UPDATE correction_requests r
   SET otp_hash = NULL, otp_expires_at = NULL, expires_at = r.created_at + interval '1 hour',
       confirm_by = r.created_at + interval '1 hour',
       evidence_bytes = coalesce((SELECT sum(length(e.content)) FROM correction_evidence e
                                   WHERE e.request_id = r.request_id), 0)
 WHERE r.status = 'pending_otp';

CREATE INDEX correction_requests_unconfirmed ON correction_requests (expires_at) INCLUDE (evidence_bytes)
    WHERE expires_at IS NOT NULL;
CREATE INDEX correction_requests_rooms ON correction_requests (identity, province) INCLUDE (evidence_bytes)
    WHERE expires_at IS NOT NULL;

ALTER TABLE correction_evidence
    DROP CONSTRAINT correction_evidence_request_id_fkey,
    ADD CONSTRAINT correction_evidence_request_id_fkey FOREIGN KEY (request_id)
        REFERENCES correction_requests (request_id) ON DELETE CASCADE;

-- The outbox of approvals: an approval writes its changes here in the transaction that marks the request
-- approved, and they are put into the stream after the commit, each marked with its batch id once there.
-- A change the stream could not take stays here (batch_id null) and is re-driven: all or nothing.
CREATE TABLE correction_changes (
    request_id  text NOT NULL REFERENCES correction_requests (request_id),
    n           smallint NOT NULL,          -- the change's place in the request's `applied` list, from 1
    site_id     integer NOT NULL REFERENCES sites (site_id),
    op          text NOT NULL CHECK (op IN ('insert', 'replace')),
    record_id   text NOT NULL,
    dose        jsonb NOT NULL,             -- the dose to put through the stream, validated at the decision
    actor       text NOT NULL,              -- who approved ("site:<code>", "operator")
    batch_id    text,                       -- null: not in the stream yet
    attempts    integer NOT NULL DEFAULT 0, -- failed attempts to put it into the stream
    PRIMARY KEY (request_id, n)
);
CREATE INDEX correction_changes_pending ON correction_changes (request_id, n) WHERE batch_id IS NULL;
