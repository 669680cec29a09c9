#!/usr/bin/env bash
# Validates every compose file (and the prod file's monitoring profile) with `docker compose
# config`; also that the JSON config files parse. SKIPs (exit 0) without docker compose.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; deploy="$(cd "$here/.." && pwd)"
source "$here/lib.sh"
# Relative paths in the compose files (seccomp profile, configs) resolve against the deploy dir.
cd "$deploy"
DCB="$(compose_cmd 2>/dev/null)" || { echo "compose-check: SKIP (no docker compose / docker-compose)"; exit 0; }
fail=0
for f in docker-compose.dev.yml docker-compose.test.yml docker-compose.yml; do
  if $DCB -f "$deploy/$f" config -q; then echo "compose-check: ok $f"; else echo "compose-check: FAIL $f"; fail=1; fi
done
if $DCB -f "$deploy/docker-compose.yml" --profile monitoring config --services | grep -qx grafana; then
  echo "compose-check: ok docker-compose.yml --profile monitoring"
else echo "compose-check: FAIL monitoring profile"; fail=1; fi
for j in "$deploy"/seccomp/*.json "$deploy"/grafana/dashboards/*.json; do
  python3 -m json.tool "$j" >/dev/null && echo "compose-check: ok $(basename "$j")" || { echo "compose-check: FAIL $j"; fail=1; }
done
exit $fail
