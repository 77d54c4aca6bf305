"""`python -m deploy.healthcheck [URL]`: the container's health check (deploy/Containerfile's HEALTHCHECK).

Exit 0 when the URL answers 200, 1 otherwise, with the reason on stderr. The URL is the argument, else
VAXLINE_HEALTHCHECK_URL, else ingest's readiness (http://127.0.0.1:8080/readyz: Postgres and Redis reachable,
Redis not evicting). A `vaxline work` container points it at its metrics port (…:9465/metrics): then it is
healthy only while at least one consumer (worker, certifier or reviewer) runs with Postgres and Redis.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from monitoring import names

DEFAULT = "http://127.0.0.1:8080/readyz"
RUNNING = {names.WORKERS_RUNNING, names.CERTIFIERS_RUNNING, names.REVIEWERS_RUNNING}


def check(url: str, *, timeout: float = 3.0) -> str | None:
    """None when healthy; else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode()
    except urllib.error.HTTPError as e:
        return f"{url} answered {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return f"{url} does not answer: {e}"
    if url.rstrip("/").endswith("/metrics"):
        running = sum(sample.value for family in text_string_to_metric_families(body)
                      for sample in family.samples if sample.name in RUNNING)
        if running < 1:
            return f"{url}: no worker, certifier or reviewer runs (they wait for Postgres or Redis, or keep failing)"
    return None


def main(argv: list[str]) -> int:
    url = argv[0] if argv else os.environ.get("VAXLINE_HEALTHCHECK_URL", DEFAULT)
    problem = check(url)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
