-- Certificates: one row per issued certificate. A person has at most one
-- current certificate; a new dose (or a correction) issues a new one and
-- revokes the old, which stays, so a verifier holding it learns why it no
-- longer verifies.

CREATE TABLE certificates (
    uvci          text PRIMARY KEY,
    national_id   text NOT NULL,
    status        text NOT NULL CHECK (status IN ('current', 'revoked')),
    -- Digests of what the signed DCC states and of the whole view: a history
    -- that gives the same DCC again (a redelivered batch, a second record of
    -- a dose already counted) is not reissued; only the view is updated.
    fingerprint      bytea NOT NULL,
    view_fingerprint bytea NOT NULL,
    full_name     text NOT NULL,
    birth_date    date NOT NULL,
    doses         jsonb NOT NULL,  -- the whole sequence, with flags; the DCC itself carries the latest dose
    kid           bytea NOT NULL,
    hc1           text NOT NULL,
    issued_at     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    -- When the earliest of the batches that led to this certificate got its 202,
    -- and when the certificate was stored: the 202-to-certificate latency.
    received_at   timestamptz,
    certified_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at    timestamptz,
    superseded_by text
);
CREATE UNIQUE INDEX certificates_current ON certificates (national_id) WHERE status = 'current';
CREATE INDEX certificates_revoked ON certificates (revoked_at) WHERE status = 'revoked';

-- The range of a person's administration times: reading their history probes
-- only the monthly partitions inside it (run-time pruning), not all of them.
ALTER TABLE persons ADD COLUMN first_administered_at timestamptz;
UPDATE persons p SET first_administered_at = d.first, last_administered_at = d.last
FROM (SELECT national_id, min(administered_at) AS first, max(administered_at) AS last
      FROM doses GROUP BY national_id) d
WHERE d.national_id = p.national_id;
UPDATE persons SET first_administered_at = last_administered_at WHERE first_administered_at IS NULL;
ALTER TABLE persons ALTER COLUMN first_administered_at SET NOT NULL;
