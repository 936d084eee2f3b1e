#!/usr/bin/env bash
# Five nodes starting one registry image at once, on this machine, beside
# five `ctr images pull` started at once ("each node pulling alone"):
#
#   shoal  a 5-node cluster (five `shoal agent` processes on loopback
#          addresses 127.78.0.1-5, each with its own data dir and containerd
#          namespace) applies an app with one `kind: global` service of the
#          image: seconds from `shoal apply` until all 5 tasks run, and the
#          bytes the registry served for the image's blobs (shoal fetches
#          each blob from the registry once per cluster: its home node
#          fetches it and serves the other nodes, so about 1x the image)
#   ctr    5 x `ctr images pull --plain-http` started at once, each into a
#          containerd namespace of its own: seconds until all 5 finished, and
#          the bytes the registry served (about 5x the image)
#
# The image (made here with python3): busybox (scripts/busybox-rootfs.sh) as
# its first layer, then 4 layers of BENCH_LAYER_MB MB of random bytes plus
# text each, gzip; about 42 MB compressed with the default 10. It is pushed
# with skopeo to a docker-registry of the script's own on a loopback port;
# the bytes served are summed from the registry's log (one "response
# completed" line per request, with http.response.written=N).
#
#   sudo bench/pull-cluster.sh
#
# Environment: BENCH_TIMEOUT (seconds for every wait, default 180),
# BENCH_LAYER_MB (random MB per layer, default 10), BENCH_IP_BLOCK (first
# three octets of the nodes' addresses, default 127.78.0), SHOAL_BIN (default
# target/release/shoal, built when missing; the script runs a copy of it),
# BENCH_KEEP=1 (keep the scratch directory with the logs; it is also kept
# when the script fails).
#
# Needs root, containerd, ctr, docker-registry, skopeo, python3, jq, curl and
# busybox (busybox-static). Prints human-readable lines, then one line of
# JSON with every figure. It asserts nothing about the timings. It stops
# exactly what it started (by pid), removes its containerd namespaces, their
# cgroups and its scratch directory.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TIMEOUT=${BENCH_TIMEOUT:-180}
LAYER_MB=${BENCH_LAYER_MB:-10}
IP_BLOCK=${BENCH_IP_BLOCK:-127.78.0}
SHOAL_SRC=${SHOAL_BIN:-$ROOT/target/release/shoal}
CONTAINERD_SOCKET=/run/containerd/containerd.sock
API_PORT=7950
GOSSIP_PORT=7946
RANDOM_LAYERS=4
APP=pullbench
REPO=bench/big
TAG=v1
LOOP='trap '"'"'exit 0'"'"' TERM; while true; do sleep 1; done'
NODES=(1 2 3 4 5)
N=${#NODES[@]}
declare -a NAME IP NS PID CTR_NS CTR_PID
for i in "${NODES[@]}"; do
  NAME[i]=pc-$i
  IP[i]=$IP_BLOCK.$i
  NS[i]=shoal-bench-pc-$i
  PID[i]=""
  CTR_NS[i]=shoal-bench-pc-ctr-$i
  CTR_PID[i]=""
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning: %s\033[0m\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
die() { printf '\033[1;31merror: %s\033[0m\n' "$*" >&2; exit 1; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "null" }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
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

[ "$(id -u)" -eq 0 ] || die "run as root: the agents and ctr drive containerd and runc"
[[ $LAYER_MB =~ ^[1-9][0-9]*$ ]] || die "BENCH_LAYER_MB: not a count: $LAYER_MB"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "BENCH_TIMEOUT: not a count of seconds: $TIMEOUT"
missing=()
for tool in containerd ctr docker-registry skopeo python3 jq curl ss timeout; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
{ command -v busybox >/dev/null || [ -x /bin/busybox ]; } || missing+=(busybox)
[ ${#missing[@]} -eq 0 ] ||
  die "missing: ${missing[*]} (Debian packages: containerd, docker-registry, skopeo, python3, jq, curl, iproute2, coreutils, busybox-static)"

WORK=$(mktemp -d /tmp/shoal-bench-pull-cluster.XXXXXX)
mkdir -p "$WORK/state"
CONTAINERD_PID=""
REGISTRY_PID=""
T_START=$SECONDS

# ---------------------------------------------------------------- cleanup --

stop_pid() { # pid what; SIGTERM, then SIGKILL after 10 s
  local pid=$1
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      warn "$2 (pid $pid) ignored SIGTERM for 10 s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

stop_agent() { # index
  stop_pid "${PID[$1]}" "agent ${NAME[$1]}"
  PID[$1]=""
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
  for i in "${NODES[@]}"; do stop_pid "${CTR_PID[i]}" "ctr pull ${CTR_NS[i]}"; done
  for i in "${NODES[@]}"; do stop_agent "$i"; done
  for i in "${NODES[@]}"; do
    [ -f "$WORK/state/ns-$i" ] && cleanup_namespace "${NS[i]}" "shoal/${NS[i]}"
    [ -f "$WORK/state/ns-$i" ] && cleanup_node_network "$WORK/node$i" "shpc$i"
    [ -f "$WORK/state/ctr-ns-$i" ] && cleanup_namespace "${CTR_NS[i]}" "${CTR_NS[i]}"
  done
  stop_pid "$REGISTRY_PID" docker-registry
  stop_pid "$CONTAINERD_PID" containerd
  left=$(ctr namespaces ls -q 2>/dev/null | grep -c '^shoal-bench-pc-' || true)
  [ "$left" -eq 0 ] || warn "$left containerd namespaces shoal-bench-pc-* are left"
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
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

# ---------------------------------------------------------------- helpers --

# Polls a command until it succeeds, at most TIMEOUT seconds.
wait_for() { # description command...
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for $what (logs: $WORK/*.log)"
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
registry_up() { curl -fsS "http://$REG/v2/" -o /dev/null 2>/dev/null; }
live() { [ -n "${PID[$1]}" ] && kill -0 "${PID[$1]}" 2>/dev/null; }

free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] && { echo "$port"; return 0; }
  done
  die "no free port found"
}

start_agent() { # index [peer-ip]
  local i=$1 peer=${2:-} token
  local args=(agent --name "${NAME[i]}" --advertise "${IP[i]}" --data-dir "$WORK/node$i"
    --api-port "$API_PORT" --gossip-port "$GOSSIP_PORT"
    --containerd-socket "$CONTAINERD_SOCKET" --containerd-namespace "${NS[i]}"
    --bridge "shpc$i" --cluster-cidr 10.197.0.0/16)
  if [ -n "$peer" ]; then
    token=$(sh_at 1 cluster token create --role voter) || die "no join token for ${NAME[i]}"
    args+=(--peer "$peer" --token "$token")
  fi
  touch "$WORK/state/ns-$i"
  echo "--- $(date -u +%H:%M:%S.%N) start ${args[*]}" >>"$WORK/node$i.log"
  "$SHOAL" "${args[@]}" </dev/null >>"$WORK/node$i.log" 2>&1 &
  PID[i]=$!
  if [ "$i" -eq 1 ] && [ -z "$peer" ]; then
    wait_for "node 1's admin credential" test -s "$WORK/node1/admin.json"
    export SHOAL_CONFIG=$WORK/node1/admin.json
  fi
  wait_for "agent ${NAME[i]}'s API on ${IP[i]}:$API_PORT" api_up "$i"
}

# Every node lists the N nodes alive, N voters and the same one leader: the
# nodes agree on who is alive, and so on every blob's home node.
cluster_ready() {
  local i view leaders=""
  for i in "${NODES[@]}"; do
    live "$i" || return 1
    view=$(sh_at "$i" nodes -o json 2>/dev/null) || return 1
    jq -e --argjson n "$N" 'length == $n and ([.[] | select(.status == "alive" and .role == "voter")] | length) == $n
           and ([.[] | select(.leader)] | length) == 1' >/dev/null 2>&1 <<<"$view" || return 1
    leaders+=$(jq -r '.[] | select(.leader) | .name' <<<"$view")$'\n'
  done
  [ "$(sort -u <<<"$leaders" | grep -c .)" -eq 1 ]
}

# Blob GETs of the image at the registry in its log from line $1 on:
# prints "COUNT BYTES". docker-registry logs one line per request,
#   ... msg="response completed" ... http.request.method=GET
#   http.request.uri="/v2/bench/big/blobs/sha256:…" ... http.response.written=N
# (access-log lines in Apache's format, on stdout, match none of these).
blob_gets_from() { # first-line
  tail -n +"$1" "$WORK/registry.log" | awk -v path="/v2/$REPO/blobs/" '
    /msg="response completed"/ && /http\.request\.method=GET/ && index($0, "http.request.uri=" path) + index($0, "http.request.uri=\"" path) {
      if (match($0, /http\.response\.written=[0-9]+/)) {
        split(substr($0, RSTART, RLENGTH), kv, "=")
        n++
        b += kv[2]
      }
    }
    END { printf "%d %.0f\n", n, b }'
}
log_lines() { wc -l <"$WORK/registry.log"; }
# The registry writes a request's line once the response is done: let the
# last lines land before they are counted.
log_settled() {
  local a b
  a=$(log_lines)
  sleep 1
  b=$(log_lines)
  [ "$a" -eq "$b" ]
}

# containerd's content store on disk (shared by every namespace).
CONTAINERD_ROOT=$(containerd config dump 2>/dev/null | awk -F'"' '/^root *=/ { print $2; exit }' || true)
CONTENT_DIR=${CONTAINERD_ROOT:-/var/lib/containerd}/io.containerd.content.v1.content/blobs/sha256
# How many of the image's blobs are still in containerd's content store.
blobs_on_disk() {
  local d n=0
  for d in $IMAGE_DIGESTS; do
    [ ! -e "$CONTENT_DIR/${d#sha256:}" ] || n=$((n + 1))
  done
  echo "$n"
}
no_blobs_on_disk() { [ "$(blobs_on_disk)" -eq 0 ]; }

# ------------------------------------------------------------------ setup --

LOAD_START=$(loadavg)
say "$(nproc) cpus, load average $LOAD_START at start; every wait is bounded by ${TIMEOUT}s"
note_busy "start"

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
"$SHOAL" registry add --help >/dev/null 2>&1 || die "$SHOAL_SRC has no 'registry add': rebuild it (cargo build --release -p shoal)"

if ! containerd_up; then
  say "starting containerd (log: $WORK/containerd.log)"
  containerd >"$WORK/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  wait_for containerd containerd_up
fi
CONTAINERD_VERSION=$(ctr version 2>/dev/null | awk '/^Server:/ { s = 1 } s && /Version:/ { print $2; exit }' || true)
[ -d "$CONTENT_DIR" ] || warn "no $CONTENT_DIR: cannot check that the ctr run's blobs are gone before the shoal run"

for i in "${NODES[@]}"; do
  if [ -n "$(ss -Hltn "src ${IP[i]}:$API_PORT" 2>/dev/null)" ] || [ -n "$(ss -Hlun "src ${IP[i]}:$GOSSIP_PORT" 2>/dev/null)" ]; then
    die "${IP[i]}:$API_PORT or :$GOSSIP_PORT is taken; set BENCH_IP_BLOCK to other addresses"
  fi
  for ns in "${NS[i]}" "${CTR_NS[i]}"; do
    if ctr namespaces ls -q | grep -qx "$ns"; then
      warn "containerd namespace $ns is left from an earlier run; cleaning it"
      if [ "$ns" = "${NS[i]}" ]; then cleanup_namespace "$ns" "shoal/$ns"; else cleanup_namespace "$ns" "$ns"; fi
    fi
  done
done

# ---------------------------------------------------------------- image --

say "building the busybox rootfs"
bash "$ROOT/scripts/busybox-rootfs.sh" "$WORK/rootfs" >/dev/null
# A file of this run's own, so that no blob of the image (the busybox layer
# included) is in containerd's content store from anything else.
od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$WORK/rootfs/etc/shoal-bench-id"

say "making the image: busybox, then $RANDOM_LAYERS layers of $LAYER_MB MB random + text each, gzip"
python3 - "$WORK/layout" "$WORK/rootfs" "$LAYER_MB" "$RANDOM_LAYERS" "$TAG" >"$WORK/image.txt" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
out, rootfs, mb, count, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def put(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)
def owned_by_root(info):
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
tars = []
# Layer 0: the busybox rootfs (symlinks kept as symlinks), paths relative
# to the root ("bin/busybox"), as image layers have them.
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for name in sorted(os.listdir(rootfs)):
        tar.add(os.path.join(rootfs, name), arcname=name, recursive=True, filter=owned_by_root)
tars.append(raw.getvalue())
# Layers 1..count: random bytes (do not compress) and text (compresses well).
for i in range(1, count + 1):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("random.bin", os.urandom(mb << 20)),
                           ("text.txt", (f"layer {i} line of text that compresses well\n" * (mb << 14)).encode())):
            info = tarfile.TarInfo(f"bench/layer{i}/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tars.append(raw.getvalue())
diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
config = json.dumps({"architecture": arch, "os": "linux",
                     "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cdigest, csize = put(config)
layers = []
for t in tars:
    d, s = put(gzip.compress(t, compresslevel=6, mtime=0))
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
                       "layers": layers}).encode()
md, ms = put(manifest)
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
print("manifest", md, ms)
print("config", cdigest, csize)
for l in layers:
    print("layer", l["digest"], l["size"])
PY

# ------------------------------------------------------------- registry --

PORT=$(free_port)
REG=127.0.0.1:$PORT
REF=$REG/$REPO:$TAG
# Level info: the "response completed" lines (one per request) are info.
cat >"$WORK/registry.yml" <<YAML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $REG
YAML
say "starting docker-registry on $REG (log: $WORK/registry.log)"
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
wait_for docker-registry registry_up
skopeo copy --quiet --insecure-policy --dest-tls-verify=false "oci:$WORK/layout:$TAG" "docker://$REF" ||
  die "skopeo copy of the image to $REF failed"

# The image as the registry holds it: the blobs a pull GETs (config, layers).
curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://$REG/v2/$REPO/manifests/$TAG" -o "$WORK/manifest.json" || die "GET of the manifest of $REF failed"
IMAGE_DIGESTS=$(jq -r '.config.digest, .layers[].digest' "$WORK/manifest.json")
IMAGE_LAYERS=$(jq '.layers | length' "$WORK/manifest.json")
LAYERS_BYTES=$(jq '[.layers[].size] | add' "$WORK/manifest.json")
IMAGE_BYTES=$(jq '[.config.size, .layers[].size] | add' "$WORK/manifest.json")
[ "$(awk '$1 == "layer"' "$WORK/image.txt" | wc -l)" -eq "$IMAGE_LAYERS" ] ||
  die "the registry's manifest of $REF has $IMAGE_LAYERS layers, not the ones made here"
say "image $REF: $IMAGE_LAYERS layers, $(mib "$LAYERS_BYTES") MiB compressed ($IMAGE_BYTES bytes of blobs with the config)"
[ "$(blobs_on_disk)" -eq 0 ] || die "$(blobs_on_disk) blobs of this run's image already in $CONTENT_DIR before any pull"

# ------------------------------------------------- 1. ctr, each alone --
#
# The ctr pulls run first, then the shoal run, and only containerd's
# content store is shared between them: after the ctr pulls their
# namespaces are removed and the script waits until containerd's garbage
# collection has removed their blobs from the store.
#
# containerd 1.6's content_sharing_policy "shared" (the default) lets a
# namespace take a blob that another namespace already committed without
# fetching it (its writer answers "already exists"). That is why the five
# ctr pulls start at the same moment: a pull that started later would skip
# the blobs the others had finished, and the registry would serve less than
# 5x. A pull that reaches a blob only after another namespace committed it
# skips it too, so the ctr figure may come out a little under 5x; it is what
# the registry logged. The shoal nodes share this one
# containerd too, so they must start at once as well: the apply does that.

say "---- 1. ctr: $N x 'ctr images pull --plain-http' at once, each into its own namespace ----"
note_busy "ctr pulls"
CTR_LINE=$(( $(log_lines) + 1 ))
t0=$(now)
for i in "${NODES[@]}"; do
  touch "$WORK/state/ctr-ns-$i"
  timeout "$TIMEOUT" ctr -n "${CTR_NS[i]}" images pull --plain-http "$REF" >"$WORK/ctr-$i.log" 2>&1 &
  CTR_PID[i]=$!
done
CTR_FAILED=""
for i in "${NODES[@]}"; do
  wait "${CTR_PID[i]}" || CTR_FAILED+=" ${CTR_NS[i]}"
  CTR_PID[i]=""
done
CTR_S=$(since "$t0")
[ -z "$CTR_FAILED" ] || { tail -5 "$WORK"/ctr-*.log >&2; die "ctr pull failed or timed out (${TIMEOUT}s) in:$CTR_FAILED"; }
note_busy "ctr pulls"
wait_for "the registry's log to settle" log_settled
read -r CTR_GETS CTR_BYTES < <(blob_gets_from "$CTR_LINE")
say "ctr: all $N pulls done after ${CTR_S}s; the registry served $CTR_GETS blob GETs, $(mib "$CTR_BYTES") MiB ($(ratio "$CTR_BYTES" "$IMAGE_BYTES")x the image)"

say "removing the ctr namespaces; waiting for containerd to collect their blobs"
for i in "${NODES[@]}"; do
  cleanup_namespace "${CTR_NS[i]}" "${CTR_NS[i]}"
  rm -f "$WORK/state/ctr-ns-$i"
done
CTR_BLOBS_LEFT=0
if [ -d "$CONTENT_DIR" ]; then
  deadline=$((SECONDS + 30))
  until no_blobs_on_disk || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.2; done
  CTR_BLOBS_LEFT=$(blobs_on_disk)
  [ "$CTR_BLOBS_LEFT" -eq 0 ] ||
    warn "$CTR_BLOBS_LEFT blobs of the image are still in $CONTENT_DIR after 30 s: shoal's nodes may take them without a fetch, and its bytes would be too low"
fi

# ------------------------------------------------- 2. shoal, 5 nodes --

say "starting $N agents on ${IP[1]}-$N (logs: $WORK/node{1..$N}.log)"
for i in "${NODES[@]}"; do
  if [ "$i" -eq 1 ]; then start_agent "$i"; else start_agent "$i" "${IP[1]}"; fi
done
t0=$(now)
wait_for "$N alive voters and one leader agreed on by every node" cluster_ready
say "$N voters ($(since "$t0")s after the last agent answered)"

# Registered, so that nodes fetch from it for each other from the first
# blob on (a home node fetches for others only from registries the
# cluster's state names).
sh_at 1 registry add "$REG" --insecure >"$WORK/registry-add.log" 2>&1 ||
  { cat "$WORK/registry-add.log" >&2; die "shoal registry add $REG --insecure failed"; }

cat >"$WORK/$APP.yaml" <<EOF
name: $APP
services:
  - name: everywhere
    image: $REF
    command: ["/bin/sh", "-c", "$LOOP"]
    kind: global
EOF

# All N tasks of the app desired and running, on N different nodes.
all_running() {
  sh_at 1 ps "$APP" -o json >"$WORK/ps.json" 2>/dev/null || return 1
  jq -e --argjson n "$N" '[.[] | select(.desired == "running" and .state == "running")]
    | length == $n and ([.[].node] | unique | length) == $n' >/dev/null 2>&1 <"$WORK/ps.json"
}

say "---- 2. shoal: one global service of $REF on $N nodes ----"
note_busy "shoal apply"
SHOAL_LINE=$(( $(log_lines) + 1 ))
t0=$(now)
sh_at 1 apply -f "$WORK/$APP.yaml" --detach >"$WORK/apply.log" 2>&1 ||
  { cat "$WORK/apply.log" >&2; die "shoal apply -f $APP.yaml --detach failed"; }
deadline=$((SECONDS + TIMEOUT))
until all_running; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    sh_at 1 ps "$APP" >&2 || true
    die "timed out after ${TIMEOUT}s waiting for $N tasks of $APP running (agent logs: $WORK/node*.log)"
  fi
  sleep 0.1
done
SHOAL_S=$(since "$t0")
note_busy "shoal apply"
wait_for "the registry's log to settle" log_settled
read -r SHOAL_GETS SHOAL_BYTES < <(blob_gets_from "$SHOAL_LINE")
DIGESTS_RUN=$(jq -r '[.[].image_digest] | unique | join(" ")' "$WORK/ps.json")
say "shoal: $N tasks running after ${SHOAL_S}s; the registry served $SHOAL_GETS blob GETs, $(mib "$SHOAL_BYTES") MiB ($(ratio "$SHOAL_BYTES" "$IMAGE_BYTES")x the image); image digest $DIGESTS_RUN"

# ----------------------------------------------------------------- report --

LOAD_END=$(loadavg)
# ANSI colour codes, if any, go before counting the agents' log levels.
agent_logs() { sed 's/\x1b\[[0-9;]*m//g' "$WORK"/node?.log; }
LOG_ERRORS=$(agent_logs | grep -c ' ERROR ' || true)
LOG_WARNINGS=$(agent_logs | grep -c ' WARN ' || true)
if [ "$LOG_ERRORS" -gt 0 ]; then
  warn "$LOG_ERRORS ERROR lines in the agents' logs (at most 5; BENCH_KEEP=1 keeps them):"
  agent_logs | grep ' ERROR ' | head -5 | cut -c1-400 >&2
fi

echo "# shoal pull, $N nodes starting one image at once: $N agents on ${IP[1]}-$N, one machine, one run"
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpus, load average $LOAD_START at start, $LOAD_END at end; $SHOAL_VERSION; containerd ${CONTAINERD_VERSION:-?}"
[ "$BUSY_MAX" -eq 0 ] || echo "# up to $BUSY_MAX compiler/cargo processes ran beside the measurements: figures are noisier"
echo
echo "image $REF: busybox + $RANDOM_LAYERS layers of ${LAYER_MB} MB random + text, gzip"
echo "   $IMAGE_LAYERS layers, $(mib "$LAYERS_BYTES") MiB compressed; blobs a pull GETs (config and layers): $IMAGE_BYTES bytes"
printf '\n   %-40s %9s %10s %12s %9s\n' "" seconds blob_GETs upstream_MiB x_image
printf '   %-40s %9s %10s %12s %9s\n' "shoal: apply -> $N tasks running" "$SHOAL_S" "$SHOAL_GETS" "$(mib "$SHOAL_BYTES")" "$(ratio "$SHOAL_BYTES" "$IMAGE_BYTES")"
printf '   %-40s %9s %10s %12s %9s\n' "ctr: $N pulls at once -> all done" "$CTR_S" "$CTR_GETS" "$(mib "$CTR_BYTES")" "$(ratio "$CTR_BYTES" "$IMAGE_BYTES")"
printf '   %-40s %9s %10s %12s\n' "shoal/ctr" "$(ratio "$SHOAL_S" "$CTR_S")" "$(ratio "$SHOAL_GETS" "$CTR_GETS")" "$(ratio "$SHOAL_BYTES" "$CTR_BYTES")"
echo
echo "   shoal's time includes scheduling, unpacking, networking and starting the $N containers; ctr's is pull and unpack only."
echo "   expected upstream bytes: about 1x the image for shoal (each blob fetched once per cluster), about ${N}x for ctr"
[ "$CTR_BLOBS_LEFT" -eq 0 ] || echo "   ($CTR_BLOBS_LEFT blobs of the ctr run were still in containerd's store when shoal's run started)"
echo "agents' logs: $LOG_ERRORS ERROR lines, $LOG_WARNINGS WARN lines"

jq -cn \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --argjson cpus "$(nproc)" \
  --arg load_start "$LOAD_START" --arg load_end "$LOAD_END" --argjson busy "$BUSY_MAX" \
  --arg shoal "$SHOAL_VERSION" --arg containerd "${CONTAINERD_VERSION:-}" \
  --argjson runtime "$((SECONDS - T_START))" --argjson nodes "$N" \
  --argjson layers "$IMAGE_LAYERS" --argjson layer_mb "$LAYER_MB" \
  --argjson layers_bytes "$LAYERS_BYTES" --argjson image_bytes "$IMAGE_BYTES" \
  --argjson shoal_s "$SHOAL_S" --argjson shoal_gets "$SHOAL_GETS" --argjson shoal_bytes "$SHOAL_BYTES" \
  --argjson ctr_s "$CTR_S" --argjson ctr_gets "$CTR_GETS" --argjson ctr_bytes "$CTR_BYTES" \
  --argjson r_s "$(ratio "$SHOAL_S" "$CTR_S")" --argjson r_bytes "$(ratio "$SHOAL_BYTES" "$CTR_BYTES")" \
  --argjson shoal_x "$(ratio "$SHOAL_BYTES" "$IMAGE_BYTES")" --argjson ctr_x "$(ratio "$CTR_BYTES" "$IMAGE_BYTES")" \
  --argjson left "$CTR_BLOBS_LEFT" --argjson log_errors "$LOG_ERRORS" --argjson log_warnings "$LOG_WARNINGS" \
  '{date: $date, cpus: $cpus, load_start: $load_start, load_end: $load_end, others_busy_max: $busy,
    shoal: $shoal, containerd: $containerd, runtime_s: $runtime, nodes: $nodes,
    image: {layers: $layers, layer_random_mb: $layer_mb, layers_compressed_bytes: $layers_bytes, blob_bytes: $image_bytes},
    shoal_run: {seconds: $shoal_s, blob_gets: $shoal_gets, upstream_bytes: $shoal_bytes, x_image: $shoal_x},
    ctr_run: {seconds: $ctr_s, blob_gets: $ctr_gets, upstream_bytes: $ctr_bytes, x_image: $ctr_x},
    shoal_over_ctr: {seconds: $r_s, upstream_bytes: $r_bytes},
    ctr_blobs_left_before_shoal: $left,
    agent_log_lines: {error: $log_errors, warn: $log_warnings}}'
