# Shared helpers of the deploy scripts (sourced).
# docker_ok: a Docker engine answers (quickly).
docker_ok() { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; }
# compose_cmd: "docker compose" (v2 plugin) or "docker-compose" (v1).
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then echo "docker compose";
  elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose;
  else return 1; fi
}
# The chaos workload binary (built on demand; the workspace member deploy/chaos).
chaos_bin() {
  local root="$1" target="${CARGO_TARGET_DIR:-$HOME/.cache/taskbroker/target}"
  (cd "$root" && CARGO_TARGET_DIR="$target" cargo build --release --quiet -p taskbroker-chaos >&2) || return 1
  echo "$target/release/taskbroker-chaos"
}
TEST_MAP="node1:7070=127.0.0.1:${TB_TEST_CLIENT_PORT_1:-17071},node2:7070=127.0.0.1:${TB_TEST_CLIENT_PORT_2:-17072},node3:7070=127.0.0.1:${TB_TEST_CLIENT_PORT_3:-17073}"
