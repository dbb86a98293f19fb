#!/usr/bin/env bash
# The services the distributed-mode tests run against: PostgreSQL, Redis and
# RabbitMQ on loopback, on a Debian machine with or without systemd. Installs
# what is missing (apt-get), starts only what is not already running, waits
# until each answers, and creates the `zapgate` PostgreSQL role and database.
# It never stops anything.
#
#   scripts/services.sh                  # progress on stderr, `export …` lines on stdout
#   eval "$(scripts/services.sh)"        # …which a shell can evaluate
#   source scripts/services.sh           # exports into the current shell
#
#   ZAPGATE_SERVICES_TIMEOUT=120         # seconds to wait for each service to answer
#
# Exports ZAPGATE_TEST_DATABASE_URL, ZAPGATE_TEST_AMQP_URL and ZAPGATE_TEST_REDIS_URL.

# Sourced: run as a child process (so its shell options and exits stay its own)
# and export what it prints.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  if __zg_services_env=$(bash "${BASH_SOURCE[0]}"); then
    eval "$__zg_services_env"
    unset __zg_services_env
    return 0
  else
    unset __zg_services_env
    return 1
  fi
fi

set -euo pipefail

TIMEOUT=${ZAPGATE_SERVICES_TIMEOUT:-120}
PG_USER=zapgate
PG_PASSWORD=zapgate
PG_DB=zapgate
REDIS_PORT=6379
AMQP_PORT=5672

log() { echo "services: $*" >&2; }
die() {
  echo "scripts/services.sh: error: $*" >&2
  exit 1
}
need() { command -v "$1" >/dev/null 2>&1; }
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "ZAPGATE_SERVICES_TIMEOUT must be a number of seconds, not '$TIMEOUT'"
# Command prefixes (arrays, so `timeout` can run them): as root, and as the postgres
# OS user from / (it need not be able to read our working directory).
if [ "$(id -u)" = 0 ]; then
  ROOT=()
  AS_POSTGRES=(env -C / runuser -u postgres --)
elif need sudo; then
  ROOT=(sudo -n)
  AS_POSTGRES=(env -C / sudo -n -u postgres --)
else
  die "must run as root, or with passwordless sudo"
