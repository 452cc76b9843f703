#!/usr/bin/env bash
# Start a throw-away Unleash server for Firebreak's end-to-end tests and CI.
#
#   tests/support/unleash/start.sh PORT DBNAME
#
# - installs the pinned Unleash + Node 22 (package-lock.json) with `npm ci`
#   if node_modules is missing or incomplete;
# - drops (WITH (FORCE)) and recreates the PostgreSQL database DBNAME;
# - stops an Unleash this script started earlier on the same PORT;
# - starts Unleash in the background on 127.0.0.1:PORT, logging to
#   $UNLEASH_RUN_DIR/unleash-PORT.log (default /tmp), PID in unleash-PORT.pid;
# - waits up to $UNLEASH_START_TIMEOUT seconds (default 60) for GET /health = 200;
# - prints the PID on stdout and exits 0, or prints the log tail on stderr
#   and exits 1.
#
# Stop it with stop.sh PORT [DBNAME] (or kill the printed PID).
#
# Tokens (header `Authorization: <token>`):
#   admin:   *:*.unleash-insecure-admin-api-token       (Admin API)
#   backend: default:development.unleash-insecure-api-token,
#            default:production.unleash-insecure-api-token  (/api/client/*)
# Override with INIT_ADMIN_API_TOKENS / INIT_BACKEND_API_TOKENS.
#
# PostgreSQL: PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres), trust auth.
set -euo pipefail

usage() { echo "usage: $0 PORT DBNAME" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
port=$1
db=$2
[[ $port =~ ^[0-9]+$ ]] && (( port > 0 && port < 65536 )) || { echo "start.sh: bad PORT '$port'" >&2; exit 2; }
[[ $db =~ ^[A-Za-z_][A-Za-z0-9_]{0,62}$ ]] || { echo "start.sh: bad DBNAME '$db' (use [A-Za-z_][A-Za-z0-9_]*)" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run_dir=${UNLEASH_RUN_DIR:-/tmp}
log=$run_dir/unleash-$port.log
pidfile=$run_dir/unleash-$port.pid
timeout=${UNLEASH_START_TIMEOUT:-60}
pg_host=${PGHOST:-127.0.0.1}
pg_port=${PGPORT:-5432}
pg_user=${PGUSER:-postgres}
node=$here/node_modules/.bin/node
server=$here/node_modules/unleash-server/dist/server.js
mkdir -p "$run_dir"

fail() {
    echo "start.sh: $*" >&2
    if [[ -f $log ]]; then
        echo "---- last 40 lines of $log ----" >&2
        tail -n 40 "$log" >&2 || true
    fi
    exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

# 1. Install (npm output goes to stderr: stdout carries only the PID).
if [[ ! -x $node || ! -f $server ]]; then
    echo "start.sh: installing Unleash with npm ci in $here" >&2
    (cd "$here" && SCARF_ANALYTICS=false npm ci --no-audit --no-fund) >&2 \
        || { echo "start.sh: npm ci failed" >&2; exit 1; }
    [[ -x $node && -f $server ]] || { echo "start.sh: npm ci did not install $node and $server" >&2; exit 1; }
fi

# 2. Stop an instance we started earlier on this port (idempotent re-runs).
if [[ -f $pidfile ]]; then
    old=$(cat "$pidfile" 2>/dev/null || true)
    if [[ $old =~ ^[0-9]+$ ]] && kill -0 "$old" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -q 'unleash-server/dist/server.js'; then
        echo "start.sh: stopping previous Unleash (pid $old) on port $port" >&2
        kill "$old" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$old" 2>/dev/null || true
    fi
    rm -f "$pidfile"
fi
if port_open; then
    for _ in $(seq 1 20); do port_open || break; sleep 0.25; done
    port_open && { echo "start.sh: port $port is already in use by another process" >&2; exit 1; }
fi

# 3. Fresh database.
psql_admin() { PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -c "$1"; }
psql_admin "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >&2 || { echo "start.sh: could not drop database $db" >&2; exit 1; }
psql_admin "CREATE DATABASE \"$db\"" >&2 || { echo "start.sh: could not create database $db" >&2; exit 1; }

# 4. Start Unleash in its own session, detached from our stdio.
: >"$log"
DATABASE_URL="postgres://$pg_user@$pg_host:$pg_port/$db" \
DATABASE_SSL=false \
HTTP_HOST=127.0.0.1 \
HTTP_PORT=$port \
INIT_ADMIN_API_TOKENS=${INIT_ADMIN_API_TOKENS:-'*:*.unleash-insecure-admin-api-token'} \
INIT_BACKEND_API_TOKENS=${INIT_BACKEND_API_TOKENS:-'default:development.unleash-insecure-api-token,default:production.unleash-insecure-api-token'} \
CHECK_VERSION=false \
SEND_TELEMETRY=false \
SCARF_ANALYTICS=false \
    setsid "$node" "$server" </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid" >"$pidfile"

# 5. Wait for /health.
deadline=$((SECONDS + timeout))
while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"
        fail "Unleash (pid $pid) exited during startup"
    fi
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$port/health" || true)
    [[ $code == 200 ]] && break
    if (( SECONDS >= deadline )); then
        kill "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        fail "Unleash did not answer 200 on http://127.0.0.1:$port/health within ${timeout}s (last status: ${code:-none})"
    fi
    sleep 0.5
done

echo "$pid"
