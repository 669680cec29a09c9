#!/usr/bin/env bash
# Rolling-restart test (`make rolling-restart-test`): starts the 3-node test compose cluster,
# runs a producer from the host throughout `rolling-restart.sh`, and fails unless zero sends
# failed (and every committed task was then acked by the workers). Tears down always.
# SKIPs (exit 0) when no Docker engine answers. Env: IMAGE, RR_PROJECT (taskbroker-rr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(cd "$here/../.." && pwd)"
source "$here/lib.sh"
if ! docker_ok; then echo "rolling-restart-test: SKIP (no Docker engine answers)"; exit 0; fi
DCB="$(compose_cmd)" || { echo "rolling-restart-test: SKIP (no docker compose)"; exit 0; }
export TASKBROKER_IMAGE="${IMAGE:-taskbroker:dev}"
DC="$DCB -f $root/deploy/docker-compose.test.yml -p ${RR_PROJECT:-taskbroker-rr}"
bin="$(chaos_bin "$root")"
work="$(mktemp -d)"
cleanup() { rc=$?; $DC down -v --remove-orphans >/dev/null 2>&1 || true; rm -rf "$work"; exit $rc; }
trap cleanup EXIT INT TERM
$DC down -v --remove-orphans >/dev/null 2>&1 || true
$DC up -d >/dev/null 2>&1
for n in node1 node2 node3; do
  for _ in $(seq 120); do $DC exec -T "$n" /usr/local/bin/taskbroker-probe ready >/dev/null 2>&1 && break; sleep 1; done
done
t0=$(date +%s)
"$bin" --map "$TEST_MAP" --duration 100000 --stop-file "$work/stop" --producers 2 --workers 2 \
  --max-failed-produce 0 > "$work/load.log" 2>&1 &
load=$!
sleep 10
echo "rolling-restart-test: load: $(tail -1 "$work/load.log")"
rr=0; DOCKER_COMPOSE="$DC" "$here/rolling-restart.sh" || rr=$?
sleep 5
touch "$work/stop"
rc=0; wait "$load" || rc=$?
grep -E 'RESULT|FAIL|PASS|errors by kind|produce .* failed' "$work/load.log" | head -20
echo "rolling-restart-test: $(($(date +%s) - t0))s, rolling restart exit $rr, workload exit $rc"
((rr == 0 && rc == 0)) && echo "rolling-restart-test: PASS" || { echo "rolling-restart-test: FAIL"; exit 1; }
