-- Citizen correction requests: a request, confirmed by a one-time code sent to the citizen's phone,
-- routed to the site it names (or its province's queue), decided by that site, and applied through
-- the pipeline. Every step is written to an append-only audit log.

CREATE TABLE correction_requests (
    request_id     text PRIMARY KEY,       -- 128 random bits: with the birth date, the citizen's handle
    status         text NOT NULL CHECK (status IN ('pending_otp', 'submitted', 'approved', 'deferred', 'rejected')),
    kind           text NOT NULL CHECK (kind IN ('missing_dose', 'wrong_dose_details', 'wrong_personal_details')),
    national_id    text NOT NULL,
    full_name      text NOT NULL,
    birth_date     date NOT NULL,
    phone          text NOT NULL,
    claimed        jsonb NOT NULL,         -- the dose as the citizen states it (site or place, date, product, ...)
    note           text NOT NULL DEFAULT '',
    site_id        integer REFERENCES sites (site_id),  -- the site it is routed to; null: the province's queue
    province       smallint NOT NULL,
    otp_hash       bytea,                  -- SHA-256 of request id and code; null once used
    otp_expires_at timestamptz,
    otp_attempts   integer NOT NULL DEFAULT 0,
    otp_sends      integer NOT NULL DEFAULT 1,
    message        text,                   -- the decision's message to the citizen
    decided_by     text,
    decided_at     timestamptz,
    applied        jsonb,                  -- what an approval put through the pipeline
    created_at     timestamptz NOT NULL DEFAULT now(),
    submitted_at   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX correction_requests_site ON correction_requests (site_id, status, submitted_at);
CREATE INDEX correction_requests_province ON correction_requests (province, status, submitted_at);
CREATE INDEX correction_requests_person ON correction_requests (national_id);

-- Up to three images per request (JPEG or PNG, checked by content), kept with the request.
CREATE TABLE correction_evidence (
    request_id    text NOT NULL REFERENCES correction_requests (request_id),
    n             smallint NOT NULL,
    content_type  text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png')),
    sha256        bytea NOT NULL,
    content       bytea NOT NULL,
    PRIMARY KEY (request_id, n)
);

-- Who did what to which request or record, when, with the state before and after. Append-only:
-- updates and deletes are refused by the database itself.
CREATE TABLE audit_log (
    entry_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    action      text NOT NULL,
    request_id  text,
    site_id     integer,
    record_id   text,
    before      jsonb,
    after       jsonb
);
CREATE INDEX audit_log_request ON audit_log (request_id, entry_id);

CREATE FUNCTION vx_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION vx_append_only();
