#!/usr/bin/env bash
# Cluster figures of shoal, from one 3-node cluster on this machine (three
# `shoal agent` processes on loopback addresses 127.77.0.1-3, each with its
# own data dir and containerd namespace):
#
#   1. leader failover: kill -9 of the leader's agent until a write (POST
#      /v1/apps of a new app) sent to another node succeeds; 5 rounds
#   2. task failover: kill -9 of a follower that runs a replica of a
#      3-replica app until `shoal ps` shows 3 replicas running on live nodes;
#      3 rounds
#   2b. the same with the registry gone: one replica of an image pulled from
#      a docker-registry of the script's own, held ahead by the service's
#      standby (`prepull: successors`, the default); the registry is
#      stopped, then the node running the replica is killed (-9) until the
#      replica runs on another node; the killed node comes back and, as the
#      next standby, takes the image from the node running it; 3 rounds
#   3. write throughput and latency through the API with wrk: 1 and 64
#      connections, 10 s each, all to the leader, then all to a follower
#   4. idle memory: VmRSS of each agent after 10 s of idling with all the
#      benchmark apps present (and, as a baseline, the same before 3)
#
#   sudo bench/cluster-figures.sh
#
# Environment: BENCH_TIMEOUT (seconds for every wait, default 120),
# BENCH_LEADER_ROUNDS (default 5), BENCH_TASK_ROUNDS (default 3),
# BENCH_WRK_SECONDS (default 10), BENCH_WRK_CONNECTIONS (default "1 64"),
# BENCH_IDLE_SECONDS (default 10), BENCH_IP_BLOCK (first three octets of the
# nodes' addresses, default 127.77.0), SHOAL_BIN (default
# target/release/shoal, built when missing; the script runs a copy of it),
# BENCH_KEEP=1 (keep the scratch directory with the agents' logs; it is
# also kept when the script fails).
#
# Prints human-readable lines, then one line of JSON with every figure. It
# asserts nothing about the timings. It stops exactly the agents it started
# (by pid), removes their containerd namespaces, their cgroups and its
# scratch directory.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TIMEOUT=${BENCH_TIMEOUT:-120}
LEADER_ROUNDS=${BENCH_LEADER_ROUNDS:-5}
TASK_ROUNDS=${BENCH_TASK_ROUNDS:-3}
WRK_SECONDS=${BENCH_WRK_SECONDS:-10}
WRK_CONNECTIONS=${BENCH_WRK_CONNECTIONS:-1 64}
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-10}
IP_BLOCK=${BENCH_IP_BLOCK:-127.77.0}
SHOAL_SRC=${SHOAL_BIN:-$ROOT/target/release/shoal}
CONTAINERD_SOCKET=/run/containerd/containerd.sock
API_PORT=7950
GOSSIP_PORT=7946
IMAGE=shoal.bench/busybox:latest
LOOP='trap '"'"'exit 0'"'"' TERM; while true; do sleep 1; done'
TASK_APP=movers
NODES=(1 2 3)
declare -a NAME IP NS PID
for i in "${NODES[@]}"; do
  NAME[i]=cf-$i
  IP[i]=$IP_BLOCK.$i
  NS[i]=shoal-cf-bench-$i
  PID[i]=""
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning: %s\033[0m\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
die() { printf '\033[1;31merror: %s\033[0m\n' "$*" >&2; exit 1; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# Compilers and cargo running beside the benchmark (others' builds or tests).
# shellcheck disable=SC2009  # pgrep -x warns about patterns over 15 characters
busy_now() { ps -eo comm= | grep -cxE 'rustc|cargo|cc1|cc1plus|ld|ld\..*|rust-lld|collect2' || true; }
BUSY_MAX=0
note_busy() { # what
  local b
  b=$(busy_now)
  [ "$b" -le "$BUSY_MAX" ] || BUSY_MAX=$b
  [ "$b" -eq 0 ] || warn "$b compiler/cargo processes running during: $1"
}

[ "$(id -u)" -eq 0 ] || die "run as root: the agents drive containerd and runc"
[[ $LEADER_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_LEADER_ROUNDS: not a count: $LEADER_ROUNDS"
[[ $TASK_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_TASK_ROUNDS: not a count: $TASK_ROUNDS"

WORK=$(mktemp -d /tmp/shoal-cluster-bench.XXXXXX)
RES=$WORK/results
mkdir -p "$RES" "$WORK/state"
CONTAINERD_PID=""
T_START=$SECONDS

# ---------------------------------------------------------------- cleanup --

stop_agent() { # index; SIGTERM, then SIGKILL after 10 s
  local i=$1 pid=${PID[$1]}
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      warn "agent ${NAME[i]} (pid $pid) ignored SIGTERM for 10 s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  PID[i]=""
}

unmount_under() { # dir
  local m
  for m in $(findmnt -rn -o TARGET | grep "^$1/" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

cleanup_all() {
  local rc=$? i left
  set +e
  trap - EXIT INT TERM
  [ -n "${WRK_PID:-}" ] && { kill -TERM "$WRK_PID" 2>/dev/null; wait "$WRK_PID" 2>/dev/null; }
  [ -n "${REGISTRY_PID:-}" ] && { kill -TERM "$REGISTRY_PID" 2>/dev/null; wait "$REGISTRY_PID" 2>/dev/null; }
  for i in "${NODES[@]}"; do stop_agent "$i"; done
  for i in "${NODES[@]}"; do
    [ -f "$WORK/state/ns-$i" ] && cleanup_namespace "${NS[i]}" "shoal/${NS[i]}"
    [ -f "$WORK/state/ns-$i" ] && cleanup_node_network "$WORK/node$i" "shcf$i"
  done
  if [ -n "$CONTAINERD_PID" ]; then
    kill -TERM "$CONTAINERD_PID" 2>/dev/null
    wait "$CONTAINERD_PID" 2>/dev/null
  fi
  left=$(ctr namespaces ls -q 2>/dev/null | grep -c '^shoal-cf-bench-' || true)
  [ "$left" -eq 0 ] || warn "$left containerd namespaces shoal-cf-bench-* are left"
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    echo "scratch directory and agent logs kept in $WORK" >&2
  else
    unmount_under "$WORK"
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers --

# Polls a command until it succeeds, at most TIMEOUT seconds.
wait_for() { # description command...
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for $what (agent logs: $WORK/node*.log)"
    sleep 0.1
  done
}

# The shoal client against node i, bounded in time.
sh_at() { # index args...
  local i=$1
  shift
  SHOAL_ADDR=${IP[i]}:$API_PORT timeout 10 "$SHOAL" "$@"
}

api_up() { sh_at "$1" nodes -o json >/dev/null 2>&1; }
containerd_up() { ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1; }
live() { [ -n "${PID[$1]}" ] && kill -0 "${PID[$1]}" 2>/dev/null; }
index_of() { # name
  local i
  for i in "${NODES[@]}"; do [ "${NAME[i]}" = "$1" ] && { echo "$i"; return 0; }; done
  return 1
}

start_agent() { # index [peer-ip]
  local i=$1 peer=${2:-}
  local args=(agent --name "${NAME[i]}" --advertise "${IP[i]}" --data-dir "$WORK/node$i"
    --api-port "$API_PORT" --gossip-port "$GOSSIP_PORT"
    --containerd-socket "$CONTAINERD_SOCKET" --containerd-namespace "${NS[i]}"
    --bridge "shcf$i" --cluster-cidr 10.198.0.0/16)
  [ -z "$peer" ] || args+=(--peer "$peer")
  # A first join needs a join token; a restarted node comes back with its certificate.
  if [ -n "$peer" ] && [ ! -d "$WORK/node$i/pki" ]; then
    args+=(--token "$(sh_at 1 cluster token create --role voter)") || die "no join token"
  fi
  touch "$WORK/state/ns-$i"
  echo "--- $(date -u +%H:%M:%S.%N) start ${args[*]}" >>"$WORK/node$i.log"
  "$SHOAL" "${args[@]}" </dev/null >>"$WORK/node$i.log" 2>&1 &
  PID[i]=$!
  if [ "$i" -eq 1 ] && [ -z "$peer" ]; then
    wait_for "node 1's admin credential" test -s "$WORK/node1/admin.json"
    export SHOAL_CONFIG=$WORK/node1/admin.json
    jq -r .ca_pem "$SHOAL_CONFIG" >"$WORK/ca.pem"
    TOKEN=$(jq -r .token "$SHOAL_CONFIG")
  fi
  wait_for "agent ${NAME[i]}'s API on ${IP[i]}:$API_PORT" api_up "$i"
}

# curl against node i over TLS with the cluster's CA and the admin token.
api_curl() { # index path curl-args...
  local i=$1 path=$2
  shift 2
  curl --cacert "$WORK/ca.pem" --resolve "shoal-node:$API_PORT:${IP[i]}" \
    -H "Authorization: Bearer $TOKEN" "$@" "https://shoal-node:$API_PORT$path"
}

# kill -9 of node i's agent; KILLED_AT is the time of the kill. Reaped at
# once (which takes no time) so that bash prints no "Killed" line later.
kill9_agent() { # index
  local i=$1
  echo "--- $(date -u +%H:%M:%S.%N) kill -9 by the benchmark" >>"$WORK/node$i.log"
  kill -KILL "${PID[i]}"
  KILLED_AT=$EPOCHREALTIME # not $(now): a fork here would report the death
  wait "${PID[i]}" 2>/dev/null || true
  PID[i]=""
}

# Every live node lists the 3 nodes alive, 3 voters and the same one leader;
# prints the leader's index.
cluster_ready() {
  local i view leaders=""
  for i in "${NODES[@]}"; do
    live "$i" || return 1
    view=$(sh_at "$i" nodes -o json 2>/dev/null) || return 1
    jq -e 'length == 3 and ([.[] | select(.status == "alive" and .role == "voter")] | length) == 3
           and ([.[] | select(.leader)] | length) == 1' >/dev/null 2>&1 <<<"$view" || return 1
    leaders+=$(jq -r '.[] | select(.leader) | .name' <<<"$view")$'\n'
  done
  [ "$(sort -u <<<"$leaders" | grep -c .)" -eq 1 ] || return 1
  index_of "$(head -1 <<<"$leaders")" >"$WORK/state/leader"
}
wait_ready() { # prints the leader's index
  wait_for "3 alive voters and one leader agreed on by every node" cluster_ready
  cat "$WORK/state/leader"
}

# min median max of numbers, one a line on stdin
stats() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "null null null"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.3f %.3f %.3f\n", v[1], m, v[NR] }'
}

post_app() { # index json; prints the HTTP status (000 when no answer)
  api_curl "$1" /v1/apps -s -o "$WORK/post-answer" -w '%{http_code}' --max-time 3 -X POST \
    -H 'Content-Type: application/json' --data-binary "$2" || true
}
empty_app() { printf '{"name":"%s","services":[{"name":"a","image":"%s","replicas":0}]}' "$1" "$IMAGE"; }

# ------------------------------------------------------------------ setup --

LOAD_START=$(loadavg)
say "$(nproc) cpus, load average $LOAD_START at start; every wait is bounded by ${TIMEOUT}s"
note_busy "start"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
{ command -v busybox >/dev/null || [ -x /bin/busybox ]; } || need+=(busybox-static)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 ||
    { cat "$WORK/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
fi

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
"$SHOAL" agent --help | grep -q -- '--peer' || die "$SHOAL_SRC has no 'agent --peer': rebuild it (cargo build --release -p shoal)"

if ! ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1; then
  say "starting containerd (log: $WORK/containerd.log)"
  containerd >"$WORK/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  wait_for containerd containerd_up
fi

for i in "${NODES[@]}"; do
  if [ -n "$(ss -Hltn "src ${IP[i]}:$API_PORT" 2>/dev/null)" ] || [ -n "$(ss -Hlun "src ${IP[i]}:$GOSSIP_PORT" 2>/dev/null)" ]; then
    die "${IP[i]}:$API_PORT or :$GOSSIP_PORT is taken; set BENCH_IP_BLOCK to other addresses"
  fi
  if ctr namespaces ls -q | grep -qx "${NS[i]}"; then
    warn "containerd namespace ${NS[i]} is left from an earlier run; cleaning it"
    cleanup_namespace "${NS[i]}" "shoal/${NS[i]}"
  fi
done

say "building the busybox rootfs"
bash "$ROOT/scripts/busybox-rootfs.sh" "$WORK/rootfs" >/dev/null

say "starting 3 agents on ${IP[1]}-3 (logs: $WORK/node{1,2,3}.log)"
for i in "${NODES[@]}"; do
  if [ "$i" -eq 1 ]; then start_agent "$i"; else start_agent "$i" "${IP[1]}"; fi
done
t0=$(now)
LEADER=$(wait_ready)
say "3 voters, leader ${NAME[LEADER]} ($(since "$t0")s after the last agent answered)"
for i in "${NODES[@]}"; do
  sh_at "$i" image import --rootfs "$WORK/rootfs" --name "$IMAGE" >/dev/null
done

# ------------------------------------------------------ 1. leader failover --

say "---- 1. leader failover: $LEADER_ROUNDS rounds ----"
note_busy "leader failover"
: >"$RES/leader"
for r in $(seq 1 "$LEADER_ROUNDS"); do
  LEADER=$(wait_ready)
  other=$(( LEADER % 3 + 1 ))
  spec=$(empty_app "failover-$r")
  kill9_agent "$LEADER"
  t0=$KILLED_AT
  attempts=0
  deadline=$((SECONDS + TIMEOUT))
  until [[ $(post_app "$other" "$spec") == 2?? ]]; do
    attempts=$((attempts + 1))
    [ "$SECONDS" -lt "$deadline" ] || die "no write accepted by ${NAME[other]} within ${TIMEOUT}s of killing the leader ${NAME[LEADER]}"
    sleep 0.02
  done
  secs=$(since "$t0")
  echo "$secs" >>"$RES/leader"
  new=$(sh_at "$other" nodes -o json | jq -r '.[] | select(.leader) | .name' || true)
  say "round $r: killed leader ${NAME[LEADER]}; write via ${NAME[other]} accepted after ${secs}s ($attempts failed tries); new leader ${new:-?}"
  start_agent "$LEADER"
  t0=$(now)
  wait_ready >/dev/null
  say "round $r: ${NAME[LEADER]} back, 3 voters again after $(since "$t0")s"
done
read -r L_MIN L_MED L_MAX < <(stats <"$RES/leader")
note_busy "leader failover"

# -------------------------------------------------------- 2. task failover --

say "---- 2. task failover: $TASK_ROUNDS rounds ----"
note_busy "task failover"
cat >"$WORK/movers.yaml" <<EOF
name: $TASK_APP
services:
  - name: sleeper
    image: $IMAGE
    command: ["/bin/sh", "-c", "$LOOP"]
    replicas: 3
EOF
LEADER=$(wait_ready)
sh_at "$LEADER" apply -f "$WORK/movers.yaml" --timeout "${TIMEOUT}s" >"$WORK/apply.log" 2>&1 ||
  { cat "$WORK/apply.log" >&2; die "shoal apply of $TASK_APP failed"; }

# The replicas of $TASK_APP running (desired and state), as node i sees
# them: one node name a line.
running_on() { # index
  sh_at "$1" ps "$TASK_APP" -o json 2>/dev/null |
    jq -r '.[] | select(.desired == "running" and .state == "running") | .node'
}
three_running_without() { # watcher-index victim-name
  local nodes
  nodes=$(running_on "$1") || return 1
  [ "$(grep -cvx -- "$2" <<<"$nodes" || true)" -eq 3 ] && ! grep -qx -- "$2" <<<"$nodes"
}
no_running_ctr_task() { ! ctr -n "$1" tasks ls 2>/dev/null | grep -q RUNNING; }
: >"$RES/task"
for r in $(seq 1 "$TASK_ROUNDS"); do
  LEADER=$(wait_ready)
  wait_for "3 replicas of $TASK_APP running" three_running_without "$LEADER" "-"
  victim=""
  for n in $(running_on "$LEADER" | sort | uniq -c | sort -rn | awk '{ print $2 }'); do
    j=$(index_of "$n") || continue
    [ "$j" -ne "$LEADER" ] && { victim=$j; break; }
  done
  [ -n "$victim" ] || die "round $r: no node other than the leader ${NAME[LEADER]} runs a replica of $TASK_APP"
  had=$(running_on "$LEADER" | grep -cx -- "${NAME[victim]}" || true)
  kill9_agent "$victim"
  t0=$KILLED_AT
  wait_for "3 replicas of $TASK_APP running on live nodes after ${NAME[victim]} died" \
    three_running_without "$LEADER" "${NAME[victim]}"
  secs=$(since "$t0")
  echo "$secs" >>"$RES/task"
  placement=$(running_on "$LEADER" | sort | uniq -c | awk '{ printf "%s%s:%s", sep, $2, $1; sep = " " }')
  say "round $r: killed ${NAME[victim]} (follower, $had replica(s)); 3 running on live nodes after ${secs}s ($placement; asked ${NAME[LEADER]})"
  start_agent "$victim"
  t0=$(now)
  wait_for "${NAME[victim]} to stop its old containers" no_running_ctr_task "${NS[victim]}"
  wait_ready >/dev/null
  say "round $r: ${NAME[victim]} back, its old containers stopped and 3 voters after $(since "$t0")s"
done
read -r T_MIN T_MED T_MAX < <(stats <"$RES/task")
note_busy "task failover"

# ------------------------------------- 2b. task failover, registry gone --

say "---- 2b. task failover with the registry gone: $TASK_ROUNDS rounds ----"
note_busy "task failover, registry gone"
REG_PORT=""
for port in $(shuf -i 20000-60000 -n 20); do
  [ -z "$(ss -Hltn "src 127.0.0.1:$port" 2>/dev/null)" ] && { REG_PORT=$port; break; }
done
[ -n "$REG_PORT" ] || die "no free loopback port for the registry"
REG=127.0.0.1:$REG_PORT
cat >"$WORK/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $REG
YAML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
wait_for "docker-registry on $REG" curl -fsS "http://$REG/v2/" -o /dev/null
"$SHOAL" image pack --rootfs "$WORK/rootfs" --name bench/standby:v1 -o "$WORK/standby.tar" >/dev/null
skopeo copy --quiet --insecure-policy --dest-tls-verify=false \
  "oci-archive:$WORK/standby.tar:v1" "docker://$REG/bench/standby:v1" ||
  die "skopeo copy of the image to $REG failed"
cat >"$WORK/standby.yaml" <<YAML
name: standby
services:
  - name: web
    image: $REG/bench/standby:v1
    command: ["/bin/sh", "-c", "$LOOP"]
    replicas: 1
YAML
LEADER=$(wait_ready)
sh_at "$LEADER" apply -f "$WORK/standby.yaml" --timeout "${TIMEOUT}s" >"$WORK/apply-standby.log" 2>&1 ||
  { cat "$WORK/apply-standby.log" >&2; die "shoal apply of standby failed"; }
standby_protected() { # index
  sh_at "$1" app inspect standby -o json 2>/dev/null | jq -e '.services[0].prepull.protected == true' >/dev/null
}
standby_runs_on() { # index; the live node running the replica
  sh_at "$1" ps standby -o json 2>/dev/null |
    jq -r '.[] | select(.desired == "running" and .state == "running") | .node'
}
runs_without() { # watcher-index victim-name
  local nodes
  nodes=$(standby_runs_on "$1") || return 1
  [ -n "$nodes" ] && ! grep -qx -- "$2" <<<"$nodes"
}
: >"$RES/standby"
for r in $(seq 1 "$TASK_ROUNDS"); do
  LEADER=$(wait_ready)
  wait_for "the standby to hold the image (the service protected)" standby_protected "$LEADER"
  if [ "$r" -eq 1 ]; then
    kill -TERM "$REGISTRY_PID" 2>/dev/null
    wait "$REGISTRY_PID" 2>/dev/null || true
    REGISTRY_PID=""
    ! curl -fsS "http://$REG/v2/" -o /dev/null 2>/dev/null || die "the registry still answers"
    say "registry stopped"
  fi
  runner=$(standby_runs_on "$LEADER" | head -1)
  victim=$(index_of "$runner") || die "round $r: no node runs the replica of standby"
  watcher=$LEADER
  [ "$victim" -ne "$LEADER" ] || watcher=$(( LEADER % 3 + 1 ))
  kill9_agent "$victim"
  t0=$KILLED_AT
  wait_for "the replica of standby running on a live node after ${NAME[victim]} died" \
    runs_without "$watcher" "${NAME[victim]}"
  secs=$(since "$t0")
  echo "$secs" >>"$RES/standby"
  what=follower
  [ "$victim" -ne "$LEADER" ] || what=leader
  say "round $r: killed ${NAME[victim]} ($what, ran the replica); running on $(standby_runs_on "$watcher" | head -1) after ${secs}s, registry gone"
  start_agent "$victim"
  wait_ready >/dev/null
done
read -r S_MIN S_MED S_MAX < <(stats <"$RES/standby")
note_busy "task failover, registry gone"

# VmRSS of every agent after IDLE_SECONDS of idling, into $RES/rss.LABEL
# ("name kB" lines) and the count of apps into $RES/apps.LABEL.
rss_snapshot() { # label
  local i kb apps
  apps=$(api_curl 1 /v1/apps -s --max-time 10 | jq length) || die "GET /v1/apps failed"
  note_busy "idle ($1)"
  sleep "$IDLE_SECONDS"
  : >"$RES/rss.$1"
  for i in "${NODES[@]}"; do
    live "$i" || die "agent ${NAME[i]} is not running"
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/${PID[i]}/status")
    echo "${NAME[i]} $kb" >>"$RES/rss.$1"
  done
  note_busy "idle ($1)"
  echo "$apps" >"$RES/apps.$1"
}

say "idle memory before the write benchmark: ${IDLE_SECONDS}s idle"
rss_snapshot before_writes

# ------------------------------------------------- 3. write throughput ----

cat >"$WORK/post.lua" <<'EOF'
-- POST /v1/apps of a new app per request: name w<run>-<thread>-<counter>.
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end
local prefix = "w"
local token = ""
local counter = 0
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
    "RESULT requests=%d duration_us=%d e_connect=%d e_read=%d e_write=%d e_status=%d e_timeout=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
EOF

say "---- 3. writes through the API: wrk, ${WRK_SECONDS}s per run ----"
LEADER=$(wait_ready)
FOLLOWER=$(( LEADER % 3 + 1 ))
WRK_ROWS=()
run=0
for target in leader follower; do
  if [ "$target" = leader ]; then i=$LEADER; else i=$FOLLOWER; fi
  for c in $WRK_CONNECTIONS; do
    run=$((run + 1))
    t=$(( c < 2 ? 1 : 2 ))
    note_busy "wrk $target $c"
    say "wrk: $c connection(s), $t thread(s), all to the $target ${NAME[i]}"
    wrk -t"$t" -c"$c" -d"${WRK_SECONDS}s" --timeout 10s --latency -s "$WORK/post.lua" \
      "https://${IP[i]}:$API_PORT/v1/apps" -- "w$run" "$TOKEN" >"$WORK/wrk-$run.log" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { cat "$WORK/wrk-$run.log" >&2; die "wrk failed"; }
    WRK_PID=""
    note_busy "wrk $target $c"
    line=$(grep '^RESULT ' "$WORK/wrk-$run.log") || { cat "$WORK/wrk-$run.log" >&2; die "no RESULT line from wrk"; }
    [[ $line =~ ^RESULT(\ [a-z0-9_]+=[0-9]+)+$ ]] || die "odd RESULT line from wrk: $line"
    requests=0 duration_us=1 e_connect=0 e_read=0 e_write=0 e_status=0 e_timeout=0
    p50_us=0 p90_us=0 p99_us=0 max_us=0
    eval "${line#RESULT }"
    errors=$((e_connect + e_read + e_write + e_status + e_timeout))
    ok=$((requests - errors))
    wps=$(awk -v n="$ok" -v d="$duration_us" 'BEGIN { printf "%.1f", n / (d / 1e6) }')
    p50=$(awk -v u="$p50_us" 'BEGIN { printf "%.2f", u / 1000 }')
    p99=$(awk -v u="$p99_us" 'BEGIN { printf "%.2f", u / 1000 }')
    say "wrk: $ok writes acknowledged, $errors errors: ${wps}/s, p50 ${p50} ms, p99 ${p99} ms"
    WRK_ROWS+=("$target $c ${NAME[i]} $wps $p50 $p99 $ok $errors $(awk -v u="$p90_us" 'BEGIN { printf "%.2f", u / 1000 }') $(awk -v u="$max_us" 'BEGIN { printf "%.2f", u / 1000 }')")
  done
done

# ------------------------------------------------------- 4. idle memory ----

say "---- 4. idle memory: ${IDLE_SECONDS}s idle, every benchmark app present ----"
rss_snapshot after_writes
LOAD_END=$(loadavg)
# ANSI colour codes, if any, go before counting the agents' log levels.
agent_logs() { sed 's/\x1b\[[0-9;]*m//g' "$WORK"/node?.log; }
LOG_ERRORS=$(agent_logs | grep -c ' ERROR ' || true)
LOG_ERRORS_UNREACHABLE=$(agent_logs | grep ' ERROR ' | grep -c 'Unreachable node' || true)
LOG_WARNINGS=$(agent_logs | grep -c ' WARN ' || true)
if [ "$LOG_ERRORS" -gt "$LOG_ERRORS_UNREACHABLE" ]; then
  warn "ERROR lines in the agents' logs other than an unreachable peer (at most 5):"
  agent_logs | grep ' ERROR ' | grep -v 'Unreachable node' | head -5 | cut -c1-400 >&2
fi
[ "$LOG_ERRORS" -eq 0 ] || warn "$LOG_ERRORS ERROR lines in the agents' logs (BENCH_KEEP=1 keeps them)"

# ----------------------------------------------------------------- report --

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
echo "# shoal cluster figures: 3 agents on ${IP[1]}-3, one machine, one run"
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpus, load average $LOAD_START at start, $LOAD_END at end; $SHOAL_VERSION"
[ "$BUSY_MAX" -eq 0 ] || echo "# up to $BUSY_MAX compiler/cargo processes ran beside the measurements: figures are noisier"
echo
echo "1. leader failover (kill -9 of the leader's agent -> a write to another node acknowledged), $LEADER_ROUNDS rounds:"
echo "   min ${L_MIN}s  median ${L_MED}s  max ${L_MAX}s   (all: $(paste -sd' ' "$RES/leader"))"
echo "   target: within 2 s"
echo "2. task failover (kill -9 of a follower running a replica -> 3 of 3 replicas running on live nodes), $TASK_ROUNDS rounds:"
echo "   min ${T_MIN}s  median ${T_MED}s  max ${T_MAX}s   (all: $(paste -sd' ' "$RES/task"))"
echo "   target: within 5 s; anchors: Docker Swarm declares a node down after ~15 s, Nomad after ~20 s, Kubernetes evicts after ~5 min 50 s"
echo "2b. the same with the registry stopped (one replica of a registry image, its standby holding it ahead), $TASK_ROUNDS rounds:"
echo "   min ${S_MIN}s  median ${S_MED}s  max ${S_MAX}s   (all: $(paste -sd' ' "$RES/standby"))"
echo "   target: within 5 s, as with the registry up"
echo "3. writes through the API (POST /v1/apps of a new replicas:0 app each; no containers), wrk ${WRK_SECONDS}s per row:"
printf '   %-9s %5s  %-6s %10s %9s %9s %9s %9s %7s\n' target conns node writes/s p50_ms p90_ms p99_ms max_ms errors
for row in "${WRK_ROWS[@]}"; do
  read -r tg c n wps p50 p99 ok errs p90 mx <<<"$row"
  printf '   %-9s %5s  %-6s %10s %9s %9s %9s %9s %7s\n' "$tg" "$c" "$n" "$wps" "$p50" "$p90" "$p99" "$mx" "$errs"
done
echo "   anchor: etcd does ~580 writes/s with one client and ~44,000/s with many"
rss_kb_max() { awk '$2 > m { m = $2 } END { print m + 0 }' "$RES/rss.$1"; }
echo "4. idle RSS (VmRSS) after ${IDLE_SECONDS}s idle:"
for label in after_writes before_writes; do
  line=""
  while read -r n kb; do line+="$n $(mib "$kb") MiB, "; done <"$RES/rss.$label"
  echo "   ${label/_/ } ($(cat "$RES/apps.$label") apps): ${line}max $(mib "$(rss_kb_max "$label")") MiB"
done
echo "   target: under 40 MB (figure 4 is the max after the writes, with every benchmark app present)"
echo "agents' logs: $LOG_ERRORS ERROR lines ($LOG_ERRORS_UNREACHABLE of them about a killed peer being unreachable), $LOG_WARNINGS WARN lines"

json_rows=$(for row in "${WRK_ROWS[@]}"; do
  read -r tg c n wps p50 p99 ok errs p90 mx <<<"$row"
  jq -cn --arg t "$tg" --arg n "$n" --argjson c "$c" --argjson w "$wps" --argjson p50 "$p50" --argjson p90 "$p90" \
    --argjson p99 "$p99" --argjson mx "$mx" --argjson ok "$ok" --argjson e "$errs" \
    '{target: $t, node: $n, connections: $c, writes_per_s: $w, p50_ms: $p50, p90_ms: $p90, p99_ms: $p99, max_ms: $mx, acknowledged: $ok, errors: $e}'
done | jq -cs .)
rss_json() { # label
  jq -cn --argjson apps "$(cat "$RES/apps.$1")" --argjson max "$(mib "$(rss_kb_max "$1")")" \
    --argjson per "$(while read -r n kb; do jq -cn --arg n "$n" --argjson kb "$kb" '{($n): ($kb / 1024 * 10 | round / 10)}'; done <"$RES/rss.$1" | jq -cs add)" \
    '{per_node: $per, max: $max, apps: $apps}'
}
jq -cn \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --argjson cpus "$(nproc)" \
  --arg load_start "$LOAD_START" --arg load_end "$LOAD_END" --argjson busy "$BUSY_MAX" \
  --arg shoal "$SHOAL_VERSION" --argjson runtime "$((SECONDS - T_START))" \
  --argjson leader "$(jq -cs . <"$RES/leader")" --argjson task "$(jq -cs . <"$RES/task")" \
  --argjson lmin "$L_MIN" --argjson lmed "$L_MED" --argjson lmax "$L_MAX" \
  --argjson tmin "$T_MIN" --argjson tmed "$T_MED" --argjson tmax "$T_MAX" \
  --argjson standby "$(jq -cs . <"$RES/standby")" \
  --argjson smin "$S_MIN" --argjson smed "$S_MED" --argjson smax "$S_MAX" \
  --argjson writes "$json_rows" --argjson idle "$IDLE_SECONDS" \
  --argjson rss_after "$(rss_json after_writes)" --argjson rss_before "$(rss_json before_writes)" \
  --argjson log_errors "$LOG_ERRORS" --argjson log_unreachable "$LOG_ERRORS_UNREACHABLE" \
  --argjson log_warnings "$LOG_WARNINGS" \
  '{date: $date, cpus: $cpus, load_start: $load_start, load_end: $load_end, others_busy_max: $busy,
    shoal: $shoal, runtime_s: $runtime,
    leader_failover_s: {min: $lmin, median: $lmed, max: $lmax, all: $leader},
    task_failover_s: {min: $tmin, median: $tmed, max: $tmax, all: $task},
    task_failover_registry_gone_s: {min: $smin, median: $smed, max: $smax, all: $standby},
    writes: $writes,
    idle_rss_mib: ($rss_after + {idle_s: $idle, before_writes: $rss_before}),
    agent_log_lines: {error: $log_errors, error_peer_unreachable: $log_unreachable, warn: $log_warnings},
    anchors: {swarm_node_down_s: 15, nomad_node_down_s: 20, kubernetes_eviction_s: 350,
              etcd_writes_per_s_one_client: 580, etcd_writes_per_s_many_clients: 44000},
    targets: {task_failover_s: 5, leader_failover_s: 2, idle_rss_mb: 40}}'
