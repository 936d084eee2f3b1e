#!/usr/bin/env bash
# Time from "apply" to N replicas running, on this machine, in one run, for
#   shoal   a fresh `shoal dev` node: `shoal apply -f` (returns when all run)
#   swarm   single-node Docker Swarm (Debian's docker.io): `docker service
#           create --detach`, then polling until N/N tasks are Running
#   ctr     the floor: N x `ctr run -d` one after another, straight to containerd
# with the same busybox image (scripts/busybox-rootfs.sh) and the same command.
#
#   sudo bench/apply-vs-swarm.sh                 # N = 10 50 100
#   sudo BENCH_SIZES="10 50" bench/apply-vs-swarm.sh
#
# Environment: BENCH_SIZES (default "10 50 100"), BENCH_TIMEOUT (seconds for
# every wait, default 300), BENCH_POLL (swarm poll interval, default 0.1),
# SHOAL_BIN (default target/release/shoal, built when missing), BENCH_KEEP=1
# (keep the scratch directory and its logs), BENCH_SWARM_PREFER_OFFLINE=0
# (let the dockerd this script starts try a registry pull for every task, as
# a stock dockerd does; default 1: it uses the local image straight away).
#
# Prints a table, one row per N, and last one line of JSON with every figure.
# It asserts nothing about the timings. Everything it starts (shoal dev,
# dockerd, containerd if it had to) it stops by pid; it leaves the swarm,
# removes its containerd namespaces, the cgroups and the network devices and
# iptables chains that its dockerd made, and its scratch directory.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZES=${BENCH_SIZES:-10 50 100}
TIMEOUT=${BENCH_TIMEOUT:-300}
POLL=${BENCH_POLL:-0.1}
SWARM_OFFLINE=${BENCH_SWARM_PREFER_OFFLINE:-1}
SHOAL_SRC=${SHOAL_BIN:-$ROOT/target/release/shoal}
CONTAINERD_SOCKET=/run/containerd/containerd.sock
NS_SHOAL=shoal-bench
NS_CTR=shoal-bench-ctr
IMAGE=shoal.bench/busybox:latest
APP=bench
LOOP='trap '"'"'exit 0'"'"' TERM; while true; do sleep 1; done'
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning: %s\033[0m\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# Compilers and cargo running beside the benchmark (others' builds or tests).
# shellcheck disable=SC2009  # pgrep -x warns about patterns over 15 characters
busy_now() { ps -eo comm= | grep -cxE 'rustc|cargo|cc1|cc1plus|ld|ld\..*|rust-lld|collect2' || true; }
# Keeps the larger count seen before and after one measurement.
note_busy() { # system n
  local b old
  b=$(busy_now)
  old=$(cat "$RES/busy.$1.$2" 2>/dev/null || echo 0)
  [ "$b" -gt "$old" ] || b=$old
  echo "$b" >"$RES/busy.$1.$2"
  [ "$b" -eq 0 ] || warn "$b compiler/cargo processes running beside the $1 measurement of $2"
}

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: containerd, runc and dockerd need it" >&2
  exit 1
fi
for n in $SIZES; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_SIZES: not a count: $n" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/shoal-bench.XXXXXX)
RES=$WORK/results
mkdir -p "$RES" "$WORK/state"
FAILED=()
PHASE_PID=""

# ---------------------------------------------------------------- cleanup --
# Every cleanup is idempotent and driven by files under $WORK/state, so that
# a phase (run in a subshell) and the EXIT trap can both call it.

stop_pid() { # pidfile name
  local pidfile=$1 name=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((TIMEOUT * 10))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      warn "$name (pid $pid) ignored SIGTERM; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  rm -f "$pidfile"
}

# Removes every task, container, image, lease, blob and snapshot of a
# containerd namespace, then the namespace and its parent cgroups.
unmount_under() { # dir
  local m
  for m in $(findmnt -rn -o TARGET | grep "^$1/" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

cleanup_ctr() {
  [ -f "$WORK/state/ctr-started" ] || return 0
  cleanup_namespace "$NS_CTR" "$NS_CTR"
  rm -f "$WORK/state/ctr-started"
}

cleanup_shoal() {
  [ -f "$WORK/state/shoal-started" ] || return 0
  stop_pid "$WORK/state/shoal-dev.pid" "shoal dev"
  cleanup_namespace "$NS_SHOAL" "shoal/$NS_SHOAL"
  cleanup_node_network "$WORK/shoal-data" shbench0
  # The shared parent /shoal goes only if this run made it.
  if [ ! -f "$WORK/state/shoal-cgroup-existed" ]; then rmdir_cgroups shoal; fi
  unmount_under "$WORK/shoal-data"
  rm -rf "$WORK/shoal-data"
  rm -f "$WORK/state/shoal-started"
}

# The swarm side. With a dockerd that was already running it only removes
# its service and image (and leaves the swarm only if it joined it).
cleanup_swarm() {
  local st=$WORK/state
  [ -f "$st/swarm-started" ] || return 0
  # The phase ran in a subshell: take the daemon it talked to.
  if [ -f "$st/docker-host" ]; then
    DOCKER_HOST=$(cat "$st/docker-host")
    export DOCKER_HOST
  fi
  if [ -f "$st/dockerd-usable" ]; then
    local n
    for n in $SIZES; do
      "$DOCKER" service rm "bench-$n" >/dev/null 2>&1 || true
    done
    for _ in $(seq 1 $((TIMEOUT * 5))); do
      bench_containers_gone && break
      sleep 0.2
    done
    if [ -f "$st/swarm-joined" ]; then
      say "docker swarm leave --force"
      "$DOCKER" swarm leave --force >/dev/null 2>&1 || warn "docker swarm leave failed"
    fi
    "$DOCKER" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  fi
  if [ -f "$st/dockerd.pid" ]; then
    stop_pid "$st/dockerd.pid" dockerd
    # What the daemon leaves on the host, when this run made it.
    local link
    for link in docker0 docker_gwbridge; do
      if [ ! -f "$st/link-$link-existed" ] && ip link show "$link" >/dev/null 2>&1; then
        ip link delete "$link" 2>/dev/null || warn "could not delete link $link"
      fi
    done
    if [ ! -f "$st/iptables-docker-existed" ]; then
      local t line chain
      for t in filter nat; do
        iptables-save -t "$t" 2>/dev/null | grep '^-A' | grep -E 'DOCKER|docker0|docker_gwbridge' |
          while read -r line; do eval "iptables -t $t ${line/#-A/-D}" 2>/dev/null || true; done
        for chain in $(iptables-save -t "$t" 2>/dev/null | sed -n 's/^:\(DOCKER[^ ]*\) .*/\1/p'); do
          iptables -t "$t" -F "$chain" 2>/dev/null || true
        done
        for chain in $(iptables-save -t "$t" 2>/dev/null | sed -n 's/^:\(DOCKER[^ ]*\) .*/\1/p'); do
          iptables -t "$t" -X "$chain" 2>/dev/null || warn "could not delete iptables chain $t/$chain"
        done
      done
      if [ -f "$st/forward-policy" ]; then
        iptables -P FORWARD "$(cat "$st/forward-policy")" 2>/dev/null || true
      fi
    fi
    if [ -f "$st/ip-forward" ]; then
      sysctl -qw net.ipv4.ip_forward="$(cat "$st/ip-forward")" || true
    fi
    [ -f "$st/moby-ns-existed" ] || cleanup_namespace moby moby
    [ -f "$st/docker-cgroup-existed" ] || rmdir_cgroups docker
    [ -f "$st/run-docker-existed" ] || rm -rf /run/docker
    [ -f "$st/docker-key-existed" ] || rm -f /etc/docker/key.json
    unmount_under "$WORK/docker"
    rm -rf "$WORK/docker"
  fi
  rm -f "$st/swarm-started" "$st/dockerd-usable" "$st/swarm-joined" "$st/docker-host"
}

cleanup_all() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "${PHASE_PID:-}" ]; then
    kill -TERM "$PHASE_PID" 2>/dev/null
    wait "$PHASE_PID" 2>/dev/null
  fi
  cleanup_ctr
  cleanup_shoal
  cleanup_swarm
  stop_pid "$WORK/state/containerd.pid" containerd
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ ${#FAILED[@]} -gt 0 ] || [ "$rc" -ne 0 ]; then
    echo "scratch directory and logs kept in $WORK" >&2
  else
    unmount_under "$WORK"
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a phase in a subshell with `set -e`; a failed phase loses its
# figures, the others still run. Its cleanup runs right after it.
run_phase() { # name function
  local name=$1 rc
  say "---- $name ----"
  set +e
  # In the background so that a signal to this script is handled at once.
  ( set -e; "$2" ) </dev/null &
  PHASE_PID=$!
  wait "$PHASE_PID"
  rc=$?
  PHASE_PID=""
  set -e
  [ "$rc" -eq 0 ] || { warn "the $name phase failed (exit $rc); its figures are missing"; FAILED+=("$name"); }
  "cleanup_$name"
}

# Polls a command until it succeeds, at most TIMEOUT seconds.
wait_for() { # description command...
  local what=$1; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out after ${TIMEOUT}s waiting for $what" >&2
      return 1
    fi
    sleep "$POLL"
  done
}

# ----------------------------------------------------------------- set up --

ensure_containerd() {
  ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1 && return 0
  say "starting containerd (log: $WORK/containerd.log)"
  containerd >"$WORK/containerd.log" 2>&1 &
  echo $! >"$WORK/state/containerd.pid"
  wait_for containerd ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1
}

ensure_busybox() {
  command -v busybox >/dev/null 2>&1 || [ -x /bin/busybox ] && return 0
  say "installing busybox-static"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
}

# An OCI image layout tarball of the rootfs, one uncompressed layer, for
# `ctr images import`.
make_oci_tar() { # rootfs out
  local rootfs=$1 out=$2 d arch layer lsize config csize manifest msize
  d=$WORK/oci
  mkdir -p "$d/blobs/sha256"
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  tar -C "$rootfs" --numeric-owner -cf "$d/layer.tar" .
  layer=$(sha256sum "$d/layer.tar" | cut -d' ' -f1)
  lsize=$(stat -c %s "$d/layer.tar")
  mv "$d/layer.tar" "$d/blobs/sha256/$layer"
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$layer" >"$d/config.json"
  config=$(sha256sum "$d/config.json" | cut -d' ' -f1)
  csize=$(stat -c %s "$d/config.json")
  mv "$d/config.json" "$d/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config" "$csize" "$layer" "$lsize" >"$d/manifest.json"
  manifest=$(sha256sum "$d/manifest.json" | cut -d' ' -f1)
  msize=$(stat -c %s "$d/manifest.json")
  mv "$d/manifest.json" "$d/blobs/sha256/$manifest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"latest"}}]}' \
    "$manifest" "$msize" "$arch" "$IMAGE" >"$d/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
  tar -C "$d" -cf "$out" oci-layout index.json blobs
  rm -rf "$d"
}

free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] && { echo "$port"; return 0; }
  done
  echo "no free port found" >&2
  return 1
}

# --------------------------------------------------------------- 3. ctr ----

phase_ctr() {
  local c=(ctr -n "$NS_CTR") n i t0 secs running
  touch "$WORK/state/ctr-started"
  if ctr namespaces ls -q | grep -qx "$NS_CTR"; then
    warn "containerd namespace $NS_CTR is left from an earlier run; cleaning it"
    cleanup_namespace "$NS_CTR" "$NS_CTR"
  fi
  "${c[@]}" images import "$WORK/busybox-oci.tar" >/dev/null
  for n in $SIZES; do
    say "ctr: $n x ctr run -d, one after another"
    note_busy ctr "$n"
    t0=$(now)
    for i in $(seq 1 "$n"); do
      "${c[@]}" run -d "$IMAGE" "bench-$i" /bin/sh -c "$LOOP" >/dev/null
    done
    secs=$(since "$t0")
    note_busy ctr "$n"
    running=$("${c[@]}" tasks ls | awk '$3 == "RUNNING"' | wc -l)
    [ "$running" -eq "$n" ] || { echo "ctr: $running of $n tasks running" >&2; return 1; }
    echo "$secs" >"$RES/ctr.$n"
    say "ctr: $n running after ${secs}s ($(awk -v s="$secs" -v n="$n" 'BEGIN { printf "%.3f", s / n }') s each)"
    for i in $(seq 1 "$n"); do
      "${c[@]}" tasks kill -s SIGKILL "bench-$i" >/dev/null 2>&1 || true
    done
    for i in $(seq 1 "$n"); do
      # --force kills the process if it still runs and waits for it.
      "${c[@]}" tasks delete -f "bench-$i" >/dev/null 2>>"$WORK/ctr-cleanup.log"
      "${c[@]}" containers delete "bench-$i" >/dev/null 2>>"$WORK/ctr-cleanup.log"
    done
  done
}

# ------------------------------------------------------------- 1. shoal ----

shoal_ready() { "$SHOAL" nodes >/dev/null 2>&1; }
shoal_tasks_gone() { [ -z "$(ctr -n "$NS_SHOAL" tasks ls -q 2>/dev/null)" ]; }

phase_shoal() {
  local n t0 secs running port
  touch "$WORK/state/shoal-started"
  [ -d /sys/fs/cgroup/memory/shoal ] && touch "$WORK/state/shoal-cgroup-existed"
  if ctr namespaces ls -q | grep -qx "$NS_SHOAL"; then
    warn "containerd namespace $NS_SHOAL is left from an earlier run; cleaning it"
    cleanup_namespace "$NS_SHOAL" "shoal/$NS_SHOAL"
  fi
  port=$(free_port)
  export SHOAL_ADDR=127.0.0.1:$port
  # The credential the node writes when it forms its cluster; HOME points
  # into the work dir so that shoal dev's `dev` context is not the user's.
  export SHOAL_CONFIG=$WORK/shoal-data/admin.json
  say "starting shoal dev on $SHOAL_ADDR, namespace $NS_SHOAL (log: $WORK/shoal-dev.log)"
  HOME=$WORK "$SHOAL" dev --data-dir "$WORK/shoal-data" --api "$SHOAL_ADDR" \
    --containerd-socket "$CONTAINERD_SOCKET" --containerd-namespace "$NS_SHOAL" \
    --bridge shbench0 --cluster-cidr 10.199.0.0/16 \
    >"$WORK/shoal-dev.log" 2>&1 &
  echo $! >"$WORK/state/shoal-dev.pid"
  wait_for "shoal dev to answer" shoal_ready
  "$SHOAL" image import --rootfs "$WORK/rootfs" --name "$IMAGE" >/dev/null
  for n in $SIZES; do
    cat >"$WORK/app-$n.yaml" <<EOF
name: $APP
services:
  - name: sleeper
    image: $IMAGE
    command: ["/bin/sh", "-c", "$LOOP"]
    replicas: $n
EOF
    say "shoal: apply $n replicas"
    note_busy shoal "$n"
    t0=$(now)
    "$SHOAL" apply -f "$WORK/app-$n.yaml" --timeout "${TIMEOUT}s" >"$WORK/shoal-apply-$n.log" 2>&1 ||
      { cat "$WORK/shoal-apply-$n.log" >&2; return 1; }
    secs=$(since "$t0")
    note_busy shoal "$n"
    running=$("$SHOAL" ps "$APP" -o json | grep -cE '"state": *"running"' || true)
    [ "$running" -eq "$n" ] || { echo "shoal: apply returned with $running of $n tasks running" >&2; return 1; }
    echo "$secs" >"$RES/shoal.$n"
    say "shoal: $n running after ${secs}s"
    t0=$(now)
    "$SHOAL" rm "$APP" --timeout "${TIMEOUT}s" >/dev/null
    wait_for "shoal's containers to go" shoal_tasks_gone
    say "shoal: removed in $(since "$t0")s"
  done
}

# ------------------------------------------------------------- 2. swarm ----

service_replicas() { "$DOCKER" service ls --filter "name=$1" --format '{{.Name}} {{.Replicas}}' | grep -qx "$1 $2/$2"; }
bench_containers_gone() {
  ! "$DOCKER" ps -a --filter label=com.docker.swarm.service.name \
    --format '{{.Label "com.docker.swarm.service.name"}}' 2>/dev/null | grep -q '^bench-[0-9]*$'
}
service_gone() { [ -z "$("$DOCKER" ps -aq --filter "label=com.docker.swarm.service.name=$1")" ]; }
dockerd_ready() { "$DOCKER" info >/dev/null 2>&1; }

phase_swarm() {
  local st=$WORK/state n t0 secs running svc
  touch "$st/swarm-started"
  if [ ! -x "$DOCKERD" ] || [ ! -x "$DOCKER" ]; then
    say "installing Debian's docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >"$WORK/apt.log" 2>&1 ||
      { cat "$WORK/apt.log" >&2; return 1; }
  fi
  if DOCKER_HOST=unix:///var/run/docker.sock "$DOCKER" info >/dev/null 2>&1; then
    export DOCKER_HOST=unix:///var/run/docker.sock
    warn "using the dockerd already running; it may try registry pulls per task unless it runs with DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1"
  else
    # Note what exists before our dockerd, to remove only what it adds.
    local link
    for link in docker0 docker_gwbridge; do
      ip link show "$link" >/dev/null 2>&1 && touch "$st/link-$link-existed"
    done
    iptables-save 2>/dev/null | grep -q '^:DOCKER' && touch "$st/iptables-docker-existed"
    iptables -S FORWARD 2>/dev/null | sed -n 's/^-P FORWARD //p' >"$st/forward-policy"
    [ -s "$st/forward-policy" ] || rm -f "$st/forward-policy"
    sysctl -n net.ipv4.ip_forward >"$st/ip-forward"
    ctr namespaces ls -q | grep -qx moby && touch "$st/moby-ns-existed"
    [ -d /sys/fs/cgroup/memory/docker ] || [ -d /sys/fs/cgroup/unified/docker ] && touch "$st/docker-cgroup-existed"
    [ -e /run/docker ] && touch "$st/run-docker-existed"
    [ -e /etc/docker/key.json ] && touch "$st/docker-key-existed"
    mkdir -p "$WORK/docker"
    export DOCKER_HOST=unix://$WORK/docker/docker.sock
    say "starting dockerd (log: $WORK/docker/dockerd.log)"
    # PREFER_OFFLINE_IMAGE: swarm tasks use the local image and try no
    # registry pull first (there is no network here; each try fails).
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=$SWARM_OFFLINE "$DOCKERD" \
      --containerd "$CONTAINERD_SOCKET" \
      --data-root "$WORK/docker/data" --exec-root "$WORK/docker/exec" \
      --pidfile "$WORK/docker/dockerd.pid" -H "$DOCKER_HOST" \
      >"$WORK/docker/dockerd.log" 2>&1 &
    echo $! >"$st/dockerd.pid"
  fi
  echo "$DOCKER_HOST" >"$st/docker-host"
  touch "$st/dockerd-usable"
  wait_for dockerd dockerd_ready
  say "dockerd: $("$DOCKER" version --format '{{.Server.Version}}')"
  if [ "$("$DOCKER" info --format '{{.Swarm.LocalNodeState}}')" = active ]; then
    warn "this dockerd is already in a swarm; using it and not leaving it"
  else
    say "docker swarm init --advertise-addr 127.0.0.1"
    "$DOCKER" swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null
    touch "$st/swarm-joined"
  fi
  tar -C "$WORK/rootfs" --numeric-owner -c . | "$DOCKER" import - "$IMAGE" >/dev/null
  for n in $SIZES; do
    svc=bench-$n
    say "swarm: service create --replicas $n"
    note_busy swarm "$n"
    t0=$(now)
    "$DOCKER" service create --detach --no-resolve-image --quiet --replicas "$n" --name "$svc" \
      "$IMAGE" /bin/sh -c "$LOOP" >/dev/null
    wait_for "$n of $n swarm tasks running" service_replicas "$svc" "$n"
    secs=$(since "$t0")
    note_busy swarm "$n"
    running=$("$DOCKER" service ps "$svc" --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running' || true)
    [ "$running" -eq "$n" ] || { echo "swarm: $running of $n tasks running" >&2; return 1; }
    echo "$secs" >"$RES/swarm.$n"
    say "swarm: $n running after ${secs}s"
    t0=$(now)
    "$DOCKER" service rm "$svc" >/dev/null
    wait_for "swarm's containers of $svc to go" service_gone "$svc"
    say "swarm: removed in $(since "$t0")s"
  done
  if [ -f "$WORK/docker/dockerd.log" ]; then
    local pulls
    pulls=$(grep -c 'pulling image failed\|Error getting v2 registry' "$WORK/docker/dockerd.log" || true)
    [ "$pulls" -eq 0 ] || warn "dockerd tried a registry $pulls times (see its log)"
    echo "$pulls" >"$RES/swarm-pull-attempts"
  fi
}

# ------------------------------------------------------------------ main ---

LOAD_START=$(loadavg)
say "sizes: $SIZES; timeout ${TIMEOUT}s per wait; load average at start: $LOAD_START ($(nproc) cpus)"
busy=$(busy_now)
[ "$busy" -eq 0 ] || warn "$busy compiler/cargo processes are running: the figures share the cpus with them"

if [ ! -x "$SHOAL_SRC" ]; then
  say "building shoal (cargo build --release -p shoal)"
  # shellcheck disable=SC1091
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  (cd "$ROOT" && cargo build --release -p shoal)
fi
# A copy, so that a rebuild in the repo during the run changes nothing.
mkdir -p "$WORK/bin"
cp "$SHOAL_SRC" "$WORK/bin/shoal"
SHOAL=$WORK/bin/shoal
SHOAL_VERSION=$("$SHOAL" version 2>/dev/null | head -1 || echo unknown)

ensure_containerd
ensure_busybox
say "building the busybox rootfs and its OCI tarball"
bash "$ROOT/scripts/busybox-rootfs.sh" "$WORK/rootfs" >/dev/null
make_oci_tar "$WORK/rootfs" "$WORK/busybox-oci.tar"

# One system at a time: each phase stops its daemon before the next starts.
run_phase ctr phase_ctr
run_phase shoal phase_shoal
run_phase swarm phase_swarm
LOAD_END=$(loadavg)

# ---------------------------------------------------------------- report ---

fig() { if [ -f "$RES/$1.$2" ]; then cat "$RES/$1.$2"; else echo null; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "null" || b == "null" || b == 0) print "null"; else printf "%.2f", a / b }'; }
cell() { if [ "$1" = null ]; then echo -; else echo "$1"; fi; }
busy_of() { cat "$RES/busy.$1.$2" 2>/dev/null || echo null; }
busy_total=0
for f in "$RES"/busy.*; do [ -f "$f" ] && busy_total=$((busy_total + $(cat "$f"))); done

echo "# shoal apply vs Docker Swarm vs serial ctr run: seconds from apply to N running"
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpus, load average $LOAD_START at start, $LOAD_END at end; $SHOAL_VERSION"
if [ "$busy_total" -gt 0 ]; then
  echo "# compilers/cargo were running beside some measurements (see \"others_busy\" in the JSON): figures are noisier"
fi
printf '%-5s %8s %8s %13s %12s %10s\n' N shoal_s swarm_s ctr_serial_s swarm/shoal shoal/ctr
rows=()
for n in $SIZES; do
  s=$(fig shoal "$n"); w=$(fig swarm "$n"); f=$(fig ctr "$n")
  ws=$(ratio "$w" "$s"); sc=$(ratio "$s" "$f")
  printf '%-5s %8s %8s %13s %12s %10s\n' "$n" "$(cell "$s")" "$(cell "$w")" "$(cell "$f")" "$(cell "$ws")" "$(cell "$sc")"
  rows+=("{\"n\":$n,\"shoal_s\":$s,\"swarm_s\":$w,\"ctr_serial_s\":$f,\"swarm_over_shoal\":$ws,\"shoal_over_ctr\":$sc,\"others_busy\":{\"shoal\":$(busy_of shoal "$n"),\"swarm\":$(busy_of swarm "$n"),\"ctr\":$(busy_of ctr "$n")}}")
done
pulls=$(cat "$RES/swarm-pull-attempts" 2>/dev/null || echo null)
failed=""
for name in "${FAILED[@]+"${FAILED[@]}"}"; do failed+="${failed:+,}\"$name\""; done
printf '{"date":"%s","cpus":%s,"load_start":"%s","load_end":"%s","shoal":"%s","swarm_prefer_offline_image":%s,"swarm_pull_attempts":%s,"failed":[%s],"results":[%s]}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$LOAD_START" "$LOAD_END" "$SHOAL_VERSION" "$([ "$SWARM_OFFLINE" = 1 ] && echo true || echo false)" "$pulls" "$failed" \
  "$(IFS=,; echo "${rows[*]}")"
[ ${#FAILED[@]} -eq 0 ]
