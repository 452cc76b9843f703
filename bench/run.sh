#!/usr/bin/env bash
# Firebreak's benchmark suite, one command:
#
#   bash bench/run.sh [embedded|backed|all] [--no-micro]
#
# For each mode (embedded: SQLite + embedded queue; backed: PostgreSQL +
# RabbitMQ on localhost) it starts a release build with bench/playbooks and
# runs `firebreak bench`: 100-alert webhooks as fast as accepted, 1-alert
# webhooks as fast as accepted, a 10,000-alert storm in one webhook, the web
# page of an incident with 10,000 timeline entries (30 fetches), and
# alert-to-kill-switch latency probes under 1,000 alerts/s of background load
# (with guarded-rollout probes: a failed gate to the rolled-out flag off).
# It records idle and peak resident memory of the server. Then it runs the
# criterion micro-benchmarks. Results: bench/results/<mode>.jsonl and
# bench/results/criterion.txt; a table on stdout.
# FIREBREAK_BIN=path runs an already built binary (e.g. an older build, to
# compare before and after a change) instead of building target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
modes=${1:-all}; [ "$modes" = all ] && modes="embedded backed"
micro=1; [ "${2:-}" = --no-micro ] && micro=0
if [ -n "${FIREBREAK_BIN:-}" ]; then
  bin=$FIREBREAK_BIN
else
  cargo build --release --bin firebreak
  bin=target/release/firebreak
fi
out=${FIREBREAK_BENCH_OUT:-bench/results}; mkdir -p "$out"
port=18960
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; true' EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

run_mode() {
  local mode=$1 dir db ns pid sampler peak_file
  dir=$(mktemp -d)
  # Authentication on, as in production: every request carries a bearer token.
  local token=fbbench-admin-token-0123456789abcdef
  local env_args=(FIREBREAK_LISTEN=127.0.0.1:$port FIREBREAK_DATA_DIR=$dir FIREBREAK_PLAYBOOKS=bench/playbooks RUST_LOG=warn
                  FIREBREAK_AUTH__BOOTSTRAP_TOKEN=$token)
  if [ "$mode" = backed ]; then
    db=fbbench_$$; ns=fbbench-$$
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
    env_args+=(FIREBREAK_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
               FIREBREAK_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f FIREBREAK_AMQP_NAMESPACE=$ns)
  fi
  if port_open "$port"; then
    echo "port $port is in use (a server left from an earlier run?): stop it first" >&2
    exit 1
  fi
  env "${env_args[@]}" "$bin" serve 2>"$dir/log" &
  pid=$!; server=$pid
  for _ in $(seq 100); do curl -sf "localhost:$port/readyz" >/dev/null && break; sleep 0.1; done
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the $mode server did not start:" >&2; tail -5 "$dir/log" >&2; exit 1
  fi
  sleep 2
  local idle; idle=$(rss_kb "$pid")
  peak_file=$dir/peak; echo 0 > "$peak_file"
  ( while kill -0 "$pid" 2>/dev/null; do r=$(rss_kb "$pid"); [ "$r" -gt "$(cat "$peak_file")" ] && echo "$r" > "$peak_file"; sleep 0.2; done ) &
  sampler=$!
  local results=$out/$mode.jsonl; : > "$results"
  # A run that fails (the generator says why) is reported and the next one goes on.
  b() {
    if ! "$bin" bench --url "http://127.0.0.1:$port" --token "$token" "$@" | tee -a /dev/stderr | tail -1 >> "$results"; then
      echo "!! $mode: run failed: $*" >&2
      sed -i '$ { /^{/!d }' "$results"
      grep -a "ERROR\| WARN" "$dir/log" | tail -3 >&2 || true
    fi
  }
  # Latency first, on a fresh store; again last, after about a million alerts.
  b --label "$mode: kill switch at 1,000 alerts/s" --alerts-per-webhook 10 --connections 8 --rate 1000 --duration 20s --probes 50 \
    --rollout-probes 20
  b --label "$mode: 100 alerts/webhook" --alerts-per-webhook 100 --connections 16 --duration 10s
  b --label "$mode: 1 alert/webhook" --alerts-per-webhook 1 --connections 64 --duration 10s --deploy-every 0
  b --label "$mode: kill switch behind a 3 s storm" --alerts-per-webhook 100 --connections 16 --storm 3s --probes 20
  b --label "$mode: 10,000-alert storm" --alerts-per-webhook 10000 --connections 1 --webhooks 1 --deploy-every 0
  b --label "$mode: incident page, 10,000 entries" --alerts-per-webhook 10000 --connections 1 --webhooks 1 --deploy-every 0 \
    --services 1 --service-prefix page --page-probes 30
  b --label "$mode: kill switch again, store now large" --alerts-per-webhook 10 --connections 8 --rate 1000 --duration 20s --probes 50
  kill "$sampler" 2>/dev/null || true
  echo "{\"bench\":\"memory\",\"label\":\"$mode\",\"idle_rss_mb\":$((idle / 1024)),\"peak_rss_mb\":$(( $(cat "$peak_file") / 1024 ))}" >> "$results"
  kill "$pid"; wait "$pid" 2>/dev/null || true; server=""

  if [ "$mode" = backed ]; then
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
    # Every lane's queue (engine, urgent) and the dead letters.
    for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$ns\\." || true); do
      rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$dir"
}

for m in $modes; do run_mode "$m"; done

if [ "$micro" = 1 ]; then
  cargo bench -p firebreak-domain -p firebreak-postmortem -p firebreak-api 2>/dev/null \
    | awk '/^[a-z_]+\// {name=$1} /time:/ && !/%/ { if ($1 == name) print $0; else print name, $0 }' | tee "$out/criterion.txt"
fi

echo
echo "== summary (machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo))"
python3 - "$out" $modes <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print(f"{'run':<40} {'accepted/s':>11} {'processed/s':>12} {'p99 req ms':>11} {'switch p50/p99 ms':>18}")
for mode in sys.argv[2:]:
    for line in (out / f"{mode}.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("bench") == "memory":
            print(f"{mode + ': memory':<40} idle {r['idle_rss_mb']} MB, peak {r['peak_rss_mb']} MB")
            continue
        ks = r.get("kill_switch_ms") or {}
        off = ks.get("kill switch off (OFREP)")
        sw = f"{off['p50']:.1f} / {off['p99']:.1f}" if off else ""
        print(f"{r['label']:<40} {r['accepted_per_s']:>11.0f} {r['processed_per_s']:>12.0f} {r['request_ms']['p99']:>11.1f} {sw:>18}")
        ro = r.get("rollout_kill_ms")
        if ro:
            print(f"{'  failed gate -> rollout flag off':<40} p50 {ro['p50']:.1f} / p90 {ro['p90']:.1f} / p99 {ro['p99']:.1f} ms ({ro['n']} probes)")
        page = r.get("page_ms")
        if page:
            print(f"{'  its incident page (' + str(page['entries']) + ' entries)':<40} server render p50 {page['server_p50']:.1f} / p99 {page['server_p99']:.1f} ms, request p50 {page['request_p50']:.1f} / p99 {page['request_p99']:.1f} ms")
PY
