#!/usr/bin/env bash
# Drops what test runs that have ended left behind, and nothing of a run that
# is still going:
#
#   tests/support/clean-stale.sh postgres URL [PREFIX]  # PREFIX_<pid>_* databases
#   tests/support/clean-stale.sh rabbitmq [PREFIX]      # PREFIX-<pid>-* queues (rabbitmqctl, this node)
#
# PREFIX is `fbtest` unless given (the harness suite gives its own, so that it
# touches nothing else). A test process names what it creates after its own
# process id (tests/src/lib.rs, `owned_name`); a name whose process is still
# running here (in /proc: this machine, this process namespace) is kept, so a
# suite running beside this one keeps its own. A name without a process id is
# an older run's, and goes.
set -uo pipefail

prefix_of() {
  local prefix=${1:-fbtest}
  [[ $prefix =~ ^[a-z][a-z0-9]*$ ]] || { echo "a prefix is lower-case letters and digits: $prefix" >&2; exit 2; }
  printf '%s' "$prefix"
}

# The process id in NAME (after PREFIX, up to SEP) is a running process.
running() {
  local rest=${1#"$2"} pid
  pid=${rest%%"$3"*}
  [[ $pid =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ]
}

case "${1:-}" in
  postgres)
    url=${2:?usage: $0 postgres URL [PREFIX]}
    prefix=$(prefix_of "${3:-}") || exit 2
    for db in $(psql "$url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE '${prefix}\_%'" 2>/dev/null); do
      running "$db" "${prefix}_" _ && continue
      psql "$url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
    done
    ;;
  rabbitmq)
    prefix=$(prefix_of "${2:-}") || exit 2
    for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^${prefix}-"); do
      running "$q" "${prefix}-" - && continue
      rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
    done
    ;;
  *)
    echo "usage: $0 postgres URL [PREFIX] | rabbitmq [PREFIX]" >&2
    exit 2
    ;;
esac
exit 0
