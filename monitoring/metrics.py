"""Every metric vaxline exports, declared once.

Names follow Prometheus conventions: `vaxline_` prefix, base units, `_total`
counters, `_seconds` histograms. In a multi-process deployment the parent
sets PROMETHEUS_MULTIPROC_DIR before any child starts (see deploy/supervisor.py);
gauges therefore say how their per-process values combine.
"""

from prometheus_client import Counter, Gauge, Histogram

from .names import (  # noqa: F401 (every name, for whoever reads metrics by name)
    BACKPRESSURE_REJECTIONS,
    BATCHES_ACCEPTED,
    BATCHES_PERSISTED,
    BUILD_INFO,
    CERTIFICATE_LOOKUPS,
    CERTIFICATES_ISSUED,
    CERTIFICATES_REVOKED,
    CERTIFICATES_UNCHANGED,
    CERTIFICATES_UPDATED,
    CERTIFIERS_RUNNING,
    CERTIFY_BACKLOG,
    CERTIFY_DURATION,
    CERTIFY_FAILURES,
    CERTIFY_RETRIES,
    CLIENT_TIMEOUTS,
    CORRECTION_CHANGES_PENDING,
    CORRECTION_REQUESTS,
    CORRECTION_REQUESTS_EXPIRED,
    CORRECTIONS_APPLIED,
    DEAD_LETTERS,
    DOSES_ACCEPTED,
    DOSES_DUPLICATE,
    DOSES_INSERTED,
    DOSES_REJECTED,
    FAILED_HANDOFFS,
    FRESHNESS,
    GATHERED_DOSES,
    HTTP_LATENCY,
    HTTP_REQUESTS,
    NOTIFICATIONS_BACKLOG,
    NOTIFICATIONS_FAILED,
    NOTIFICATIONS_SENT,
    NOTIFICATIONS_SKIPPED,
    NOTIFIERS_RUNNING,
    OPEN_CONNECTIONS,
    PERSIST_DURATION,
    PERSIST_RETRIES,
    PG_POOL_IN_USE,
    PROCESS_CPU,
    PROCESS_MAX_FDS,
    PROCESS_OPEN_FDS,
    PROCESS_RESIDENT_MEMORY,
    REPLICA_LAG,
    REVIEW_BACKLOG,
    REVIEW_PERSONS,
    REVIEW_RETRIES,
    REVIEWERS_RUNNING,
    SIGNING_KEY_VALIDITY,
    STOOD_ASIDE,
    STREAM_BACKLOG,
    STREAM_LAG,
    STREAM_PENDING,
    WORKERS_RUNNING,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Past the 2-second SLO a quantile is interpolated within its bucket, as if its observations were spread evenly
# over it. With nothing between 10 and 30 s, the days' certificate p99s past 10 s read 25.6-29.7 s: how many
# certificates took over 10 s, not how long they took. The bounds between 2 and 30 s make a missed p99 say more
# nearly by how much.
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 300, 900, 3600)

# Ingest
http_requests = Counter(HTTP_REQUESTS, "HTTP requests answered", ["route", "status"])
http_latency = Histogram(HTTP_LATENCY, "Time to answer", ["route"], buckets=LATENCY_BUCKETS)
doses_accepted = Counter(DOSES_ACCEPTED, "Doses accepted into the stream (202)")
doses_rejected = Counter(DOSES_REJECTED, "Doses rejected at validation", ["reason"])
batches_accepted = Counter(BATCHES_ACCEPTED, "Batches appended to the stream")
backpressure_rejections = Counter(BACKPRESSURE_REJECTIONS, "Requests refused with 503 over the backlog bound")
open_connections = Gauge(
    OPEN_CONNECTIONS, "Open client connections", multiprocess_mode="livesum"
)
client_timeouts = Counter(
    CLIENT_TIMEOUTS, "Requests cut off because their headers or body arrived too slowly", ["phase"]
)

