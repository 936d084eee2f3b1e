#!/usr/bin/env bash
# What "secure by default, for real" (issue 24) costs: shoal as it was
# before that issue beside shoal now, in one run on one machine. For each
# build in turn, a fresh 3-node cluster (three `shoal agent` processes on
# loopback addresses 127.79.0.1-3, each with its own data dir, containerd
# namespace and bridge), measured alike:
#
#   1. idle CPU of each agent over BENCH_IDLE_SECONDS: user and system time
#      from /proc/PID/stat, in percent of one core (gossip, Raft heartbeats
#      and every loop of the node: the most gossip can cost)
#   2. writes through the API: wrk posting a new replicas:0 app per request
#      (as cluster-figures.sh does), 1 and 64 connections, to the leader
#   3. apply -> BENCH_REPLICAS replicas of busybox running on the 3 nodes:
#      `shoal apply` (which returns once all run), checked with `shoal ps`
#
#   sudo bench/security-cost.sh
#
# Environment: BENCH_BEFORE (the commit before, default 68681e8: release
# 0.5.0, the last commit before issue 24; built with `cargo build --release`
# in a worktree under target/bench-before/ when missing, about 2.6 GB and
# 10-20 minutes on 2 cores; BENCH_BEFORE_BIN names a binary of it built
# elsewhere), SHOAL_BIN (the build now, default
# target/release/shoal, built when missing), BENCH_ROUNDS (default 1; with
# more, the order of the two builds alternates and figures are averaged),
# BENCH_IDLE_SECONDS (30), BENCH_WRK_SECONDS (10), BENCH_REPLICAS (100),
# BENCH_TIMEOUT (every wait, 180 s), BENCH_KEEP=1 (keep the scratch dir).
#
# Prints a table (before, after, after/before), then one line of JSON. It
# asserts nothing about the figures. It stops exactly the agents it
# started (by pid), removes their containerd namespaces, cgroups, bridges
# and its scratch directory.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BEFORE_REV=${BENCH_BEFORE:-68681e8}
AFTER_SRC=${SHOAL_BIN:-$ROOT/target/release/shoal}
ROUNDS=${BENCH_ROUNDS:-1}
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-30}
WRK_SECONDS=${BENCH_WRK_SECONDS:-10}
REPLICAS=${BENCH_REPLICAS:-100}
TIMEOUT=${BENCH_TIMEOUT:-180}
CONTAINERD_SOCKET=/run/containerd/containerd.sock
API_PORT=7950
GOSSIP_PORT=7946
IMAGE=shoal.bench/busybox:latest
LOOP='trap '"'"'exit 0'"'"' TERM; while true; do sleep 1; done'
NODES=(1 2 3)
declare -a NAME IP NS PID
for i in "${NODES[@]}"; do
  NAME[i]=sc-$i
  IP[i]=127.79.0.$i
  NS[i]=shoal-sc-bench-$i
  PID[i]=""
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning: %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31merror: %s\033[0m\n' "$*" >&2; exit 1; }
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
busy_now() { ps -eo comm= | grep -cxE 'rustc|cargo|cc1|cc1plus|ld|ld\..*|rust-lld|collect2' || true; }
BUSY_MAX=0
note_busy() {
  local b
  b=$(busy_now)
  [ "$b" -le "$BUSY_MAX" ] || BUSY_MAX=$b
  [ "$b" -eq 0 ] || warn "$b compiler/cargo processes running during: $1"
}

[ "$(id -u)" -eq 0 ] || die "run as root: the agents drive containerd and runc"
for n in ROUNDS IDLE_SECONDS WRK_SECONDS REPLICAS TIMEOUT; do
  [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$n: not a positive count: ${!n}"
done

WORK=$(mktemp -d /tmp/shoal-security-cost.XXXXXX)
CONTAINERD_PID=""
WRK_PID=""
T_START=$SECONDS

stop_agent() { # index; SIGTERM, then SIGKILL after 10 s
  local i=$1 pid=${PID[$1]}
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && { warn "agent ${NAME[i]} ignored SIGTERM for 10 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  wait "$pid" 2>/dev/null || true
  PID[i]=""
}

stop_cluster() {
  local i
  for i in "${NODES[@]}"; do stop_agent "$i"; done
  for i in "${NODES[@]}"; do
    cleanup_namespace "${NS[i]}" "shoal/${NS[i]}"
    # A container the runtime was still starting when its agent stopped
    # shows up after the first pass.
    if ctr namespaces ls -q 2>/dev/null | grep -qx "${NS[i]}"; then
      sleep 2
      cleanup_namespace "${NS[i]}" "shoal/${NS[i]}"
    fi
    cleanup_node_network "$WORK/cluster/node$i" "shsc$i"
  done
}

cleanup_all() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$WRK_PID" ] && { kill -TERM "$WRK_PID" 2>/dev/null; wait "$WRK_PID" 2>/dev/null; }
  stop_cluster
  if [ -n "$CONTAINERD_PID" ]; then
    kill -TERM "$CONTAINERD_PID" 2>/dev/null
    wait "$CONTAINERD_PID" 2>/dev/null
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    echo "scratch directory and agent logs kept in $WORK" >&2
  else
    for m in $(findmnt -rn -o TARGET | grep "^$WORK/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() { # description command...
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for $what (logs: $WORK/cluster/node*.log)"
    sleep 0.1
  done
}

# The client of the build under test against node i, bounded in time.
sh_at() { # index args...
  local i=$1
  shift
  SHOAL_ADDR=${IP[i]}:$API_PORT timeout "$TIMEOUT" "$SHOAL" "$@"
}
api_up() { SHOAL_ADDR=${IP[$1]}:$API_PORT timeout 10 "$SHOAL" nodes -o json >/dev/null 2>&1; }
containerd_up() { ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1; }

start_agent() { # index [peer-ip]
  local i=$1 peer=${2:-} dir=$WORK/cluster/node$1
  local args=(agent --name "${NAME[i]}" --advertise "${IP[i]}" --data-dir "$dir"
    --api-port "$API_PORT" --gossip-port "$GOSSIP_PORT"
    --containerd-socket "$CONTAINERD_SOCKET" --containerd-namespace "${NS[i]}"
    --bridge "shsc$i" --cluster-cidr 10.197.0.0/16)
  if [ -n "$peer" ]; then
    args+=(--peer "$peer" --token "$(sh_at 1 cluster token create --role voter)") || die "no join token"
  fi
  "$SHOAL" "${args[@]}" </dev/null >>"$WORK/cluster/node$i.log" 2>&1 &
  PID[i]=$!
  if [ -z "$peer" ]; then
    wait_for "node 1's admin credential" test -s "$dir/admin.json"
    export SHOAL_CONFIG=$dir/admin.json
    TOKEN=$(jq -r .token "$SHOAL_CONFIG")
  fi
  wait_for "agent ${NAME[i]}'s API on ${IP[i]}:$API_PORT" api_up "$i"
}

# Every node lists 3 alive voters and one leader; prints the leader's index.
cluster_ready() {
  local view leader i
  view=$(SHOAL_ADDR=${IP[1]}:$API_PORT timeout 10 "$SHOAL" nodes -o json 2>/dev/null) || return 1
  jq -e 'length == 3 and ([.[] | select(.status == "alive" and .role == "voter")] | length) == 3
         and ([.[] | select(.leader)] | length) == 1' >/dev/null 2>&1 <<<"$view" || return 1
  leader=$(jq -r '.[] | select(.leader) | .name' <<<"$view")
  for i in "${NODES[@]}"; do
    if [ "${NAME[i]}" = "$leader" ]; then echo "$i" >"$WORK/leader"; return 0; fi
  done
  return 1
}

# User and system clock ticks of a process so far.
cpu_ticks() { # pid
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# One build, one fresh cluster: appends "label metric value" lines to $WORK/figures.
measure() { # label binary
  local label=$1 i leader t0 t1 ticks
  SHOAL=$WORK/bin/$label
  rm -rf "$WORK/cluster"
  mkdir -p "$WORK/cluster"
  say "[$label] $("$SHOAL" version 2>/dev/null | head -1): starting 3 agents on ${IP[1]}-3"
  start_agent 1
  start_agent 2 "${IP[1]}"
  start_agent 3 "${IP[1]}"
  wait_for "3 alive voters and one leader" cluster_ready
  leader=$(cat "$WORK/leader")
  for i in "${NODES[@]}"; do
    sh_at "$i" image import --rootfs "$WORK/rootfs" --name "$IMAGE" >/dev/null
  done

  # 1. idle CPU
  sleep 5
  note_busy "[$label] idle CPU"
  declare -A before_ticks
  for i in "${NODES[@]}"; do before_ticks[$i]=$(cpu_ticks "${PID[i]}"); done
  t0=$EPOCHREALTIME
  sleep "$IDLE_SECONDS"
  t1=$EPOCHREALTIME
  for i in "${NODES[@]}"; do
    ticks=$(( $(cpu_ticks "${PID[i]}") - before_ticks[$i] ))
    awk -v l="$label" -v n="${NAME[i]}" -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v a="$t0" -v b="$t1" \
      'BEGIN { printf "%s idle_cpu_%s %.2f\n", l, n, 100 * t / hz / (b - a) }' >>"$WORK/figures"
  done
  note_busy "[$label] idle CPU"

  # 2. writes
  for c in 1 64; do
    local th=$(( c < 2 ? 1 : 2 )) line requests duration_us e_connect e_read e_write e_status e_timeout
    note_busy "[$label] wrk $c"
    wrk -t"$th" -c"$c" -d"${WRK_SECONDS}s" --timeout 10s -s "$WORK/post.lua" \
      "https://${IP[leader]}:$API_PORT/v1/apps" -- "$label-$c" "$TOKEN" >"$WORK/wrk-$label-$c.log" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { cat "$WORK/wrk-$label-$c.log" >&2; die "wrk failed"; }
    WRK_PID=""
    note_busy "[$label] wrk $c"
    line=$(grep '^RESULT ' "$WORK/wrk-$label-$c.log") || { cat "$WORK/wrk-$label-$c.log" >&2; die "no RESULT line from wrk"; }
    [[ $line =~ ^RESULT(\ [a-z_]+=[0-9]+)+$ ]] || die "odd RESULT line from wrk: $line"
    requests=0 duration_us=1 e_connect=0 e_read=0 e_write=0 e_status=0 e_timeout=0
    eval "${line#RESULT }"
    awk -v l="$label" -v c="$c" -v n="$requests" -v e="$((e_connect + e_read + e_write + e_status + e_timeout))" -v d="$duration_us" \
      'BEGIN { printf "%s writes_per_s_%d %.1f\n%s write_errors_%d %d\n", l, c, (n - e) / (d / 1e6), l, c, e }' >>"$WORK/figures"
  done

  # 3. apply -> REPLICAS running
  cat >"$WORK/many.yaml" <<EOF
name: many
services:
  - name: sleeper
    image: $IMAGE
    command: ["/bin/sh", "-c", "$LOOP"]
    replicas: $REPLICAS
EOF
  note_busy "[$label] apply"
  t0=$EPOCHREALTIME
  sh_at "$leader" apply -f "$WORK/many.yaml" --timeout "${TIMEOUT}s" >"$WORK/apply-$label.log" 2>&1 ||
    { cat "$WORK/apply-$label.log" >&2; die "[$label] shoal apply of $REPLICAS replicas failed"; }
  t1=$EPOCHREALTIME
  note_busy "[$label] apply"
  running=$(sh_at "$leader" ps many -o json | jq '[.[] | select(.state == "running")] | length')
  [ "$running" -eq "$REPLICAS" ] || die "[$label] apply returned with $running of $REPLICAS replicas running"
  awk -v l="$label" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s apply_s %.3f\n", l, b - a }' >>"$WORK/figures"
  say "[$label] $(grep "^$label " "$WORK/figures" | tail -n +1 | cut -d' ' -f2- | paste -sd' ')"
  stop_cluster
}

# ------------------------------------------------------------------ setup --

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v jq >/dev/null || need+=(jq)
{ command -v busybox >/dev/null || [ -x /bin/busybox ]; } || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 ||
    { cat "$WORK/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
fi
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

if [ -n "${BENCH_BEFORE_BIN:-}" ] && [ ! -x "$BENCH_BEFORE_BIN" ]; then die "BENCH_BEFORE_BIN: $BENCH_BEFORE_BIN is not an executable"; fi
if [ -n "${SHOAL_BIN:-}" ] && [ ! -x "$SHOAL_BIN" ]; then die "SHOAL_BIN: $SHOAL_BIN is not an executable"; fi
BEFORE_COMMIT=$(git -C "$ROOT" rev-parse --verify "$BEFORE_REV^{commit}") || die "BENCH_BEFORE: no commit $BEFORE_REV in $ROOT"
BEFORE_DIR=$ROOT/target/bench-before/$BEFORE_COMMIT
BEFORE_SRC=${BENCH_BEFORE_BIN:-$BEFORE_DIR/src/target/release/shoal}
if [ ! -x "$BEFORE_SRC" ]; then
  say "building shoal at $BEFORE_REV (cargo build --release -p shoal, in $BEFORE_DIR/src)"
  mkdir -p "$BEFORE_DIR"
  [ -d "$BEFORE_DIR/src" ] || git -C "$ROOT" worktree add --detach "$BEFORE_DIR/src" "$BEFORE_COMMIT" >/dev/null
  (cd "$BEFORE_DIR/src" && cargo build --release -p shoal --bin shoal)
fi
if [ ! -x "$AFTER_SRC" ]; then
  say "building shoal now (cargo build --release -p shoal)"
  (cd "$ROOT" && cargo build --release -p shoal --bin shoal)
fi
# Copies, so that a rebuild during the run changes nothing.
mkdir -p "$WORK/bin"
cp "$BEFORE_SRC" "$WORK/bin/before"
cp "$AFTER_SRC" "$WORK/bin/after"

if ! containerd_up; then
  say "starting containerd (log: $WORK/containerd.log)"
  containerd >"$WORK/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  wait_for containerd containerd_up
fi
for i in "${NODES[@]}"; do
  if [ -n "$(ss -Hltn "src ${IP[i]}:$API_PORT" 2>/dev/null)" ] || [ -n "$(ss -Hlun "src ${IP[i]}:$GOSSIP_PORT" 2>/dev/null)" ]; then
    die "${IP[i]}:$API_PORT or :$GOSSIP_PORT is taken"
  fi
  cleanup_namespace "${NS[i]}" "shoal/${NS[i]}"
done
bash "$ROOT/scripts/busybox-rootfs.sh" "$WORK/rootfs" >/dev/null

cat >"$WORK/post.lua" <<'EOF'
-- POST /v1/apps of a new app per request: name <prefix>-<thread>-<counter>.
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end
local prefix, token, counter = "w", "", 0
function init(args)
  prefix = args[1] or "w"
  token = args[2] or ""
end
function request()
  counter = counter + 1
  local body = string.format(
    '{"name":"%s-%d-%d","services":[{"name":"a","image":"shoal.bench/busybox:latest","replicas":0}]}',
    prefix, tid, counter)
  return wrk.format("POST", "/v1/apps",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d e_connect=%d e_read=%d e_write=%d e_status=%d e_timeout=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
say "$(nproc) cpus, load average $LOAD_START; $ROUNDS round(s), before = $BEFORE_REV"
: >"$WORK/figures"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then measure before; measure after; else measure after; measure before; fi
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ----------------------------------------------------------------- report --

mean() { # label metric
  awk -v l="$1" -v m="$2" '$1 == l && $2 == m { s += $3; n++ } END { if (n) printf "%.2f", s / n; else print "null" }' "$WORK/figures"
}
echo "# shoal before issue 24 ($BEFORE_REV: $("$WORK/bin/before" version 2>/dev/null | head -1)) and now ($("$WORK/bin/after" version 2>/dev/null | head -1))"
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpus, load average $LOAD_START at start, $LOAD_END at end; $ROUNDS round(s), 3 agents on ${IP[1]}-3"
[ "$BUSY_MAX" -eq 0 ] || echo "# up to $BUSY_MAX compiler/cargo processes ran beside the measurements: figures are noisier"
printf '%-26s %10s %10s %12s\n' figure before after after/before
rows=""
for metric in idle_cpu_sc-1 idle_cpu_sc-2 idle_cpu_sc-3 writes_per_s_1 writes_per_s_64 write_errors_1 write_errors_64 apply_s; do
  b=$(mean before "$metric")
  a=$(mean after "$metric")
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.3f", a / b }')
  case $metric in
    idle_cpu_*) what="idle CPU % ${metric#idle_cpu_}" ;;
    writes_per_s_*) what="writes/s, ${metric#writes_per_s_} conn" ;;
    write_errors_*) what="write errors, ${metric#write_errors_} conn" ;;
    apply_s) what="apply -> $REPLICAS running, s" ;;
  esac
  printf '%-26s %10s %10s %12s\n' "$what" "$b" "$a" "$ratio"
  rows+=$(jq -cn --arg m "$metric" --argjson b "$b" --argjson a "$a" '{($m): {before: $b, after: $a}}')$'\n'
done
echo "idle CPU is the agent's whole process (gossip, Raft heartbeats, every loop) in percent of one core over ${IDLE_SECONDS}s; writes are acknowledged POST /v1/apps to the leader, wrk ${WRK_SECONDS}s"
jq -cn --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --argjson cpus "$(nproc)" --arg before "$BEFORE_REV" \
  --arg load_start "$LOAD_START" --arg load_end "$LOAD_END" --argjson busy "$BUSY_MAX" \
  --argjson rounds "$ROUNDS" --argjson runtime "$((SECONDS - T_START))" --argjson replicas "$REPLICAS" \
  --argjson figures "$(jq -cs add <<<"$rows")" \
  '{date: $date, cpus: $cpus, before: $before, rounds: $rounds, replicas: $replicas, load_start: $load_start,
    load_end: $load_end, others_busy_max: $busy, runtime_s: $runtime, figures: $figures}'
