-- The core pipeline's tables: sites, persons, doses (partitioned), the global
-- idempotency key table, batch receipts and dead letters.

CREATE TABLE sites (
    site_id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code        text NOT NULL UNIQUE,
    name        text NOT NULL,
    province    smallint NOT NULL,
    kind        text NOT NULL DEFAULT 'fixed' CHECK (kind IN ('fixed', 'mobile')),
    token_hash  bytea UNIQUE,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Identity is the national ID; a phone number is contact data, never unique.
CREATE TABLE persons (
    national_id text PRIMARY KEY,
    full_name   text NOT NULL,
    birth_date  date NOT NULL,
    sex         text,
    phone       text,
    -- Details come from the most recent dose, so a back-entered old record
    -- never overwrites a newer name, whatever order workers persist them in.
    last_administered_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Doses as the site recorded them, partitioned by administration time
-- (from the payload, never the time of receipt), monthly, in Vietnam's time
-- zone. A unique key on a partitioned table must contain the partition key,
-- so the idempotency key (site, record_id) lives in dose_keys beside it.
CREATE TABLE doses (
    site_id         integer NOT NULL,
    record_id       text NOT NULL,
    national_id     text NOT NULL,
    full_name       text NOT NULL,
    birth_date      date NOT NULL,
    sex             text,
    phone           text,
    vaccine         text NOT NULL,
    lot             text NOT NULL,
    dose_number     smallint NOT NULL,
    administered_at timestamptz NOT NULL,
    batch_id        text NOT NULL,
    received_at     timestamptz NOT NULL,
    persisted_at    timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (administered_at);
CREATE INDEX doses_person ON doses (national_id, administered_at);
-- Any valid date persists even before its month's partition exists.
CREATE TABLE doses_default PARTITION OF doses DEFAULT;

CREATE TABLE dose_keys (
    site_id         integer NOT NULL,
    record_id       text NOT NULL,
    administered_at timestamptz NOT NULL,  -- finds the record's partition
    PRIMARY KEY (site_id, record_id)
);

-- One receipt per persisted batch, written in the same transaction as its
-- doses: inserted + duplicates = accepted.
CREATE TABLE batches (
    batch_id     text PRIMARY KEY,
    site_id      integer NOT NULL,
    accepted     integer NOT NULL,
    inserted     integer NOT NULL,
    duplicates   integer NOT NULL,
    received_at  timestamptz NOT NULL,
    persisted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_site ON batches (site_id, received_at);

-- Entries that failed past the delivery bound: kept with their error.
CREATE TABLE dead_letters (
    batch_id     text PRIMARY KEY,
    stream       text NOT NULL,
    entry_id     text NOT NULL,
    deliveries   integer NOT NULL,
    error        text NOT NULL,
    payload      bytea NOT NULL,
    site_id      integer,
    dead_at      timestamptz NOT NULL DEFAULT now()
);
