-- Data quality: the site registry (districts, mobile teams under their site), province and operator
-- tokens, the population registry and each person's reconciliation status, probable duplicates
-- (one counted record per person and day), versioned corrections, the review list, statistics
-- written with the doses they count, and the intake tallies that reconciliation checks.

ALTER TABLE sites ADD COLUMN district text NOT NULL DEFAULT '';
ALTER TABLE sites ADD COLUMN parent_id integer REFERENCES sites (site_id);
ALTER TABLE sites ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX sites_province ON sites (province);

-- Province and operator bearer tokens (a site's token stays on its row). One live token per scope:
-- issuing a new one replaces the old. scope is the province code, or 0 for the national operator.
CREATE TABLE tokens (
    role        text NOT NULL CHECK (role IN ('province', 'operator')),
    scope       smallint NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, scope)
);

-- Vietnam's calendar day of an instant (UTC+7 all year): days of statistics, duplicates, reviews.
CREATE FUNCTION vx_day(timestamptz) RETURNS date LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ($1 AT TIME ZONE INTERVAL '+07:00')::date $$;

-- A name folded for comparison: diacritics and case dropped (decomposed, combining marks removed,
-- đ -> d), spaces collapsed. "Nguyễn Thị Ánh" and "NGUYEN THI  ANH" fold alike. (Folding also makes
-- "Hùng" and "Hưng" alike: a registry check cannot tell them apart, a known false match.)
CREATE FUNCTION vx_fold_name(text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fold$
    SELECT btrim(regexp_replace(lower(translate(regexp_replace(normalize($1, NFD), '[\u0300-\u036f]', '', 'g'),
                                                'đĐ', 'dd')), '\s+', ' ', 'g'))
$fold$;

-- What the population registry says of a record's name and birth date.
CREATE FUNCTION vx_registry_status(full_name text, birth_date date, registry_name text, registry_birth date)
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN registry_birth IS NULL THEN 'not_found'
        WHEN birth_date IS DISTINCT FROM registry_birth THEN 'birth_date_mismatch'
        WHEN vx_fold_name(full_name) IS DISTINCT FROM vx_fold_name(registry_name) THEN 'name_mismatch'
        ELSE 'verified' END
$$;

-- Extracts of the national population database; a later extract updates a person in place.
CREATE TABLE registry (
    national_id  text PRIMARY KEY,
    full_name    text NOT NULL,
    birth_date   date NOT NULL,
    sex          text,
    imported_at  timestamptz NOT NULL DEFAULT now()
);

-- Each person's reconciliation status (null until first checked) and whether their history changed
-- since the reviewer last read it (the reviewer recomputes their flags and status).
ALTER TABLE persons ADD COLUMN registry_status text
    CHECK (registry_status IN ('verified', 'name_mismatch', 'birth_date_mismatch', 'not_found'));
ALTER TABLE persons ADD COLUMN review_due boolean NOT NULL DEFAULT true;
-- Bumped with every change that makes a person due: a reviewer clears review_due only if it is
-- unchanged since it read the history, so it never holds the person's row while it works.
ALTER TABLE persons ADD COLUMN review_seq bigint NOT NULL DEFAULT 0;
CREATE INDEX persons_review_due ON persons (national_id) WHERE review_due;

-- One counted record per person and day: the first one persisted claims the day; a second record of
-- the same person on the same day (two sites, or the hospital and the district) is stored with
-- counted = false, a probable duplicate of the record holding the day.
ALTER TABLE doses ADD COLUMN counted boolean NOT NULL DEFAULT true;
CREATE TABLE person_days (
    national_id  text NOT NULL,
    day          date NOT NULL,
    site_id      integer NOT NULL,
    record_id    text NOT NULL,
    PRIMARY KEY (national_id, day)
);
INSERT INTO person_days (national_id, day, site_id, record_id)
SELECT DISTINCT ON (national_id, vx_day(administered_at)) national_id, vx_day(administered_at), site_id, record_id
FROM doses ORDER BY national_id, vx_day(administered_at), persisted_at, administered_at, site_id, record_id;
UPDATE doses d SET counted = false
WHERE NOT EXISTS (SELECT 1 FROM person_days p WHERE p.site_id = d.site_id AND p.record_id = d.record_id
                  AND p.national_id = d.national_id);

-- The record's current version (corrections apply only when newer: stream order within the site's
-- shard), its person, and whether it was withdrawn (the key stays: the record id is spent).
ALTER TABLE dose_keys ADD COLUMN national_id text;
ALTER TABLE dose_keys ADD COLUMN version text NOT NULL DEFAULT '';
ALTER TABLE dose_keys ADD COLUMN withdrawn boolean NOT NULL DEFAULT false;
UPDATE dose_keys k SET national_id = d.national_id FROM doses d
WHERE d.site_id = k.site_id AND d.record_id = k.record_id AND d.administered_at = k.administered_at;
UPDATE dose_keys SET national_id = '' WHERE national_id IS NULL;
ALTER TABLE dose_keys ALTER COLUMN national_id SET NOT NULL;
-- A correction naming a record id that only another site holds is refused as forbidden, not unknown.
CREATE INDEX dose_keys_record ON dose_keys (record_id);

