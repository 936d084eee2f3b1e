#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine and runs shoal's main job: a
# one-node cluster (`shoal dev`) running the demo app in real containers.
#   scripts/demo.sh        install, build, start the node, deploy the demo
#   scripts/demo.sh stop   remove the demo app and stop the node
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DATA_DIR=${SHOAL_DEMO_DATA_DIR:-/var/lib/shoal-dev}
STATE=target/demo
SHOAL=target/release/shoal
export SHOAL_ADDR=127.0.0.1:7950
# The demo's own registry (Debian's docker-registry), on loopback: the demo
# app's image comes from it, as a real app's would.
REGISTRY=${SHOAL_DEMO_REGISTRY:-127.0.0.1:5555}
# The credential the node writes when it forms the cluster (shoal dev also
# makes it the current context of ~/.config/shoal/config.json).
export SHOAL_CONFIG=$DATA_DIR/admin.json

stop() {
  if [ -f "$STATE/shoal-dev.pid" ] && kill -0 "$(cat "$STATE/shoal-dev.pid")" 2>/dev/null; then
    "$SHOAL" rm demo 2>/dev/null || true
    say "stopping the shoal dev node (pid $(cat "$STATE/shoal-dev.pid"))"
    pid=$(cat "$STATE/shoal-dev.pid")
    kill "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$STATE/shoal-dev.pid"
  else
    echo "no demo node is running" >&2
  fi
  # The node's bridge and masquerade chain (its task networks went with the app).
  if ip link show shoal0 >/dev/null 2>&1; then
    say "removing the bridge shoal0 and the chain SHOAL-shoal0"
    ip link delete shoal0 2>/dev/null || true
    while iptables -t nat -D POSTROUTING -j SHOAL-shoal0 2>/dev/null; do :; done
    iptables -t nat -F SHOAL-shoal0 2>/dev/null || true
    iptables -t nat -X SHOAL-shoal0 2>/dev/null || true
  fi
}

stop_registry() {
  if [ -f "$STATE/registry.pid" ] && kill -0 "$(cat "$STATE/registry.pid")" 2>/dev/null; then
    say "stopping the demo registry (pid $(cat "$STATE/registry.pid"))"
    kill "$(cat "$STATE/registry.pid")"
  fi
  rm -f "$STATE/registry.pid"
}

start_registry() {
  if [ -f "$STATE/registry.pid" ] && kill -0 "$(cat "$STATE/registry.pid")" 2>/dev/null; then
    return
  fi
  mkdir -p "$STATE/registry"
  cat >"$STATE/registry/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $PWD/$STATE/registry/data
http:
  addr: $REGISTRY
YAML
  say "starting a registry on $REGISTRY (docker-registry; log: $STATE/registry.log)"
  docker-registry serve "$STATE/registry/config.yml" >"$STATE/registry.log" 2>&1 &
  echo $! >"$STATE/registry.pid"
  for _ in $(seq 1 100); do
    curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "the demo registry did not come up; see $STATE/registry.log" >&2
  exit 1
}

if [ "${1:-}" = stop ]; then
  stop
  stop_registry
  exit 0
fi

need_root
ensure_packages
ensure_rust
ensure_containerd
say "building shoal (release)"
cargo build --release --locked -p shoal
mkdir -p "$STATE"

if [ -f "$STATE/shoal-dev.pid" ] && kill -0 "$(cat "$STATE/shoal-dev.pid")" 2>/dev/null; then
  say "a shoal dev node is already running (pid $(cat "$STATE/shoal-dev.pid"))"
else
  say "starting a one-node cluster: shoal dev --data-dir $DATA_DIR (log: $STATE/shoal-dev.log)"
  nohup "$SHOAL" dev --data-dir "$DATA_DIR" --api "$SHOAL_ADDR" >"$STATE/shoal-dev.log" 2>&1 &
  echo $! >"$STATE/shoal-dev.pid"
  for _ in $(seq 1 300); do
    "$SHOAL" nodes >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$SHOAL" nodes >/dev/null || { tail -20 "$STATE/shoal-dev.log" >&2; exit 1; }
fi

start_registry
say "building the demo image from Debian's busybox-static and pushing it to $REGISTRY (skopeo)"
bash scripts/busybox-rootfs.sh "$STATE/rootfs"
"$SHOAL" image pack --rootfs "$STATE/rootfs" --name demo/busybox:latest -o "$STATE/busybox.tar"
skopeo copy --quiet --insecure-policy --dest-tls-verify=false \
  "oci-archive:$STATE/busybox.tar:latest" "docker://$REGISTRY/demo/busybox:latest"
# The spec names the image by the demo registry's address.
sed "s#127.0.0.1:5555/#$REGISTRY/#" examples/demo.yaml >"$STATE/demo.yaml"

say "shoal apply -f examples/demo.yaml (the node pulls the image from $REGISTRY, pinned to its digest)"
"$SHOAL" apply -f "$STATE/demo.yaml"
echo
say "shoal nodes";  "$SHOAL" nodes
say "shoal apps";   "$SHOAL" apps
say "shoal ps";     "$SHOAL" ps
say "shoal images (pulled by digest)"; "$SHOAL" images
sleep 3
say "shoal logs demo.hello --tail 2"; "$SHOAL" logs demo.hello --tail 2
say "ctr -n shoal tasks ls (what containerd runs)"; ctr -n shoal tasks ls
say "shoal dns list"; "$SHOAL" dns list
# The node's DNS server listens on the first address of its subnet.
SUBNET=$("$SHOAL" nodes -o json | sed -n 's/.*"subnet": "\([0-9.]*\)\.0\/.*/\1/p' | head -1)
if [ -n "$SUBNET" ]; then
  say "dig +short @$SUBNET.1 web.demo.shoal"; dig +short "@$SUBNET.1" web.demo.shoal
  for address in $(dig +short "@$SUBNET.1" web.demo.shoal); do
    say "curl http://$address/"; curl -sS --max-time 5 "http://$address/"
  done
fi
cat <<MSG

The demo runs. Look at it with:
  export PATH=\$PWD/target/release:\$PATH
  shoal ps                      # tasks, their state and promise
  shoal app inspect demo        # spec, services, tasks
  shoal logs -f demo.hello      # follow the output of every replica
  shoal dns list                # the names the node's DNS serves (web.demo.shoal)
  shoal apply -f examples/demo.yaml   # after editing replicas, say
Stop it with:
  scripts/demo.sh stop
MSG