# Stream (read by every worker's housekeeping and by ingest's backpressure poller; the newest reading wins)
stream_backlog = Gauge(
    STREAM_BACKLOG, "Entries in a shard not yet trimmed", ["shard"], multiprocess_mode="mostrecent"
)
stream_pending = Gauge(
    STREAM_PENDING, "Entries delivered to a worker and not yet acknowledged", ["shard"],
    multiprocess_mode="mostrecent",
)
stream_lag = Gauge(
    STREAM_LAG, "Entries not yet delivered to any worker (on Redis 6.2: length - pending, an upper bound)", ["shard"],
    multiprocess_mode="mostrecent",
)
workers_running = Gauge(WORKERS_RUNNING, "Worker processes consuming the streams", multiprocess_mode="livesum")
pg_pool_in_use = Gauge(
    PG_POOL_IN_USE, "Postgres connections checked out of the pools", ["role"], multiprocess_mode="livesum"
)

# Workers
doses_inserted = Counter(DOSES_INSERTED, "Doses inserted into Postgres")
doses_duplicate = Counter(DOSES_DUPLICATE, "Doses already persisted (idempotent redelivery or resubmission)")
batches_persisted = Counter(BATCHES_PERSISTED, "Batches whose receipt was written")
dead_letters = Counter(DEAD_LETTERS, "Stream entries moved to the dead-letter stream and table")
persist_retries = Counter(PERSIST_RETRIES, "Transient persist failures retried", ["error"])
gathered_doses = Histogram(
    GATHERED_DOSES, "Doses per persist transaction",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000),
)
persist_duration = Histogram(
    PERSIST_DURATION, "COPY-to-COMMIT time of one transaction", buckets=LATENCY_BUCKETS
)
freshness = Histogram(
    FRESHNESS, "Time from the 202 to a stage", ["stage"], buckets=FRESHNESS_BUCKETS
)

# Certificates (the certifier processes)
certificates_issued = Counter(CERTIFICATES_ISSUED, "Certificates signed and stored")
certificates_revoked = Counter(CERTIFICATES_REVOKED, "Certificates revoked by a newer one")
certificates_updated = Counter(
    CERTIFICATES_UPDATED,
    "Current certificates whose view changed but not their DCC (e.g. a second record of a counted dose)",
)
certificates_unchanged = Counter(
    CERTIFICATES_UNCHANGED, "Persons handed to a certifier whose certificate already stated their history"
)
certify_failures = Counter(
    CERTIFY_FAILURES, "Persons whose certificate could not be built (a bug: see the logs)", ["error"]
)
certify_retries = Counter(CERTIFY_RETRIES, "Transient certify failures retried", ["error"])
certify_backlog = Gauge(
    CERTIFY_BACKLOG, "Handoffs from the persisting workers not yet certified", multiprocess_mode="mostrecent"
)
certify_duration = Histogram(
    CERTIFY_DURATION, "Time to read, sign and store one group of certificates", buckets=LATENCY_BUCKETS
)
certifiers_running = Gauge(CERTIFIERS_RUNNING, "Certifier processes", multiprocess_mode="livesum")
certificate_lookups = Counter(
    CERTIFICATE_LOOKUPS, "Lookups by national ID and birth date", ["result"]
)

corrections_applied = Counter(
    CORRECTIONS_APPLIED,
    "Site corrections (replace, withdraw) by whether they applied (false: a newer version came first)",
    ["op", "applied"],
)
correction_requests = Counter(
    CORRECTION_REQUESTS,
    "Citizen correction requests: created, confirmations by outcome, decisions", ["event"],
)
review_persons = Counter(REVIEW_PERSONS, "Persons whose review flags and registry status were recomputed")
review_retries = Counter(REVIEW_RETRIES, "Transient review failures retried", ["error"])
reviewers_running = Gauge(REVIEWERS_RUNNING, "Reviewer processes", multiprocess_mode="livesum")
review_backlog = Gauge(REVIEW_BACKLOG, "Persons due for review (new or changed history)",
                       multiprocess_mode="mostrecent")
