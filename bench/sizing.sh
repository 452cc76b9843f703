#!/usr/bin/env bash
# Sizing: Firebreak split by role on PostgreSQL and RabbitMQ (localhost), one
# topology after another on a fresh database and queue:
#
#   bash bench/sizing.sh                      # builds target/release first
#   FIREBREAK_BIN=path bash bench/sizing.sh   # an already built binary
#
# Topologies: 1 ingest + 1, 2 and 4 engine processes, then 2 ingest + 2
# engine. In each, `firebreak bench` sends 100-alert webhooks from 16
# connections (split over the ingest processes) for 20 s, as fast as they are
# accepted, and waits until the engines have committed every accepted alert.
# It records alerts/s accepted and processed, the peak resident memory of
# each Firebreak process, and the CPU that PostgreSQL, RabbitMQ, Firebreak's
# processes and the load generator used (in cores, over the run).
# Results: bench/results/sizing.jsonl and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FIREBREAK_BIN:-}" ]; then
  bin=$FIREBREAK_BIN
else
  cargo build --release --bin firebreak
  bin=target/release/firebreak
fi
out=${FIREBREAK_BENCH_OUT:-bench/results}; mkdir -p "$out"
duration=${SIZING_DURATION:-20s}
token=fbbench-admin-token-0123456789abcdef
tck=$(getconf CLK_TCK)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# CPU time (user + system, in clock ticks) of the processes whose command
# matches $1, and of the processes given.
cpu_of() {
  # shellcheck disable=SC2046
  cpu_pids $(pgrep -f "$1" || true)
}
cpu_pids() {
  local total=0 p t
  for p in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
# Alerts the engine processes have committed (their /metrics, summed).
committed() {
  local sum=0 u v
  for u in "$@"; do
    v=$(curl -sf -H "authorization: Bearer $token" "$u/metrics" \
      | awk '/^firebreak_events_processed_total\{kind="alert"\}/ {printf "%d", $2}')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

results=$out/sizing.jsonl; : > "$results"
port=19100

run_topology() {
  local ingests=$1 engines=$2 dir db ns role n p
  dir=$(mktemp -d); db=fbsize_$$_$ingests$engines; ns=fbsize-$$-$ingests$engines
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
  local env_args=(FIREBREAK_DATA_DIR=$dir FIREBREAK_PLAYBOOKS=bench/playbooks RUST_LOG=warn
                  FIREBREAK_AUTH__BOOTSTRAP_TOKEN=$token FIREBREAK_AUDIT__KEY=fbsize-audit-key-0123456789abcdef
                  FIREBREAK_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
                  FIREBREAK_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f FIREBREAK_AMQP_NAMESPACE=$ns)
  local ingest_urls=() engine_urls=() ingest_pids=() engine_pids=()
  pids=()
  # An engine first: it applies the migrations.
  for role in $(printf 'engine %.0s' $(seq "$engines")) $(printf 'ingest %.0s' $(seq "$ingests")); do
    port=$((port + 1))
    while port_open "$port"; do port=$((port + 1)); done
    env "${env_args[@]}" FIREBREAK_ROLES=$role FIREBREAK_LISTEN=127.0.0.1:$port "$bin" serve \
      >"$dir/$role-$port.log" 2>&1 < /dev/null &
    p=$!; pids+=("$p")
    for _ in $(seq 300); do curl -sf "localhost:$port/readyz" >/dev/null && break; sleep 0.1; done
    curl -sf "localhost:$port/readyz" >/dev/null || { echo "$role on :$port did not start:" >&2; tail -5 "$dir/$role-$port.log" >&2; exit 1; }
    if [ "$role" = engine ]; then engine_urls+=("http://127.0.0.1:$port"); engine_pids+=("$p")
    else ingest_urls+=("http://127.0.0.1:$port"); ingest_pids+=("$p"); fi
  done
  sleep 2
  local peak_dir=$dir/peaks; mkdir -p "$peak_dir"
  ( while true; do
      for p in "${pids[@]}"; do
        r=$(rss_kb "$p"); f=$peak_dir/$p; [ -f "$f" ] || echo 0 > "$f"
        [ "$r" -gt "$(cat "$f")" ] && echo "$r" > "$f"
      done
      sleep 0.2
    done ) &
  local sampler=$!
  local pg0 mq0 fb0 t0 done0
  done0=$(committed "${engine_urls[@]}")
  pg0=$(cpu_of '^postgres'); mq0=$(cpu_of 'beam.smp'); fb0=$(cpu_pids "${pids[@]}"); t0=$(date +%s.%N)
  local metrics; metrics=$(IFS=,; echo "${engine_urls[*]}")
  local gens=() conns=$((16 / ingests)) i=0
  for u in "${ingest_urls[@]}"; do
    i=$((i + 1))
    "$bin" bench --url "$u" --token "$token" --metrics-url "$metrics" --alerts-per-webhook 100 \
      --connections "$conns" --duration "$duration" --service-prefix "svc$i" \
      --label "$ingests ingest + $engines engine" > "$dir/bench-$i.out" 2>&1 &
    gens+=($!)
  done
  local ok=1; for g in "${gens[@]}"; do wait "$g" || ok=0; done
  [ "$ok" = 1 ] || { echo "a load generator failed:" >&2; tail -5 "$dir"/bench-*.out >&2; exit 1; }
  # Each generator waited for its own count; wait here for all of them.
  local accepted=0 f
  for f in "$dir"/bench-*.out; do accepted=$((accepted + $(tail -1 "$f" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accepted_alerts"])'))); done
  for _ in $(seq 3000); do [ $(( $(committed "${engine_urls[@]}") - done0 )) -ge "$accepted" ] && break; sleep 0.1; done
  local drained=$(( $(committed "${engine_urls[@]}") - done0 ))
  local t1 pg1 mq1 fb1; t1=$(date +%s.%N)
  pg1=$(cpu_of '^postgres'); mq1=$(cpu_of 'beam.smp'); fb1=$(cpu_pids "${pids[@]}")
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  local peak_ingest=0 peak_engine=0 r
  for p in "${ingest_pids[@]}"; do r=$(cat "$peak_dir/$p"); [ "$r" -gt "$peak_ingest" ] && peak_ingest=$r; done
  for p in "${engine_pids[@]}"; do r=$(cat "$peak_dir/$p"); [ "$r" -gt "$peak_engine" ] && peak_engine=$r; done
  python3 - "$dir" "$ingests" "$engines" "$t0" "$t1" "$tck" "$((pg1 - pg0))" "$((mq1 - mq0))" "$((fb1 - fb0))" \
    "$peak_ingest" "$peak_engine" "$accepted" "$drained" >> "$results" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1]); ingests, engines = int(sys.argv[2]), int(sys.argv[3])
secs = float(sys.argv[5]) - float(sys.argv[4]); tck = int(sys.argv[6])
runs = [json.loads(p.read_text().strip().splitlines()[-1]) for p in sorted(d.glob("bench-*.out"))]
accepted, drained = int(sys.argv[12]), int(sys.argv[13])
send = max(r["seconds"] for r in runs)
print(json.dumps({
  "ingest": ingests, "engine": engines,
  "accepted_alerts": accepted,
  "accepted_per_s": accepted / send,
  # From the start of the load until the engines had committed every accepted alert.
  "processed_per_s": drained / secs,
  "drained": drained >= accepted,
  "cores": {k: round(int(v) / tck / secs, 2) for k, v in
            (("postgres", sys.argv[7]), ("rabbitmq", sys.argv[8]), ("firebreak", sys.argv[9]))},
  "peak_rss_mb": {"ingest": int(sys.argv[10]) // 1024, "engine": int(sys.argv[11]) // 1024},
  "seconds": round(secs, 1),
}))
PY
  tail -1 "$results"
  cleanup; pids=()
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  # Every lane's queue (engine, urgent) and the dead letters.
  for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$ns\\." || true); do
    rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
}

run_topology 1 1
run_topology 1 2
run_topology 1 4
run_topology 2 2

echo
echo "== sizing (machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo))"
python3 - "$results" <<'PY'
import json, sys
print(f"{'topology':<22} {'accepted/s':>10} {'processed/s':>11} {'ingest MB':>9} {'engine MB':>9} {'PG cores':>8} {'MQ cores':>8} {'FB cores':>8}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    c = r["cores"]
    print(f"{str(r['ingest']) + ' ingest + ' + str(r['engine']) + ' engine':<22} {r['accepted_per_s']:>10.0f} {r['processed_per_s']:>11.0f} "
          f"{r['peak_rss_mb']['ingest']:>9} {r['peak_rss_mb']['engine']:>9} {c['postgres']:>8} {c['rabbitmq']:>8} {c['firebreak']:>8}")
PY