fi
# Runs a command with its output in a log file; on failure shows the log's tail and dies.
quiet() { # quiet SECONDS WHAT CMD...
  local secs=$1 what=$2
  shift 2
  local out rc=0
  out=$(mktemp)
  timeout --kill-after=10 "$secs" "$@" >"$out" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 40 "$out" >&2
    rm -f "$out"
    [ "$rc" = 124 ] && die "$what: timed out after ${secs}s"
    die "$what: failed (exit $rc)"
  fi
  rm -f "$out"
}
# Polls CMD until it succeeds, up to $TIMEOUT seconds.
wait_for() { # wait_for WHAT CMD...
  local what=$1
  shift
  local end=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "$what did not answer within ${TIMEOUT}s"
    sleep 0.2
  done
}
port_open() { timeout 2 bash -c ">/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

need apt-get || die "this script needs a Debian-based system (apt-get not found)"

# --- install -----------------------------------------------------------------
missing=()
for pkg in postgresql redis-server rabbitmq-server; do
  installed "$pkg" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]} (apt-get)"
  APT=("${ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o Dpkg::Use-Pty=0)
  quiet 300 "apt-get update" "${APT[@]}" update
  quiet 900 "apt-get install ${missing[*]}" "${APT[@]}" install -y --no-install-recommends "${missing[@]}"
fi

# --- PostgreSQL --------------------------------------------------------------
# pg_lsclusters: "15 main 5432 online postgres /var/lib/postgresql/15/main …"
cluster=$(pg_lsclusters --no-header 2>/dev/null | awk '$2 == "main"' | sort -k1,1nr | head -n 1)
if [ -z "$cluster" ]; then
  major=$(ls /usr/lib/postgresql 2>/dev/null | sort -nr | head -n 1)
  [ -n "$major" ] || die "PostgreSQL is installed but no server version is found in /usr/lib/postgresql"
  log "creating PostgreSQL $major cluster 'main'"
  quiet 120 "pg_createcluster $major main" "${ROOT[@]}" pg_createcluster "$major" main
  cluster=$(pg_lsclusters --no-header | awk -v m="$major" '$1 == m && $2 == "main"')
fi
read -r pg_major _ pg_port pg_status _ <<<"$cluster"
[ "$pg_port" = 5432 ] || log "warning: PostgreSQL $pg_major/main listens on port $pg_port, not 5432"
# The multi-process tests run several zapgate processes per test, two tests
# at a time: more than the default 100 connections. Applies at the next start.
pg_conf="/etc/postgresql/$pg_major/main/conf.d/zapgate-tests.conf"
if [ -d "$(dirname "$pg_conf")" ] && [ ! -f "$pg_conf" ]; then
  echo "max_connections = 500" | "${ROOT[@]}" tee "$pg_conf" >/dev/null
  [[ "$pg_status" != online* ]] || log "warning: PostgreSQL was already running; max_connections = 500 applies after its restart"
fi
if [[ "$pg_status" != online* ]]; then
  log "starting PostgreSQL $pg_major/main"
  quiet 120 "pg_ctlcluster $pg_major main start (see /var/log/postgresql/)" \
    "${ROOT[@]}" pg_ctlcluster --skip-systemctl-redirect "$pg_major" main start
fi
wait_for "PostgreSQL (port $pg_port)" pg_isready -q -h 127.0.0.1 -p "$pg_port" -t 2

# Role and database, idempotently (the password and CREATEDB are reset every time).
quiet 60 "creating the PostgreSQL role and database" \
  "${AS_POSTGRES[@]}" psql -X -q -v ON_ERROR_STOP=1 -p "$pg_port" -d postgres <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL
DATABASE_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$pg_port/$PG_DB"
# The tests log in over TCP with the password: prove that works.
quiet 30 "logging in as $PG_USER over TCP ($DATABASE_URL)" \
  psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c 'SELECT 1'

# --- Redis -------------------------------------------------------------------
redis_ping() { [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
if ! redis_ping; then
  if port_open "$REDIS_PORT"; then
    die "port $REDIS_PORT is in use but does not answer a Redis PING"
  fi
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  quiet 30 "redis-server" \
    redis-server --daemonize yes --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
  wait_for "Redis (port $REDIS_PORT)" redis_ping
fi

# --- RabbitMQ ----------------------------------------------------------------
# rabbitmqctl starts an Erlang VM (about half a second) and fails at once while
# the node has not yet registered with epmd, so: AMQP port open → only confirm;
# node registered but port closed → it is booting, wait; neither → start it.
rabbit_registered() { timeout 5 epmd -names 2>/dev/null | grep -q '^name rabbit '; }
await_rabbit() { # await_rabbit SECONDS
  quiet $(($1 + 30)) "rabbitmqctl await_startup (RabbitMQ did not finish booting; see /var/log/rabbitmq/)" \
    rabbitmqctl -q await_startup --timeout "$1"
}
start_rabbit() {
  log "starting RabbitMQ"
  # Every connection and every quorum queue takes file handles from the
  # node's file_handle_cache, sized from the fd limit: at the default 1024,
  # a few hundred queues exhaust it and new connections wait forever in the
  # handshake (the node looks up but never answers). RabbitMQ asks for 65536;
  # the start script runs the node through `su rabbitmq`, so pam_limits sets
  # it, capped by this machine's hard limit (a higher one fails the su).
  local nofile
  nofile=$(ulimit -Hn)
  if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
  printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$nofile" "$nofile" |
    "${ROOT[@]}" tee /etc/security/limits.d/zapgate-rabbitmq.conf >/dev/null
  quiet 60 "rabbitmq-server -detached" "${ROOT[@]}" rabbitmq-server -detached
  wait_for "RabbitMQ (node registering with epmd; see /var/log/rabbitmq/)" rabbit_registered
}
await_rabbit_port() {
  log "waiting for RabbitMQ to finish booting"
  await_rabbit "$TIMEOUT"
  wait_for "RabbitMQ (AMQP port $AMQP_PORT)" port_open "$AMQP_PORT"
}
if ! port_open "$AMQP_PORT"; then
  rabbit_registered || start_rabbit
  await_rabbit_port
else
  await_rabbit 20
fi
# An open port is not enough: a wedged node accepts TCP connections and never
# answers the AMQP handshake, and every test would hang on it. Probe the
# handshake (protocol header → Connection.Start frame); if it stays silent,
# this is a test broker: stop it, empty its data directory, start it again.
amqp_answers() {
  [ -n "$(timeout 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$AMQP_PORT && printf 'AMQP\\x00\\x00\\x09\\x01' >&3 && head -c 7 <&3 | od -An -tx1" 2>/dev/null)" ]
}
# A node started elsewhere with the default fd limit wedges that way later (see start_rabbit).
rabbit_fd_limit() {
  local pid
  pid=$(pgrep -f 'beam.smp.*-s rabbit boot' | head -n 1)
  [ -n "$pid" ] && awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null
}
if ! amqp_answers || [ "$(rabbit_fd_limit || echo 0)" -lt 10000 ]; then
  log "RabbitMQ does not answer the AMQP handshake or has too few file descriptors: restarting it with an empty data directory"
  timeout 60 "${ROOT[@]}" rabbitmqctl -q stop >/dev/null 2>&1 || true
  for pid in $(pgrep -f 'beam.smp.*-s rabbit boot' || true); do "${ROOT[@]}" kill -9 "$pid" 2>/dev/null || true; done
  "${ROOT[@]}" rm -rf /var/lib/rabbitmq/mnesia
  start_rabbit
  await_rabbit_port
  amqp_answers || die "RabbitMQ does not answer the AMQP handshake on port $AMQP_PORT; see /var/log/rabbitmq/"
fi

# --- result ------------------------------------------------------------------
log "PostgreSQL $pg_major, Redis and RabbitMQ are up"
cat <<EOF
export ZAPGATE_TEST_DATABASE_URL='$DATABASE_URL'
export ZAPGATE_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f'
export ZAPGATE_TEST_REDIS_URL='redis://127.0.0.1:$REDIS_PORT'
EOF
