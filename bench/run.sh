#!/usr/bin/env bash
# `make bench`: the benchmark suite. Builds the release binaries, then for each system
#   taskbroker          3 `serve` nodes (`taskbroker local --nodes 3`) on loopback, default settings
#                       (replication 3, fdatasync before every acknowledgement)
#   jetstream-default   3 nats-server nodes on loopback, JetStream file storage, default fsync policy
#   jetstream-always    the same with `sync_interval: always` (skipped, and said so, when the
#                       installed nats-server does not know the option)
# runs the same matrix (1 KiB and 16 KiB tasks; produce at peak and at 50% of peak; work with 4
# and 32 workers; e2e at peak and at 50% of peak), keeps every JSON report under
# bench/results/<label>/ and writes BENCHMARKS.md (bench/report.py).
#
# Env: BENCH_TASKS_1K (20000), BENCH_TASKS_16K (5000), BENCH_RUN_LIMIT_S (30, per run), BENCH_SYSTEMS (all three),
#      BENCH_LABEL (results folder, default "latest"), BENCH_OUT (BENCHMARKS.md at the root),
#      BENCH_NO_BUILD=1 (use the binaries already built), BENCH_BASE_PORT (17101),
#      BENCH_BASELINE (an earlier results label: adds a before/after table against BENCH_AFTER,
#      another label, default this run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taskbroker/target}"
CARGO="${CARGO:-cargo}"
TASKS_1K="${BENCH_TASKS_1K:-20000}"
TASKS_16K="${BENCH_TASKS_16K:-5000}"
SYSTEMS="${BENCH_SYSTEMS:-taskbroker jetstream-default jetstream-always}"
LABEL="${BENCH_LABEL:-latest}"
OUT="${BENCH_OUT:-$root/BENCHMARKS.md}"
BASE="${BENCH_BASE_PORT:-17101}"
# Longest a single run may take (each run stops there and reports what it completed).
RUN_LIMIT_S="${BENCH_RUN_LIMIT_S:-30}"
results="$root/bench/results/$LABEL"
# The shared target directory may be rebuilt by someone else meanwhile: BENCH_TB_BIN and
# BENCH_JS_BIN point at copies to measure exactly one build.
TB="${BENCH_TB_BIN:-$CARGO_TARGET_DIR/release/taskbroker}"
JS="${BENCH_JS_BIN:-$CARGO_TARGET_DIR/release/taskbroker-jsbench}"
work="$(mktemp -d /tmp/taskbroker-bench.XXXXXX)"
pids_to_stop=()
log() { echo "bench: $(date +%H:%M:%S) $*" >&2; }
cleanup() {
  rc=$?
  for p in "${pids_to_stop[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids_to_stop[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT INT TERM

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$root" && $CARGO build --release -p taskbroker-node --bin taskbroker)
  (cd "$root/bench/jetstream" && $CARGO build --release)
fi
if [[ "$SYSTEMS" == *jetstream* ]] && ! command -v nats-server >/dev/null; then
  log "installing nats-server (Debian package)"
  apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
fi

mkdir -p "$results"
for sys in $SYSTEMS; do rm -f "$results/$sys"-*; done
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"; }

machine() {
  local disk_dev
  disk_dev="$(df --output=source "$work" | tail -1)"
  python3 - "$results/machine.json" <<EOF
import json, os, sys, subprocess
mem = next(l for l in open('/proc/meminfo') if l.startswith('MemTotal')).split()[1]
model = next((l.split(':',1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), 'unknown')
json.dump({
  'date_utc': subprocess.check_output(['date','-u','+%Y-%m-%d %H:%M UTC']).decode().strip(),
  'cores': os.cpu_count(), 'cpu_model': model, 'memory_gib': round(int(mem)/1048576, 1),
  'kernel': os.uname().release, 'disk': "$disk_dev ($(df -h --output=fstype,size "$work" | tail -1 | xargs))",
  'load_before': open('/proc/loadavg').read().split()[:3],
  'git_rev': subprocess.check_output(['git','-C','$root','rev-parse','--short','HEAD']).decode().strip(),
  'nats_server': subprocess.run(['nats-server','--version'],capture_output=True,text=True).stdout.strip() if subprocess.run(['sh','-c','command -v nats-server'],capture_output=True).returncode==0 else None,
  'tasks_1k': $TASKS_1K, 'tasks_16k': $TASKS_16K,
}, open(sys.argv[1],'w'), indent=1)
EOF
}

# run NAME CMD...: runs one workload, saves its JSON report and the exact command.
run() {
  local name="$1"; shift
  log "$name: $*"
  echo "$*" > "$results/$name.cmd"
  if ! "$@" > "$results/$name.json" 2> "$work/$name.err"; then
    log "$name FAILED:"; tail -5 "$work/$name.err" >&2
    rm -f "$results/$name.json"
    return 0
  fi
  log "$name: $(json_get "$results/$name.json" tasks_per_s) tasks/s, p99 $(json_get "$results/$name.json" latency.p99_us) us"
}

# matrix SYSTEM EXTRA BIN ARGS...: the standard matrix against one running system; EXTRA (split
# on spaces) follows every workload's own arguments.
matrix() {
  local sys="$1" dur="$2"; shift 2
  local -a cmd=("$@")
  local size n peak half
  for size in 1024 16384; do
    if [[ $size == 1024 ]]; then n=$TASKS_1K; else n=$TASKS_16K; fi
    local tag="$sys-$((size / 1024))k"
    run "$tag-produce" "${cmd[@]}" produce -n "$n" --size "$size" --producers 4 $dur
    if [[ -f "$results/$tag-produce.json" ]]; then
      peak="$(json_get "$results/$tag-produce.json" tasks_per_s)"
      half="$(python3 -c "print(max(1, round($peak / 2)))")"
      run "$tag-produce-50" "${cmd[@]}" produce -n "$n" --size "$size" --producers 4 --rate "$half" $dur
    fi
    run "$tag-work-4" "${cmd[@]}" work -n "$n" --size "$size" --workers 4 $dur
    run "$tag-work-32" "${cmd[@]}" work -n "$n" --size "$size" --workers 32 $dur
    run "$tag-e2e" "${cmd[@]}" e2e -n "$n" --size "$size" --producers 4 --workers 32 $dur
    if [[ -f "$results/$tag-e2e.json" ]]; then
      peak="$(json_get "$results/$tag-e2e.json" tasks_per_s)"
      half="$(python3 -c "print(max(1, round($peak / 2)))")"
      run "$tag-e2e-50" "${cmd[@]}" e2e -n "$n" --size "$size" --producers 4 --workers 32 --rate "$half" $dur
    fi
  done
}

wait_http_ready() {
  local url="$1" deadline=$((SECONDS + 60))
  until curl -fsS "$url" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "not ready: $url"; return 1; }
    sleep 0.2
  done
}

bench_taskbroker() {
  local http=$((BASE + 100))
  log "taskbroker: starting 3 nodes on 127.0.0.1:$BASE.."
  "$TB" local --nodes 3 --base-port "$BASE" --base-http-port "$http" --data-dir "$work/tb" \
    > "$work/tb-local.log" 2>&1 &
  local local_pid=$!
  pids_to_stop+=("$local_pid")
  for i in 0 1 2; do wait_http_ready "http://127.0.0.1:$((http + i))/ready"; done
  local servers
  servers="$(pgrep -P "$local_pid" | paste -sd, -)"
  curl -fsS "http://127.0.0.1:$http/metrics" | grep '^taskbroker_storage_backend{' | grep ' 1$' \
    | sed -E 's/.*backend="([^"]+)".*/\1/' > "$results/taskbroker-backend.txt" || true
  log "taskbroker: ready (server pids $servers, backend $(cat "$results/taskbroker-backend.txt"))"
  matrix taskbroker "--duration ${RUN_LIMIT_S}s --pids $servers --no-progress" "$TB" bench \
    --brokers "127.0.0.1:$BASE,127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))" --output json
  kill -TERM "$local_pid"; wait "$local_pid" || true
}

# nats_conf DIR I SYNC: the config of node I (1..3).
nats_conf() {
  local dir="$1" i="$2" sync="$3"
  local sync_line=""
  [[ "$sync" == always ]] && sync_line="sync_interval: always"
  cat <<EOF
server_name: n$i
listen: 127.0.0.1:$((BASE + 200 + i))
http: 127.0.0.1:$((BASE + 300 + i))
jetstream { store_dir: "$dir/n$i", $sync_line }
cluster {
  name: bench
  listen: 127.0.0.1:$((BASE + 400 + i))
  routes: [ nats-route://127.0.0.1:$((BASE + 401)), nats-route://127.0.0.1:$((BASE + 402)), nats-route://127.0.0.1:$((BASE + 403)) ]
}
EOF
}

bench_jetstream() {
  local sys="$1" sync="$2" dir="$work/$1"
  mkdir -p "$dir"
  for i in 1 2 3; do nats_conf "$dir" "$i" "$sync" > "$dir/n$i.conf"; done
  if ! nats-server -c "$dir/n1.conf" -t > "$dir/check.log" 2>&1; then
    log "$sys: SKIPPED: $(nats-server --version) refuses the configuration: $(head -1 "$dir/check.log")"
    echo "$(nats-server --version): $(head -1 "$dir/check.log")" > "$results/$sys-skipped.txt"
    return 0
  fi
  local pids=()
  for i in 1 2 3; do
    nats-server -c "$dir/n$i.conf" > "$dir/n$i.log" 2>&1 &
    pids+=("$!"); pids_to_stop+=("$!")
  done
  for i in 1 2 3; do wait_http_ready "http://127.0.0.1:$((BASE + 300 + i))/healthz"; done
  log "$sys: 3 nats-server nodes up (pids ${pids[*]})"
  matrix "$sys" "--duration-s $RUN_LIMIT_S --pids $(IFS=,; echo "${pids[*]}")" "$JS" \
    --servers "127.0.0.1:$((BASE + 201)),127.0.0.1:$((BASE + 202)),127.0.0.1:$((BASE + 203))" \
    --output json
  for p in "${pids[@]}"; do kill -TERM "$p"; done
  for p in "${pids[@]}"; do wait "$p" || true; done
}

machine
for sys in $SYSTEMS; do
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)" > "$results/$sys-when.txt"
  case "$sys" in
    taskbroker) bench_taskbroker ;;
    jetstream-default) bench_jetstream jetstream-default default ;;
    jetstream-always) bench_jetstream jetstream-always always ;;
    *) log "unknown system $sys"; exit 2 ;;
  esac
done
python3 - "$results/machine.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1])); m['load_after'] = open('/proc/loadavg').read().split()[:3]
json.dump(m, open(sys.argv[1], 'w'), indent=1)
EOF
python3 "$here/report.py" "$results" ${BENCH_BASELINE:+"$root/bench/results/$BENCH_BASELINE"} \
  ${BENCH_AFTER:+"$root/bench/results/$BENCH_AFTER"} > "$OUT"
log "wrote $OUT"
