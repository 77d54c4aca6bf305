-- The revocation feed's cursor (issue 16): every revocation is numbered when it is made, and
-- GET /v1/revocations pages by that number (`after=`), so rows that share a revoked_at can never fall
-- between two pages. The number comes from a sequence, assigned by a trigger whatever statement
-- revokes (the certifiers' supersede, a person left without doses, any later path), and never changes.
-- Numbers are not gap-free (a rolled-back revocation spends one) and become visible out of order by at
-- most a transaction's length; the feed lists only numbers below a settled revocation's (see
-- storage/certificates.py revocations).

CREATE SEQUENCE certificates_revocation_seq AS bigint;

ALTER TABLE certificates ADD COLUMN revocation_seq bigint;

-- Revocations made before this migration, numbered in the order they were made.
UPDATE certificates c SET revocation_seq = o.n
FROM (SELECT uvci, row_number() OVER (ORDER BY revoked_at, uvci) AS n FROM certificates WHERE status = 'revoked') o
WHERE c.uvci = o.uvci;
SELECT setval('certificates_revocation_seq', coalesce(max(revocation_seq), 0) + 1, false) FROM certificates;

CREATE FUNCTION certificates_number_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.revocation_seq := nextval('certificates_revocation_seq');
    RETURN NEW;
END $$;

-- The WHEN clause is evaluated without calling the function: issuing a current certificate costs nothing.
CREATE TRIGGER certificates_revocation_seq BEFORE INSERT OR UPDATE OF status ON certificates
    FOR EACH ROW WHEN (NEW.status = 'revoked' AND NEW.revocation_seq IS NULL)
    EXECUTE FUNCTION certificates_number_revocation();

ALTER TABLE certificates ADD CONSTRAINT certificates_revocation_numbered
    CHECK ((status = 'revoked') = (revocation_seq IS NOT NULL));

CREATE UNIQUE INDEX certificates_revocations ON certificates (revocation_seq) WHERE revocation_seq IS NOT NULL;
