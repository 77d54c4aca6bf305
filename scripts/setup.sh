#!/usr/bin/env bash
# Prepare .venv with vaxline and its test dependencies; quick when nothing changed.
# Needs only Python 3.11+ (on Debian, the venv module comes from python3-venv,
# which this script installs with apt-get when it is missing and it runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "vaxline needs Python 3.11 or newer as \`$python\` (set PYTHON=...)" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq "python3-venv" >/dev/null
            "$python" -m venv .venv
        else
            echo "cannot create a virtualenv: install python3-venv (sudo apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
fi

# promtool (Debian's prometheus package) checks the shipped alert rules and scrape config in the tests.
if ! command -v promtool >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
        >/dev/null || echo "could not install promtool; its tests will be skipped outside CI" >&2
fi

# redis-server and redis-cli (Debian's redis-server package, 7.0) form the 3+3 Redis Cluster of the cluster
# tests and of `benchmarks/e2e.py --redis-cluster` (deploy/rediscluster.py).
if ! { [ -x /usr/bin/redis-server ] && [ -x /usr/bin/redis-cli ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server) \
        >/dev/null || echo "could not install redis-server; the Redis Cluster tests will be skipped outside CI" >&2
fi

# Headless chromium and its driver (Debian's packages) run the portal's browser tests through Selenium.
if ! { command -v chromium && command -v chromedriver; } >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
        >/dev/null || echo "could not install chromium; the browser tests will be skipped outside CI" >&2
fi

# systemd-analyze (Debian's systemd package) verifies the unit files of deploy/systemd in the tests.
if ! command -v systemd-analyze >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd) \
        >/dev/null || echo "could not install systemd-analyze; its test will be skipped outside CI" >&2
fi

stamp=.venv/.vaxline-installed
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test,loadtest]'
    echo "$wanted" > "$stamp"
fi
