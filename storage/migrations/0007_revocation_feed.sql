-- The revocation feed's cursor (issue 16): GET /v1/revocations pages by a revocation number (`after=`),
-- so rows that share a revoked_at can never fall between two pages, and a client that continues after
-- the last number it saw never misses one.
--
-- The number is drawn when the revoking transaction commits, in commit order: a deferred constraint
-- trigger takes a transaction-scoped advisory lock (REVOCATION_LOCK below) and only then draws from the
-- sequence. The lock is held until the transaction has ended, and Postgres releases a transaction's
-- locks only after its commit is visible, so every transaction that draws later sees this one committed
-- (or rolled back) first. Hence: when a reader sees number n, every smaller number is visible to it too,
-- or belongs to a transaction that rolled back (a gap that never fills). No wait, no settle time, and no
-- assumption on how long a transaction stays open.
--
-- The cost: the lock is held from the first numbered row to the end of the commit, i.e. one small INSERT
-- per revoked row and the commit's WAL flush, so revoking commits take turns through their flush (no group
-- commit among them). The certifiers revoke a chunk per commit, so that bounds chunks, not revocations, to
-- about one per flush; commits that revoke nothing queue no trigger and never touch the lock. (SET
-- CONSTRAINTS ... IMMEDIATE would draw early and hold the lock longer, never break the order.)
--
-- The numbers live in their own narrow, append-only table, not on the certificate: assigning one at
-- commit is one small INSERT rather than a second version of the whole certificate row, the feed is a
-- range scan of its primary key, and once written a number never changes.

CREATE SEQUENCE revocation_numbers AS bigint CACHE 1;  -- CACHE 1: numbers drawn later are larger, across sessions

CREATE TABLE revocations (
    seq         bigint PRIMARY KEY,
    uvci        text NOT NULL UNIQUE,
    revoked_at  timestamptz NOT NULL,  -- the certificate's
    -- When the number was drawn (at the revoking commit): `since`, for the clients of the time-based feed,
    -- starts from it, as it follows commit order where revoked_at (stamped at the UPDATE) does not.
    numbered_at timestamptz NOT NULL
);
CREATE INDEX revocations_numbered_at ON revocations (numbered_at);

-- Revocations made before this migration, numbered in the order they were made. Writers of certificates
-- wait until the migration commits (old code may still be revoking during a deployment): the backfill
-- sees every revocation committed before it, and every later one meets the triggers.
LOCK TABLE certificates IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO revocations (seq, uvci, revoked_at, numbered_at)
SELECT row_number() OVER (ORDER BY revoked_at, uvci), uvci, coalesce(revoked_at, certified_at),
       coalesce(revoked_at, certified_at)
FROM certificates WHERE status = 'revoked';
SELECT setval('revocation_numbers', coalesce(max(seq), 0) + 1, false) FROM revocations;

-- REVOCATION_LOCK = 8530231576387483137 ("vaxlrev\x01"), beside storage.SCHEMA_LOCK and registry's lock.
-- Fired once per revoked row, at commit: the first firing takes the lock, the others find it held (a
-- lookup in the backend's own lock table). ON CONFLICT: a certificate is numbered once, whatever else
-- its transaction did to it.
CREATE FUNCTION certificates_number_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(8530231576387483137);
    INSERT INTO revocations (seq, uvci, revoked_at, numbered_at)
    VALUES (nextval('revocation_numbers'), NEW.uvci, coalesce(NEW.revoked_at, clock_timestamp()), clock_timestamp())
    ON CONFLICT (uvci) DO NOTHING;
    RETURN NULL;
END $$;

-- Whatever statement revokes (the certifiers' supersede, a person left without doses, any later path).
-- The WHEN clauses are evaluated without calling the function: issuing a current certificate, or
-- updating a revoked one again, queues nothing.
CREATE CONSTRAINT TRIGGER certificates_revoked_numbered AFTER UPDATE OF status ON certificates
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.status = 'revoked' AND OLD.status IS DISTINCT FROM 'revoked')
    EXECUTE FUNCTION certificates_number_revocation();
CREATE CONSTRAINT TRIGGER certificates_inserted_revoked_numbered AFTER INSERT ON certificates
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.status = 'revoked')
    EXECUTE FUNCTION certificates_number_revocation();

-- A full page of the feed is served as immutable: nothing may change or remove a number once given.
CREATE FUNCTION revocations_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'revocations is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER revocations_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION revocations_append_only();
