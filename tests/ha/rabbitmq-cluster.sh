#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, from Debian's rabbitmq-server,
# beside any broker already running (own node names, ports and directories).
#
#   bash tests/ha/rabbitmq-cluster.sh start DIR [BASE_PORT]   # nodes on BASE_PORT+1..3 (default 47000)
#   bash tests/ha/rabbitmq-cluster.sh stop DIR
#   bash tests/ha/rabbitmq-cluster.sh kill DIR N              # kill -9 node N (1-3)
#   bash tests/ha/rabbitmq-cluster.sh restart DIR N
#   bash tests/ha/rabbitmq-cluster.sh leader DIR QUEUE        # the node leading a quorum queue
#   bash tests/ha/rabbitmq-cluster.sh depth DIR QUEUE         # messages waiting in a queue
#
# The nodes share the Erlang cookie of the machine's rabbitmq user, so
# rabbitmqctl reaches them as it reaches the default broker. `start` prints
# the AMQP URLs, comma-separated (Firebreak's amqp_url for a cluster).
set -euo pipefail
cmd=${1:?start|stop|kill|restart|leader}
dir=${2:?directory}
base=${3:-47000}
[ -f "$dir/base_port" ] && [ "$cmd" != start ] && base=$(cat "$dir/base_port")
name() { echo "fbha$1-$base@localhost"; }

start_node() {
  local i=$1 d="$dir/n$1"
  mkdir -p "$d/mnesia" "$d/log"
  echo "[]." > "$d/enabled_plugins"
  echo "loopback_users = none" > "$d/rabbitmq.conf"
  chown -R rabbitmq:rabbitmq "$d"
  (
    export RABBITMQ_NODENAME="$(name "$i")" RABBITMQ_NODE_PORT=$((base + i)) \
      RABBITMQ_DIST_PORT=$((base + 100 + i)) RABBITMQ_MNESIA_BASE="$d/mnesia" \
      RABBITMQ_LOG_BASE="$d/log" RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
      RABBITMQ_CONFIG_FILE="$d/rabbitmq" RABBITMQ_PID_FILE="$d/pid"
    setsid nohup rabbitmq-server > "$d/out.log" 2>&1 < /dev/null &
  )
}

ctl() { local n=$1; shift; timeout 60 rabbitmqctl -q -n "$(name "$n")" "$@"; }

# The node's Erlang VM: its name is in its environment, not its arguments.
beam_pid() {
  local p
  for p in $(pgrep beam.smp); do
    if { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | grep -qx "RABBITMQ_NODENAME=$(name "$1")"; then
      echo "$p"
    fi
  done
}

# Waits until node N answers (it registers a few seconds after it starts).
await() {
  local i=$1 n
  for n in $(seq 1 60); do
    ctl "$i" await_startup >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "node $(name "$i") did not start; see $dir/n$i/out.log" >&2
  return 1
}

case "$cmd" in
  start)
    mkdir -p "$dir"; chmod 755 "$dir"; echo "$base" > "$dir/base_port"
    for i in 1 2 3; do start_node "$i"; done
    for i in 1 2 3; do await "$i"; done
    for i in 2 3; do
      ctl "$i" stop_app >/dev/null
      ctl "$i" join_cluster "$(name 1)" >/dev/null
      ctl "$i" start_app >/dev/null
    done
    running=$(ctl 1 eval 'length(rabbit_nodes:all_running()).')
    [ "$running" = 3 ] || { echo "only $running of 3 nodes joined" >&2; exit 1; }
    urls=""
    for i in 1 2 3; do urls="$urls${urls:+,}amqp://guest:guest@127.0.0.1:$((base + i))/%2f"; done
    echo "$urls"
    ;;
  stop)
    for i in 1 2 3; do p=$(beam_pid "$i"); [ -n "$p" ] && kill -9 $p 2>/dev/null || true; done
    ;;
  kill)
    p=$(beam_pid "${3:?node}"); [ -n "$p" ] && kill -9 $p
    ;;
  restart)
    start_node "${3:?node}"; await "$3"
    ;;
  leader)
    for i in 1 2 3; do
      if out=$(ctl "$i" list_queues name leader 2>/dev/null); then
        echo "$out" | awk -v q="${3:?queue}" '$1 == q {print $2}' | sed -E 's/^fbha([0-9])-.*/\1/'
        exit 0
      fi
    done
    exit 1
    ;;
  depth)
    for i in 1 2 3; do
      if out=$(ctl "$i" list_queues name messages 2>/dev/null); then
        echo "$out" | awk -v q="${3:?queue}" '$1 == q {print $2}'
        exit 0
      fi
    done
    exit 1
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
