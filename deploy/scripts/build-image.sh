#!/usr/bin/env bash
# Builds the taskbroker image from the release binary: stages a FROM-scratch build context
# (binary + the shared libraries it needs + NSS config + non-root user + static probe) and runs
# `docker build -f deploy/Dockerfile`. Usage: build-image.sh [TAG] (default taskbroker:dev).
# Needs: the release binary already built (`make image` builds it first), rustc, docker.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tag="${1:-${IMAGE:-taskbroker:dev}}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/taskbroker/target}"
bin="$target/release/taskbroker"
[[ -x "$bin" ]] || { echo "build-image: $bin missing (run make build)" >&2; exit 1; }

ctx="$target/docker-context"
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/data"

# The node binary without debug info (the release profile keeps line tables for profiling).
objcopy --strip-debug "$bin" "$ctx/rootfs/usr/local/bin/taskbroker"

# The probe: std only, static (it resolves nothing: it connects to 127.0.0.1).
rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
  "$root/deploy/probe/main.rs" -o "$ctx/rootfs/usr/local/bin/taskbroker-probe"

# Every shared library the binary needs, at the path the dynamic loader looks for it, plus
# glibc's NSS modules for /etc/hosts and DNS (compose/Kubernetes names): since glibc 2.34
# "files" and "dns" live in libc.so.6 itself; the libnss_* stubs are copied when present so an
# older glibc works too.
copy_lib() {
  local src="$1" dst="$ctx/rootfs$1"
  mkdir -p "$(dirname "$dst")"
  cp -L "$src" "$dst"
}
while read -r lib; do
  copy_lib "$lib"
done < <(ldd "$bin" | awk '/=>/ { print $3 } !/=>/ && $1 ~ /^\// { print $1 }' | sort -u)
libdir="$(dirname "$(ldd "$bin" | awk '/libc.so.6/ { print $3 }')")"
for nss in libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
  [[ -e "$libdir/$nss" ]] && copy_lib "$libdir/$nss"
done

cat > "$ctx/rootfs/etc/passwd" <<'P'
root:x:0:0:root:/:/sbin/nologin
taskbroker:x:10001:10001:taskbroker:/data:/sbin/nologin
P
cat > "$ctx/rootfs/etc/group" <<'G'
root:x:0:
taskbroker:x:10001:
G
printf 'hosts: files dns\n' > "$ctx/rootfs/etc/nsswitch.conf"
chmod 1777 "$ctx/rootfs/tmp"

version="$(awk -F'"' '/^version *=/ { print $2; exit }' "$root/Cargo.toml")"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ]]; then revision="$revision-dirty"; fi
docker build -f "$root/deploy/Dockerfile" -t "$tag" \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$ctx"
size="$(docker image inspect -f '{{.Size}}' "$tag")"
echo "build-image: $tag version=$version revision=$revision size=$((size / 1024 / 1024)) MiB ($size bytes)"
