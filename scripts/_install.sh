# Sourced by scripts/up and scripts/test: make sure Java and Maven (for the local Kafka broker) and the
# project's virtualenv (.venv) are installed. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Java and Maven run the local Kafka broker and s3proxy (the S3-compatible server of the store tests), so
# they are needed even with KAFKA_BOOTSTRAP_SERVERS or KAFKA_HOME set.
need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing ${need_apt[*]} for the local Kafka broker and s3proxy from Debian's packages (a minute or two)..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "Missing ${need_apt[*]}: install them (the local broker and s3proxy need both)." >&2
  fi
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Python 3.11 or newer is required (found $("$PYTHON" --version 2>&1))." >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "Creating the virtualenv .venv..." >&2
  "$PYTHON" -m venv .venv
fi

# pip's own output, condensed to a progress line every 10 packages and the steps, with a line every 10 s
# while pip says nothing (a first install takes a minute or two): never minutes of silence. The whole
# output goes to .venv/install.log, whose end is shown if pip fails.
pip_with_progress() {
  local total=$1 started=$SECONDS heartbeat status
  shift
  (
    # Its sleep is ended with it, so nothing holds the terminal (or a reader of this output) afterwards.
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 10 &
      sleeper=$!
      wait "$sleeper"
      echo "  ... still installing ($((SECONDS - started))s)" >&2
    done
  ) &
  heartbeat=$!
  set +e
  "$@" 2>&1 | tee -a .venv/install.log | {
    n=0
    while IFS= read -r line; do
      case "$line" in
        Collecting*)
          n=$((n + 1))
          if [ $((n % 10)) -eq 0 ]; then
            echo "  collected $n of $total packages ($((SECONDS - started))s)" >&2
          fi
          ;;
        "Installing collected packages"*)
          if [ "$n" -gt 1 ]; then
            echo "  installing $n packages into .venv ($((SECONDS - started))s)..." >&2
          fi
          ;;
      esac
    done
  }
  status=${PIPESTATUS[0]}
  set -e
  kill "$heartbeat" 2>/dev/null || true
  wait "$heartbeat" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    echo "pip failed (exit $status); the end of .venv/install.log:" >&2
    tail -n 30 .venv/install.log >&2
    return "$status"
  fi
  echo "  done in $((SECONDS - started))s" >&2
}

# The exact versions of requirements-test.lock (every dependency pinned with its hashes; `bash scripts/lock`
# regenerates it), then the project itself without dependencies, built by the locked setuptools.
# Reinstall only when the lock or pyproject.toml changed since the last install.
stamp=.venv/.installed-$(cat requirements-test.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  locked=$(grep -cE '^[A-Za-z0-9_.-]+==' requirements-test.lock || true)
  echo "Installing $locked locked Python packages into .venv (the first time takes a minute or two)..." >&2
  : >.venv/install.log
  pip_with_progress "$locked" .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
    --require-hashes -r requirements-test.lock
  echo "Installing the project itself into .venv..." >&2
  pip_with_progress 1 .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
    --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
