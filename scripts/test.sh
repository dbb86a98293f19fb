#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests
# need, then runs formatting and lint checks and every test — once embedded
# (SQLite), then the zapgate crate's tests again distributed, against the
# PostgreSQL (and Redis, RabbitMQ) that scripts/services.sh installs and starts,
# once with work queued in PostgreSQL and once routed through RabbitMQ.
#
#   scripts/test.sh            # everything
#   ZAPGATE_TEST_SCALE=0.1 scripts/test.sh   # scale tests at a tenth of their size
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif need sudo; then sudo "$@"; else "$@"; fi; }

if ! need cargo; then
  echo "scripts/test.sh: a Rust toolchain (cargo) is required: https://rustup.rs" >&2
  exit 1
fi
# The crash-point tests signal the server with kill(1).
if ! need kill; then as_root apt-get update -qq && as_root apt-get install -y -qq procps; fi

# Tests and lints share one feature set so the workspace is compiled once per mode.
FEATURES=(--workspace --all-targets --features zapgate/test-hooks)

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy "${FEATURES[@]}" -- -D warnings
echo "==> promtool: alert rules check + unit tests (deploy/prometheus)"
if ! need promtool; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
echo "==> tests (embedded)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run "${FEATURES[@]}" --no-fail-fast
else
  cargo test "${FEATURES[@]}" --no-fail-fast
fi
echo "==> services (PostgreSQL, Redis, RabbitMQ)"
services_env=$(scripts/services.sh)
eval "$services_env"
echo "$services_env" | sed 's/^export /    /'
echo "==> moto_server (S3-compatible server for the S3 media tests)"
if ! need moto_server; then
  if [ ! -x target/moto/bin/moto_server ]; then
    if ! { need python3 && python3 -m venv target/moto >/dev/null 2>&1; }; then
      rm -rf target/moto
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      python3 -m venv target/moto
    fi
    target/moto/bin/pip install -q 'moto[server]'
  fi
  export PATH="$PWD/target/moto/bin:$PATH"
fi
export ZAPGATE_TEST_S3=1
echo "==> tests (distributed: PostgreSQL)"
# The zapgate crate's tests (they start servers; the harness gives each a fresh
# database through ZAPGATE_TEST_DATABASE_URL) and the backends' contract tests
# (a fresh database each). Selected within the workspace-wide feature set so
# nothing is rebuilt (`-p zapgate` alone unifies features differently and
# recompiles sqlx and the crates); cargo test can only narrow to integration tests.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run "${FEATURES[@]}" --no-fail-fast -E 'package(zapgate) | package(zapgate-backends)'
else
  cargo test --workspace --features zapgate/test-hooks --no-fail-fast --test '*'
fi
echo "==> tests (distributed through RabbitMQ: relay → work shards → workers)"
# The zapgate crate's tests once more, with work routed through the broker
# (each test server under a topology of its own, deleted when it stops).
if cargo nextest --version >/dev/null 2>&1; then
  ZAPGATE_TEST_BROKER=1 cargo nextest run "${FEATURES[@]}" --no-fail-fast -E 'package(zapgate)'
else
  ZAPGATE_TEST_BROKER=1 cargo test --workspace --features zapgate/test-hooks --no-fail-fast -p zapgate --test '*'
fi
echo "==> RabbitMQ restarted under a running gateway (alone: every other test would see it)"
if cargo nextest --version >/dev/null 2>&1; then
  ZAPGATE_TEST_BROKER=1 ZAPGATE_TEST_RABBITMQ_RESTART=1 cargo nextest run "${FEATURES[@]}" --no-fail-fast \
    -E 'package(zapgate) & test(=rabbitmq_restarting_mid_run_loses_nothing)'
else
  ZAPGATE_TEST_BROKER=1 ZAPGATE_TEST_RABBITMQ_RESTART=1 cargo test --workspace --features zapgate/test-hooks \
    -p zapgate --test broker -- --exact rabbitmq_restarting_mid_run_loses_nothing
fi
echo "==> zapgate-bench --quick (proves the benchmark runs; asserts no timing)"
cargo build -q -p zapgate -p zapgate-bench --features zapgate/test-hooks
cargo run -q -p zapgate-bench -- --quick --seconds 1
