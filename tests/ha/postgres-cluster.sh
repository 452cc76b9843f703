#!/usr/bin/env bash
# PostgreSQL with automatic failover on this machine, from Debian's packages:
# etcd (one member), two Patroni nodes (a primary and a streaming replica)
# and HAProxy routing to whichever node Patroni's REST API says is primary.
#
#   bash tests/ha/postgres-cluster.sh start DIR BASE_PORT   # prints the database URL (through HAProxy)
#   bash tests/ha/postgres-cluster.sh primary DIR           # the node (1 or 2) that is primary now
#   bash tests/ha/postgres-cluster.sh kill DIR N            # kill -9 node N's Patroni and PostgreSQL
#   bash tests/ha/postgres-cluster.sh stop DIR
#
# Ports: BASE+1 etcd client, BASE+2 etcd peer, BASE+10+N PostgreSQL of node N,
# BASE+20+N Patroni REST of node N, BASE+30 HAProxy (the address to use).
set -euo pipefail
cmd=${1:?start|primary|kill|stop}
dir=${2:?directory}
base=${3:-}
[ -z "$base" ] && [ -f "$dir/base_port" ] && base=$(cat "$dir/base_port")
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

as_postgres() { su postgres -s /bin/bash -c "$*"; }

node_pids() { pgrep -f "patroni $dir/n$1.yml" || true; }

case "$cmd" in
  start)
    mkdir -p "$dir"; echo "$base" > "$dir/base_port"
    chown postgres:postgres "$dir"; chmod 700 "$dir"
    as_postgres "cd '$dir'; setsid nohup etcd --name e1 --data-dir '$dir/etcd' \
      --listen-client-urls http://127.0.0.1:$((base + 1)) --advertise-client-urls http://127.0.0.1:$((base + 1)) \
      --listen-peer-urls http://127.0.0.1:$((base + 2)) --initial-advertise-peer-urls http://127.0.0.1:$((base + 2)) \
      --initial-cluster e1=http://127.0.0.1:$((base + 2)) > '$dir/etcd.log' 2>&1 < /dev/null &" > /dev/null 2>&1 < /dev/null
    for i in 1 2; do
      cat > "$dir/n$i.yml" <<YML
scope: firebreak-ha
name: n$i
restapi:
  listen: 127.0.0.1:$((base + 20 + i))
  connect_address: 127.0.0.1:$((base + 20 + i))
etcd3:
  hosts: 127.0.0.1:$((base + 1))
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      parameters:
        max_connections: 200
  initdb: [{encoding: UTF8}, {auth: trust}]
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$((base + 10 + i))
  connect_address: 127.0.0.1:$((base + 10 + i))
  data_dir: $dir/pg$i
  bin_dir: $bin
  pgpass: $dir/pgpass$i
  authentication:
    superuser: {username: postgres, password: firebreak}
    replication: {username: postgres, password: firebreak}
  parameters:
    unix_socket_directories: '$dir'
YML
      chown postgres:postgres "$dir/n$i.yml"
    done
    for i in 1 2; do
      as_postgres "setsid nohup patroni '$dir/n$i.yml' > '$dir/patroni$i.log' 2>&1 < /dev/null &" > /dev/null 2>&1 < /dev/null
      sleep 1
    done
    cat > "$dir/haproxy.cfg" <<CFG
global
  maxconn 400
defaults
  mode tcp
  timeout connect 2s
  timeout client 30m
  timeout server 30m
  timeout check 1s
listen primary
  bind 127.0.0.1:$((base + 30))
  option httpchk GET /primary
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
  server n1 127.0.0.1:$((base + 11)) check port $((base + 21))
  server n2 127.0.0.1:$((base + 12)) check port $((base + 22))
CFG
    setsid nohup haproxy -f "$dir/haproxy.cfg" > "$dir/haproxy.log" 2>&1 < /dev/null &
    echo $! > "$dir/haproxy.pid"
    # Ready: a primary answers through HAProxy, and the replica streams.
    for _ in $(seq 1 90); do
      if psql -h 127.0.0.1 -p $((base + 30)) -U postgres -d postgres -Atc "SELECT 1" >/dev/null 2>&1 \
         && [ "$(psql -h 127.0.0.1 -p $((base + 30)) -U postgres -d postgres -Atc "SELECT count(*) FROM pg_stat_replication" 2>/dev/null)" = 1 ]; then
        psql -h 127.0.0.1 -p $((base + 30)) -U postgres -d postgres -qc "CREATE DATABASE firebreak" >/dev/null
        echo "postgres://postgres@127.0.0.1:$((base + 30))/firebreak"
        exit 0
      fi
      sleep 1
    done
    echo "the PostgreSQL cluster did not come up; see $dir/patroni*.log" >&2
    exit 1
    ;;
  primary)
    for i in 1 2; do
      if curl -fsS -o /dev/null "http://127.0.0.1:$((base + 20 + i))/primary" 2>/dev/null; then echo "$i"; exit 0; fi
    done
    exit 1
    ;;
  kill)
    n=${3:?node}
    for p in $(node_pids "$n"); do kill -9 "$p" 2>/dev/null || true; done
    if [ -f "$dir/pg$n/postmaster.pid" ]; then
      kill -9 "$(head -1 "$dir/pg$n/postmaster.pid")" 2>/dev/null || true
    fi
    ;;
  stop)
    for i in 1 2; do
      for p in $(node_pids "$i"); do kill -9 "$p" 2>/dev/null || true; done
      [ -f "$dir/pg$i/postmaster.pid" ] && kill -9 "$(head -1 "$dir/pg$i/postmaster.pid")" 2>/dev/null || true
    done
    [ -f "$dir/haproxy.pid" ] && kill -9 "$(cat "$dir/haproxy.pid")" 2>/dev/null || true
    pkill -9 -f "etcd --name e1 --data-dir $dir/etcd" || true
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
