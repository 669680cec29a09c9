#!/usr/bin/env bash
# Chaos test on Docker (`make chaos`): the 3-node test compose cluster, producers and workers
# from the host (deploy/chaos, ports on 127.0.0.1 only), and meanwhile:
#   1. docker kill the node leading most partitions, start it again;
#   2. docker network disconnect a node, reconnect it;
#   3. restart every node one by one (docker restart: SIGTERM, graceful).
# Then: every committed task acked (none lost); duplicates reported. `docker compose down -v`
# always, also on failure. Prints "chaos: SKIP" and exits 0 when no Docker engine answers.
# Env: IMAGE (taskbroker:dev; built by `make chaos`), CHAOS_SECONDS (produce at least, 60),
#      CHAOS_PROJECT (compose project, taskbroker-chaos), CHAOS_PRODUCERS (4), CHAOS_WORKERS (4).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(cd "$here/../.." && pwd)"
source "$root/deploy/scripts/lib.sh"
if ! docker_ok; then echo "chaos: SKIP (no Docker engine answers)"; exit 0; fi
DCB="$(compose_cmd)" || { echo "chaos: SKIP (no docker compose / docker-compose)"; exit 0; }
export TASKBROKER_IMAGE="${IMAGE:-taskbroker:dev}"
project="${CHAOS_PROJECT:-taskbroker-chaos}"
DC="$DCB -f $root/deploy/docker-compose.test.yml -p $project"
docker image inspect "$TASKBROKER_IMAGE" >/dev/null 2>&1 || { echo "chaos: image $TASKBROKER_IMAGE missing (make image)" >&2; exit 1; }
bin="$(chaos_bin "$root")"
work="$(mktemp -d)"
log() { echo "chaos: $(date +%H:%M:%S) $*"; }
cleanup() {
  rc=$?
  if ((rc != 0)); then log "FAILED (exit $rc); workload log (tail):"; tail -30 "$work/load.log" 2>/dev/null || true; log "node logs (tail, WARN/ERROR):"; $DC logs --no-color --tail=300 2>&1 | grep -E "ERROR|WARN" | grep -v heartbeat | tail -30 || true; fi
  $DC down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT INT TERM
t_start=$(date +%s)
cid() { $DC ps -q "$1"; }
http_port() { case $1 in node1) echo "${TB_TEST_HTTP_PORT_1:-18081}";; node2) echo "${TB_TEST_HTTP_PORT_2:-18082}";; node3) echo "${TB_TEST_HTTP_PORT_3:-18083}";; esac; }
ready() { curl -fsS -m 2 "127.0.0.1:$(http_port "$1")/ready" >/dev/null 2>&1; }
wait_ready() {
  local deadline=$(($(date +%s) + ${2:-120}))
  until ready "$1"; do (($(date +%s) < deadline)) || { log "$1 not ready in time"; return 1; }; sleep 1; done
}
leader_count() { curl -fsS -m 2 "127.0.0.1:$(http_port "$1")/metrics" 2>/dev/null | grep -c '^taskbroker_raft_leader{group="[^m].*} 1' || true; }
faults=0

$DC down -v --remove-orphans >/dev/null 2>&1 || true
log "starting the cluster ($TASKBROKER_IMAGE, project $project)"
$DC up -d >/dev/null 2>&1
for n in node1 node2 node3; do wait_ready "$n"; done
net="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(cid node1)")"

"$bin" --map "$TEST_MAP" --duration 100000 --stop-file "$work/stop" \
  --producers "${CHAOS_PRODUCERS:-4}" --workers "${CHAOS_WORKERS:-4}" > "$work/load.log" 2>&1 &
load=$!
sleep 15
log "load running: $(tail -1 "$work/load.log")"

# 1. Kill the node leading most partitions.
best=node1; bestc=-1
for n in node1 node2 node3; do c=$(leader_count "$n"); log "$n leads $c partitions"; ((c > bestc)) && { best=$n; bestc=$c; }; done
log "FAULT 1: docker kill $best (leads $bestc partitions)"; faults=$((faults + 1))
docker kill "$(cid "$best")" >/dev/null
sleep 10
log "starting $best again"; docker start "$(cid "$best")" >/dev/null
wait_ready "$best"; sleep 10

# 2. Cut a node off the network and reconnect it.
victim=node2
log "FAULT 2: docker network disconnect $net $victim"; faults=$((faults + 1))
docker network disconnect "$net" "$(cid "$victim")"
sleep 15
log "reconnecting $victim"
docker network connect --alias "$victim" "$net" "$(cid "$victim")"
wait_ready "$victim"; sleep 10

# 3. Restart every node one by one.
for n in node1 node2 node3; do
  log "FAULT 3: docker restart $n"; faults=$((faults + 1))
  docker restart -t 30 "$(cid "$n")" >/dev/null
  wait_ready "$n"; sleep 5
done
# At least CHAOS_SECONDS of load in all.
while (($(date +%s) - t_start < ${CHAOS_SECONDS:-60})); do sleep 1; done
log "faults done ($faults); stopping producers, draining"
touch "$work/stop"
rc=0; wait "$load" || rc=$?
grep -v '^chaos: *[0-9]*s committed' "$work/load.log" | grep -v 'produce .* failed' | tail -20 || true
grep -c 'produce .* failed' "$work/load.log" | sed 's/^/chaos: failed sends logged: /' || true
grep 'produce .* failed' "$work/load.log" | head -5 || true
log "duration $(($(date +%s) - t_start))s, faults $faults, image $(docker image inspect -f '{{.Size}}' "$TASKBROKER_IMAGE") bytes"
exit $rc
