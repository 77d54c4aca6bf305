"""Every metric vaxline exports, declared once.

Names follow Prometheus conventions: `vaxline_` prefix, base units, `_total`
counters, `_seconds` histograms. In a multi-process deployment the parent
sets PROMETHEUS_MULTIPROC_DIR before any child starts (see deploy/supervisor.py);
gauges therefore say how their per-process values combine.
"""

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)

# Ingest
http_requests = Counter("vaxline_http_requests_total", "HTTP requests answered", ["route", "status"])
http_latency = Histogram("vaxline_http_request_duration_seconds", "Time to answer", ["route"], buckets=LATENCY_BUCKETS)
doses_accepted = Counter("vaxline_doses_accepted_total", "Doses accepted into the stream (202)")
doses_rejected = Counter("vaxline_doses_rejected_total", "Doses rejected at validation", ["reason"])
batches_accepted = Counter("vaxline_batches_accepted_total", "Batches appended to the stream")
backpressure_rejections = Counter("vaxline_backpressure_rejections_total", "Requests refused with 503 over the backlog bound")
open_connections = Gauge(
    "vaxline_open_connections", "Open client connections", multiprocess_mode="livesum"
)
client_timeouts = Counter(
    "vaxline_client_timeouts_total", "Requests cut off because their headers or body arrived too slowly", ["phase"]
)

# Stream (read by every worker's housekeeping and by ingest's backpressure poller; the newest reading wins)
stream_backlog = Gauge(
    "vaxline_stream_backlog", "Entries in a shard not yet trimmed", ["shard"], multiprocess_mode="mostrecent"
)
stream_pending = Gauge(
    "vaxline_stream_pending", "Entries delivered to a worker and not yet acknowledged", ["shard"],
    multiprocess_mode="mostrecent",
)
stream_lag = Gauge(
    "vaxline_stream_lag", "Entries not yet delivered to any worker (on Redis 6.2: length - pending, an upper bound)", ["shard"],
    multiprocess_mode="mostrecent",
)
workers_running = Gauge("vaxline_workers_running", "Worker processes consuming the streams", multiprocess_mode="livesum")
pg_pool_in_use = Gauge(
    "vaxline_pg_pool_in_use", "Postgres connections checked out of the pools", ["role"], multiprocess_mode="livesum"
)

# Workers
doses_inserted = Counter("vaxline_doses_inserted_total", "Doses inserted into Postgres")
doses_duplicate = Counter("vaxline_doses_duplicate_total", "Doses already persisted (idempotent redelivery or resubmission)")
batches_persisted = Counter("vaxline_batches_persisted_total", "Batches whose receipt was written")
dead_letters = Counter("vaxline_dead_letters_total", "Stream entries moved to the dead-letter stream and table")
persist_retries = Counter("vaxline_persist_retries_total", "Transient persist failures retried", ["error"])
gathered_doses = Histogram(
    "vaxline_persist_batch_doses", "Doses per persist transaction",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000),
)
persist_duration = Histogram(
    "vaxline_persist_duration_seconds", "COPY-to-COMMIT time of one transaction", buckets=LATENCY_BUCKETS
)
freshness = Histogram(
    "vaxline_freshness_seconds", "Time from the 202 to a stage", ["stage"], buckets=FRESHNESS_BUCKETS
)

# Certificates (the certifier processes)
certificates_issued = Counter("vaxline_certificates_issued_total", "Certificates signed and stored")
certificates_revoked = Counter("vaxline_certificates_revoked_total", "Certificates revoked by a newer one")
certificates_updated = Counter(
    "vaxline_certificates_updated_total",
    "Current certificates whose view changed but not their DCC (e.g. a second record of a counted dose)",
)
certificates_unchanged = Counter(
    "vaxline_certificates_unchanged_total", "Persons handed to a certifier whose certificate already stated their history"
)
certify_failures = Counter(
    "vaxline_certify_failures_total", "Persons whose certificate could not be built (a bug: see the logs)", ["error"]
)
certify_retries = Counter("vaxline_certify_retries_total", "Transient certify failures retried", ["error"])
certify_backlog = Gauge(
    "vaxline_certify_backlog", "Handoffs from the persisting workers not yet certified", multiprocess_mode="mostrecent"
)
certify_duration = Histogram(
    "vaxline_certify_duration_seconds", "Time to read, sign and store one group of certificates", buckets=LATENCY_BUCKETS
)
certifiers_running = Gauge("vaxline_certifiers_running", "Certifier processes", multiprocess_mode="livesum")
certificate_lookups = Counter(
    "vaxline_certificate_lookups_total", "Lookups by national ID and birth date", ["result"]
)

corrections_applied = Counter(
    "vaxline_corrections_applied_total",
    "Site corrections (replace, withdraw) by whether they applied (false: a newer version came first)",
    ["op", "applied"],
)
correction_requests = Counter(
    "vaxline_correction_requests_total",
    "Citizen correction requests: created, confirmations by outcome, decisions", ["event"],
)
review_persons = Counter("vaxline_review_persons_total", "Persons whose review flags and registry status were recomputed")
review_retries = Counter("vaxline_review_retries_total", "Transient review failures retried", ["error"])
reviewers_running = Gauge("vaxline_reviewers_running", "Reviewer processes", multiprocess_mode="livesum")
review_backlog = Gauge("vaxline_review_backlog", "Persons due for review (new or changed history)",
                       multiprocess_mode="mostrecent")

# Known label values are exported from the start (at zero), so a dashboard shows 0, not "no data".
for _stage in ("persisted", "certified"):
    freshness.labels(stage=_stage)
