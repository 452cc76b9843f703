#!/usr/bin/env bash
# Drops what test runs that have ended left behind, and nothing of a run that
# is still going:
#
#   tests/support/clean-stale.sh postgres URL   # fbtest_<pid>_* databases
#   tests/support/clean-stale.sh rabbitmq       # fbtest-<pid>-* queues (rabbitmqctl)
#
# A test process names what it creates after its own process id
# (tests/src/lib.rs, `owned_name`); a name whose process is still running on
# this machine is kept, so a suite running beside this one keeps its own. A
# name without a process id is an older run's, and goes.
set -uo pipefail

# The process id in NAME (after PREFIX, up to SEP) is a running process.
running() {
  local rest=${1#"$2"} pid
  pid=${rest%%"$3"*}
  [[ $pid =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ]
}

case "${1:-}" in
  postgres)
    url=${2:?usage: $0 postgres URL}
    for db in $(psql "$url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'fbtest\_%'" 2>/dev/null); do
      running "$db" fbtest_ _ && continue
      psql "$url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
    done
    ;;
  rabbitmq)
    for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep '^fbtest-'); do
      running "$q" fbtest- - && continue
      rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
    done
    ;;
  *)
    echo "usage: $0 postgres URL | rabbitmq" >&2
    exit 2
    ;;
esac
exit 0
