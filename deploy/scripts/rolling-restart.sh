#!/usr/bin/env bash
# Rolling restart of a compose deployment: one node at a time, graceful (SIGTERM: the node hands
# off its leaderships first), then wait until the node is ready (/ready: member of a cluster with
# a metadata leader) and caught up (for every Raft group it hosted before the restart, its
# applied index has reached the highest commit index any node reported once it was ready),
# before the next node. Needs nothing in the image but `taskbroker-probe` (run via exec).
#
#   DOCKER_COMPOSE="docker compose -f deploy/docker-compose.yml -p taskbroker-prod" \
#     deploy/scripts/rolling-restart.sh [SERVICE...]      # default: every nodeN service
# Env: READY_TIMEOUT (s, default 120), CATCHUP_TIMEOUT (s, default 300), STOP_TIMEOUT (s, 60),
# CATCHUP_SLACK (entries, default 2). Why a slack: an idle group goes quiescent (no heartbeats),
# so its followers learn the leader's last commit index only with the next write; a restarted
# replica of an idle group can stay 1 entry behind indefinitely although it holds every entry.
# Under load groups are not quiescent and replicas reach the target itself. Leaders' own view
# (/api/v1/cluster lagging_replicas, >= 100 entries behind) must not list the node either.
set -euo pipefail
DC="${DOCKER_COMPOSE:-docker compose -f deploy/docker-compose.yml -p taskbroker-prod}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"
CATCHUP_TIMEOUT="${CATCHUP_TIMEOUT:-300}"
STOP_TIMEOUT="${STOP_TIMEOUT:-60}"
CATCHUP_SLACK="${CATCHUP_SLACK:-2}"

log() { echo "rolling-restart: $(date +%H:%M:%S) $*"; }
metrics() { $DC exec -T "$1" /usr/local/bin/taskbroker-probe get /metrics 2>/dev/null; }
ready() { $DC exec -T "$1" /usr/local/bin/taskbroker-probe ready >/dev/null 2>&1; }
# "group value" lines of one metric.
metric_lines() { awk -v m="$1" 'index($0, m "{group=\"") == 1 { split($0, a, "\""); print a[2], $2 }'; }

if (($# > 0)); then services=("$@"); else
  mapfile -t services < <($DC ps --services 2>/dev/null | grep -E '^node[0-9]+$' | sort)
fi
((${#services[@]} > 0)) || { echo "rolling-restart: no node services running ($DC)" >&2; exit 1; }
log "nodes: ${services[*]}"

for s in "${services[@]}"; do
  ready "$s" || { echo "rolling-restart: $s is not ready before its restart; fix that first" >&2; exit 1; }
done

start_all=$(date +%s)
for s in "${services[@]}"; do
  groups_before="$(metrics "$s" | metric_lines taskbroker_raft_applied_index | awk '{print $1}' | sort)"
  t0=$(date +%s)
  log "$s: restarting (graceful, up to ${STOP_TIMEOUT}s)"
  $DC restart -t "$STOP_TIMEOUT" "$s" >/dev/null
  deadline=$((t0 + READY_TIMEOUT))
  until ready "$s"; do
    (($(date +%s) < deadline)) || { echo "rolling-restart: $s not ready after ${READY_TIMEOUT}s" >&2; exit 1; }
    sleep 1
  done
  log "$s: ready after $(($(date +%s) - t0))s"
  # Catch-up target: per group, the highest commit index any node reports now.
  target="$(for o in "${services[@]}"; do metrics "$o" | metric_lines taskbroker_raft_commit_index; done |
    awk '{ if (!($1 in m) || $2 > m[$1]) m[$1] = $2 } END { for (g in m) print g, m[g] }' | sort)"
  deadline=$(($(date +%s) + CATCHUP_TIMEOUT))
  while :; do
    applied="$(metrics "$s" | metric_lines taskbroker_raft_applied_index | sort)"
    behind="$(awk -v want="$groups_before" -v slack="$CATCHUP_SLACK" '
      BEGIN { n = split(want, w, "\n"); for (i = 1; i <= n; i++) if (w[i] != "") need[w[i]] = 1 }
      FNR == NR { t[$1] = $2; next }
      { have[$1] = $2 }
      END {
        for (g in need) if (!(g in have)) print g ": not open yet";
        for (g in have) if ((g in t) && have[g] + slack < t[g]) print g ": applied " have[g] " < " t[g];
      }' <(echo "$target") <(echo "$applied"))"
    id="${s#node}"
    for o in "${services[@]}"; do
      $DC exec -T "$o" /usr/local/bin/taskbroker-probe get /api/v1/cluster 2>/dev/null |
        grep -q "\"lagging_replicas\":\[[^]]*,$id,[0-9]*\]" && behind="$behind
$o reports node $id as a lagging replica"
    done
    [[ -z "$behind" ]] && break
    if (($(date +%s) >= deadline)); then
      echo "rolling-restart: $s still behind after ${CATCHUP_TIMEOUT}s:" >&2; echo "$behind" >&2; exit 1
    fi
    sleep 1
  done
  log "$s: caught up ($(echo "$target" | grep -c . || true) groups) after $(($(date +%s) - t0))s"
done
log "done: ${#services[@]} nodes in $(($(date +%s) - start_all))s"