-- Every earlier version of a corrected record, with who changed it and when. The original is copied
-- here at its first correction (version ''), so a record never corrected costs nothing here.
CREATE TABLE dose_versions (
    site_id         integer NOT NULL,
    record_id       text NOT NULL,
    version         text NOT NULL,
    op              text NOT NULL CHECK (op IN ('insert', 'replace', 'withdraw')),
    national_id     text,
    full_name       text,
    birth_date      date,
    sex             text,
    phone           text,
    vaccine         text,
    lot             text,
    dose_number     smallint,
    administered_at timestamptz,
    batch_id        text NOT NULL,
    changed_by      text NOT NULL,
    received_at     timestamptz NOT NULL,
    applied         boolean NOT NULL,  -- false: arrived after a newer version, kept but not applied
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, record_id, version)
);

-- Counted doses per day, site, product and dose number (as submitted), written in the same
-- transaction as the doses: statistics cannot drift. Province comes from the site.
CREATE TABLE dose_stats (
    day          date NOT NULL,
    site_id      integer NOT NULL,
    vaccine      text NOT NULL,
    dose_number  smallint NOT NULL,
    doses        bigint NOT NULL,
    PRIMARY KEY (day, site_id, vaccine, dose_number)
);
INSERT INTO dose_stats SELECT vx_day(administered_at), site_id, vaccine, dose_number, count(*)
FROM doses WHERE counted GROUP BY 1, 2, 3, 4;

-- What reached Postgres per site and administration day, for reconciliation against ingest's own
-- count: doses in persisted batches (resubmissions included), new records, and corrections.
CREATE TABLE intake (
    site_id    integer NOT NULL,
    day        date NOT NULL,
    received   bigint NOT NULL DEFAULT 0,
    inserted   bigint NOT NULL DEFAULT 0,
    withdrawn  bigint NOT NULL DEFAULT 0,
    restored   bigint NOT NULL DEFAULT 0,
    moved_in   bigint NOT NULL DEFAULT 0,
    moved_out  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, day)
);
INSERT INTO intake (site_id, day, received, inserted)
SELECT site_id, vx_day(administered_at), count(*), count(*) FROM doses GROUP BY 1, 2;

-- The review list: records a site should look at, with the reason.
CREATE TABLE review_flags (
    site_id          integer NOT NULL,
    record_id        text NOT NULL,
    flag             text NOT NULL,
    national_id      text NOT NULL,
    administered_at  timestamptz NOT NULL,
    detail           text NOT NULL DEFAULT '',
    flagged_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, record_id, flag)
);
CREATE INDEX review_flags_person ON review_flags (national_id);

ALTER TABLE batches ADD COLUMN kind text NOT NULL DEFAULT 'doses' CHECK (kind IN ('doses', 'replace', 'withdraw'));
-- For a correction: the persons whose history it changed, so that however often its entry is
-- delivered, their certificates are rebuilt.
ALTER TABLE batches ADD COLUMN persons text[];

-- Reconciliation starts with this migration: ingest counts what it accepts from now on (in Redis);
-- what was persisted before is taken as accepted, and older dead letters as counted already.
CREATE TABLE accepted_baseline (
    site_id   integer NOT NULL,
    day       date NOT NULL,
    accepted  bigint NOT NULL,
    PRIMARY KEY (site_id, day)
);
INSERT INTO accepted_baseline SELECT site_id, day, received FROM intake;
ALTER TABLE dead_letters ADD COLUMN counted_by_ingest boolean NOT NULL DEFAULT false;
ALTER TABLE dead_letters ALTER COLUMN counted_by_ingest SET DEFAULT true;
