#!/usr/bin/env bash
# Set harvest up in ./.venv (idempotent) and run one thing in it:
#   bash scripts/bootstrap.sh demo [harvest demo flags]   — the main job
#   bash scripts/bootstrap.sh test [pytest flags]         — the test suite
#   bash scripts/bootstrap.sh check                       — lint, format and type checks
#   bash scripts/bootstrap.sh setup                       — set up only
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for p in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$p" ] || continue
    command -v "$p" >/dev/null 2>&1 || continue
    if "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "harvest needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(pick_python)
  "$py" -m venv .venv
fi
# Dependencies from the lock file, every file checked against its sha256 (requirements/test.lock:
# the runtime's pins and the [test] extra's; `bash scripts/lock.sh` re-locks after a change to
# pyproject.toml), then harvest itself, editable, built with the locked setuptools. The stamp holds
# the digest of the lock and pyproject.toml: a changed lock (a pull, a re-lock) installs again.
lock=requirements/test.lock
stamp=.venv/.harvest-installed
want=$(.venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in sys.argv[1:])).hexdigest())' pyproject.toml "$lock")
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing harvest's dependencies from $lock…" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r "$lock"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" >"$stamp"
fi

# harvest starts a private redis-server for the demo and the tests unless HARVEST_REDIS_URL
# (demo) / HARVEST_TEST_REDIS_URL (tests) points at one; make sure the binary exists.
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${HARVEST_REDIS_URL:-}${HARVEST_TEST_REDIS_URL:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server (Debian package)…" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server not found: install it (e.g. 'sudo apt-get install redis-server' or 'brew install redis')," >&2
    echo "or set HARVEST_REDIS_URL / HARVEST_TEST_REDIS_URL to a Redis you run." >&2
    exit 1
  fi
fi

port_open() { .venv/bin/python -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 2)" 2>/dev/null; }

# The chaos test runs on RabbitMQ too (tests/test_chaos.py). When nothing listens on 5672 and
# HARVEST_TEST_AMQP_URL is unset, start a local RabbitMQ (installing Debian's package as root);
# where that is not possible the RabbitMQ test is skipped with its reason.
ensure_rabbitmq() {
  [ -z "${HARVEST_TEST_AMQP_URL:-}" ] || return 0
  port_open 5672 && return 0
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing rabbitmq-server (Debian package)…" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null || true
    fi
  fi
  if command -v rabbitmq-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    port_open 5672 || { echo "starting rabbitmq-server…" >&2; rabbitmq-server -detached >/dev/null 2>&1 || true; }
    for _ in $(seq 1 90); do port_open 5672 && return 0; sleep 1; done
  fi
  echo "no RabbitMQ on 127.0.0.1:5672: the RabbitMQ chaos test will be skipped" >&2
}

# The alert rules' tests run promtool (Debian's prometheus package); without it they are skipped
# with their reason.
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus)…" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || true
    command -v systemctl >/dev/null 2>&1 && systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null 2>&1 || echo "promtool not found: the alert-rule tests will be skipped" >&2
}

# The console's browser test drives Debian's chromium (Playwright's own browser download does not
# work offline); without it that test is skipped with its reason.
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (Debian package)…" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || true
  fi
  [ -x /usr/bin/chromium ] || echo "chromium not found: the console's browser test will be skipped" >&2
}

cmd=${1:-setup}
shift || true
case "$cmd" in
  demo) exec .venv/bin/harvest demo "$@" ;;
  test) ensure_rabbitmq; ensure_promtool; ensure_chromium; exec .venv/bin/python -m pytest "$@" ;;
  check)
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy ;;
  setup) echo "harvest is set up in .venv (activate: . .venv/bin/activate)" ;;
  *) echo "usage: bash scripts/bootstrap.sh demo|test|check|setup [args]" >&2; exit 2 ;;
esac
