#!/usr/bin/env bash
# Stop the Unleash that start.sh started on PORT; with DBNAME, also drop that database.
#
#   tests/support/unleash/stop.sh PORT [DBNAME]
set -euo pipefail

[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 PORT [DBNAME]" >&2; exit 2; }
port=$1
db=${2:-}
[[ $port =~ ^[0-9]+$ ]] || { echo "stop.sh: bad PORT '$port'" >&2; exit 2; }
pidfile=${UNLEASH_RUN_DIR:-/tmp}/unleash-$port.pid

if [[ -f $pidfile ]]; then
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'unleash-server/dist/server.js'; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
fi

if [[ -n $db ]]; then
    [[ $db =~ ^[A-Za-z_][A-Za-z0-9_]{0,62}$ ]] || { echo "stop.sh: bad DBNAME '$db'" >&2; exit 2; }
    PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h "${PGHOST:-127.0.0.1}" -p "${PGPORT:-5432}" -U "${PGUSER:-postgres}" \
        -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >&2
fi
