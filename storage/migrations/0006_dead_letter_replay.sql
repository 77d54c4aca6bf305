-- Dead letters re-driven once their cause is fixed (`vaxline deadletters replay`): the batch id the payload
-- was appended under again, and when. Reconciliation counts a replayed dead letter where its replay is.
ALTER TABLE dead_letters ADD COLUMN replayed_at timestamptz;
ALTER TABLE dead_letters ADD COLUMN replayed_as text;

-- Certify handoffs a certifier dropped on an error of the data (workers.certify): the handoff as the certify
-- stream carries it (national ids, earliest 202s), kept until it is handed to the certifiers again.
CREATE TABLE failed_handoffs (
    handoff_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload      bytea NOT NULL,
    persons      integer NOT NULL,
    error        text NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz
);
CREATE INDEX failed_handoffs_waiting ON failed_handoffs (handoff_id) WHERE replayed_at IS NULL;