stood_aside = Counter(STOOD_ASIDE, "Seconds reviewers and notifiers waited before a round while persisting or"
                      " certifying was behind (stand_aside_after)", ["role"])
failed_handoffs = Counter(FAILED_HANDOFFS, "Persons whose certify handoff failed on an error of the data, kept in"
                          " failed_handoffs for `vaxline deadletters replay --certify`")
correction_requests_expired = Counter(
    CORRECTION_REQUESTS_EXPIRED, "Unconfirmed citizen correction requests deleted with their evidence at expiry,"
    " by how their identity was to be checked (code, in_person)", ["identity"],
)
correction_changes_pending = Gauge(
    CORRECTION_CHANGES_PENDING, "Approved correction-request changes not yet in the stream (re-driven)",
    multiprocess_mode="mostrecent",
)

# Operations: the read replica, the signing key, each process's resources (multiprocess mode drops
# prometheus-client's process collector, so each process samples its own: monitoring/processes.py).
replica_lag = Gauge(
    REPLICA_LAG, "Seconds the read replica (DATABASE_READ_URL) trails the primary; +Inf when it does not answer",
    ["role"], multiprocess_mode="livemax",  # role="ingest", its reader: no series without a replica
)
# Labelled (role="certify", the processes that read it), so that no other process exports an unset 0: a gauge
# without labels has a value, 0, in every process from the start.
signing_key_validity = Gauge(
    SIGNING_KEY_VALIDITY, "Seconds until the signer certificate (DSC) of the key certifiers sign with expires;"
    " a key signs only while that exceeds a certificate's 12 months; 0 when no key can sign", ["role"],
    multiprocess_mode="livemax",
)
# "liveall": the multiprocess exposition adds each live process's `pid` label itself (an own `pid` label
# would be dropped by the other modes); counters keep an own `pid`, as they are summed per label set.
process_resident_memory = Gauge(
    PROCESS_RESIDENT_MEMORY, "Resident memory of one vaxline process", ["role"], multiprocess_mode="liveall"
)
process_cpu = Counter(PROCESS_CPU, "CPU time (user + system) of one vaxline process", ["role", "pid"])
process_open_fds = Gauge(
    PROCESS_OPEN_FDS, "Open file descriptors (sockets included) of one vaxline process", ["role"],
    multiprocess_mode="liveall",
)
process_max_fds = Gauge(
    PROCESS_MAX_FDS, "The open-file limit (RLIMIT_NOFILE) of one vaxline process", ["role"],
    multiprocess_mode="liveall",
)
build_info = Gauge(BUILD_INFO, "Always 1: the running vaxline's version and Python", ["version", "python"],
                   multiprocess_mode="livemax")

# Notifications (the notifier processes): an SMS with a link per stored certificate or decided correction request
notifications_sent = Counter(NOTIFICATIONS_SENT, "Notifications the gateway took", ["kind"])
notifications_failed = Counter(
    NOTIFICATIONS_FAILED, "Notification attempts the gateway failed (each retried after a backoff)", ["kind"]
)
notifications_skipped = Counter(
    NOTIFICATIONS_SKIPPED, "Notifications not sent: no phone on record for the person", ["kind"]
)
notifications_backlog = Gauge(
    NOTIFICATIONS_BACKLOG, "Notifications not yet sent (due, in flight, or waiting out a backoff)",
    multiprocess_mode="mostrecent",
)
notifiers_running = Gauge(NOTIFIERS_RUNNING, "Notifier processes", multiprocess_mode="livesum")

# Known label values are exported from the start (at zero), so a dashboard shows 0, not "no data".
for _stage in ("persisted", "certified"):
    freshness.labels(stage=_stage)
for _identity in ("code", "in_person"):
    correction_requests_expired.labels(identity=_identity)
for _kind in ("certificate", "correction"):
    for _counter in (notifications_sent, notifications_failed, notifications_skipped):
        _counter.labels(kind=_kind)
