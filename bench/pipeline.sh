#!/usr/bin/env bash
# Measures the ingest pipeline: alerts accepted per second (HTTP 202s, wrk) and
# alerts processed per second (engine commits, from /metrics), in embedded mode
# and on PostgreSQL + RabbitMQ.
#
#   bash bench/pipeline.sh [embedded|backed] [alerts-per-webhook] [seconds] [connections]
#
# Needs: a release build (cargo build --release --bin firebreak), wrk
# (apt-get install wrk); for "backed", PostgreSQL and RabbitMQ on localhost.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-embedded}; per=${2:-100}; secs=${3:-10}; conns=${4:-16}
bin=target/release/firebreak
port=18950
dir=$(mktemp -d)
env_args=(FIREBREAK_LISTEN=127.0.0.1:$port FIREBREAK_DATA_DIR=$dir RUST_LOG=warn)
if [ "$mode" = backed ]; then
  db=fbbench_$$; ns=fbbench-$$
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
  env_args+=(FIREBREAK_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
             FIREBREAK_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f FIREBREAK_AMQP_NAMESPACE=$ns)
fi
env "${env_args[@]}" "$bin" serve 2>"$dir/log" &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  if [ "$mode" = backed ]; then
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
    # Every lane's queue (engine, urgent) and the dead letters.
    for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$ns\\." || true); do
      rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "localhost:$port/readyz" >/dev/null && break; sleep 0.1; done

metric() { curl -s "localhost:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
start=$(date +%s.%N)
ALERTS=$per wrk --latency -t1 -c"$conns" -d"${secs}s" -s bench/alertmanager.lua "http://127.0.0.1:$port" > "$dir/wrk.txt"
sent_end=$(date +%s.%N)
received=$(metric 'firebreak_events_received_total{kind="alert"}')
while :; do
  processed=$(metric 'firebreak_events_processed_total{kind="alert"}')
  [ "${processed%.*}" -ge "${received%.*}" ] && break
  sleep 0.05
done
done_at=$(date +%s.%N)
rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
python3 - "$mode" "$per" "$conns" "$received" "$start" "$sent_end" "$done_at" "$rss_kb" "$dir/wrk.txt" <<'PY'
import json, re, sys
mode, per, conns, received, start, sent_end, done_at, rss_kb, wrk = sys.argv[1:]
received = int(float(received)); start, sent_end, done_at = map(float, (start, sent_end, done_at))
text = open(wrk).read()
lat = dict(re.findall(r"^\s+(\d+%)\s+([\d.]+\w+)", text, re.M))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
res = {
    "mode": mode, "alerts_per_webhook": int(per), "connections": int(conns),
    "alerts_accepted": received,
    "accepted_per_s": round(received / (sent_end - start)),
    "processed_per_s": round(received / (done_at - start)),
    "drain_after_load_s": round(done_at - sent_end, 2),
    "request_latency": lat, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    "rss_mb_after": round(int(rss_kb) / 1024, 1),
}
print(f"{mode:9} {per:>4} alerts/webhook  accepted {res['accepted_per_s']:>7} alerts/s  "
      f"processed {res['processed_per_s']:>7} alerts/s  p99 request {lat.get('99%', '?')}  rss {res['rss_mb_after']} MB")
print(json.dumps(res))
PY
