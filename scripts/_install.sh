# Sourced by scripts/up and scripts/test: make sure Java and Maven (for the local Kafka broker) and the
# project's virtualenv (.venv) are installed. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}${PACKAGER_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  command -v java >/dev/null 2>&1 || [ -n "${KAFKA_HOME:-}" ] || need_apt+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || [ -n "${KAFKA_HOME:-}" ] || need_apt+=(maven)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing ${need_apt[*]} for the local Kafka broker..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "Missing ${need_apt[*]}: install them, or set KAFKA_HOME or KAFKA_BOOTSTRAP_SERVERS." >&2
  fi
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Python 3.11 or newer is required (found $("$PYTHON" --version 2>&1))." >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The exact versions of requirements-test.lock (every dependency pinned with its hashes; `bash scripts/lock`
# regenerates it), then the project itself without dependencies, built by the locked setuptools.
# Reinstall only when the lock or pyproject.toml changed since the last install.
stamp=.venv/.installed-$(cat requirements-test.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements-test.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
