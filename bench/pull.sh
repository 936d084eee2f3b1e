#!/usr/bin/env bash
# Pull one image from a registry on loopback into containerd, side by side:
#   shoal   `shoal image pull` against a fresh `shoal dev` node
#   ctr     `ctr images pull --plain-http` (containerd's own client)
#   skopeo  `skopeo copy docker://… oci:DIR` (download to disk, no unpack)
#   docker  `docker pull` from a dockerd this script starts on the same
#           containerd (its own data root, no bridge, no iptables rules;
#           Debian's docker.io, installed when missing)
#   floor   sha256 and decompression of the same bytes from disk, on one core
# for a 4-layer image of about 100 MB compressed, gzip and zstd, made here
# (random bytes and text). Each figure is the median of BENCH_RUNS runs
# (default 3); every pull starts from an empty containerd namespace, removed
# after it (so no blob is shared between runs or tools).
#
# Knobs: BENCH_RUNS, BENCH_LAYER_MB (random MB per layer, default 20),
# SHOAL_BIN (default target/release/shoal, built when missing), BENCH_KEEP=1.
# Needs root, containerd, docker-registry, skopeo, zstd, python3 (and
# docker.io, which it installs with apt-get when missing). It asserts
# nothing about the timings; it prints a table and one line of JSON.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${BENCH_RUNS:-3}
LAYER_MB=${BENCH_LAYER_MB:-20}
SHOAL_SRC=${SHOAL_BIN:-$ROOT/target/release/shoal}
CONTAINERD_SOCKET=/run/containerd/containerd.sock
NS_SHOAL=shoal-bench-pull
NS_CTR=shoal-bench-pull-ctr

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning: %s\033[0m\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "-" }'; }

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: containerd needs it" >&2
  exit 1
fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS: not a count: $RUNS" >&2; exit 1; }
[[ $LAYER_MB =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_LAYER_MB: not a count: $LAYER_MB" >&2; exit 1; }
for tool in containerd ctr docker-registry skopeo zstd python3 curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (scripts/lib.sh's packages, zstd, python3)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/shoal-bench-pull.XXXXXX)
STARTED_CONTAINERD=""
REGISTRY_PID=""
SHOAL_PID=""
DOCKERD_PID=""
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
DOCKER_KEY_EXISTED=""
if [ -e /etc/docker/key.json ]; then DOCKER_KEY_EXISTED=1; fi
MOBY_NS_EXISTED=""
if ctr namespaces ls -q 2>/dev/null | grep -qx moby; then MOBY_NS_EXISTED=1; fi

stop() { # pid name
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  warn "$2 (pid $1) ignored SIGTERM; SIGKILL"
  kill -KILL "$1" 2>/dev/null || true
}

cleanup() {
  stop "$DOCKERD_PID" dockerd
  # dockerd unmounts its layers when it stops; whatever it left goes here.
  if [ -d "$WORK/docker" ]; then
    local mnt
    for mnt in $(findmnt -rn -o TARGET | awk -v w="$WORK/docker/" 'index($0, w) == 1' | sort -r); do
      umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    done
  fi
  if [ -z "$DOCKER_KEY_EXISTED" ]; then rm -f /etc/docker/key.json; fi
  if [ -z "$MOBY_NS_EXISTED" ]; then cleanup_namespace moby moby; fi
  stop "$SHOAL_PID" "shoal dev"
  cleanup_namespace "$NS_SHOAL" "shoal/$NS_SHOAL"
  cleanup_namespace "$NS_CTR" "$NS_CTR"
  cleanup_node_network "$WORK/shoal-data" shbenchp0
  stop "$REGISTRY_PID" docker-registry
  stop "$STARTED_CONTAINERD" containerd
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    say "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] && { echo "$port"; return 0; }
  done
  echo "no free port found" >&2
  return 1
}

wait_for() { # what command...
  local what=$1
  shift
  for _ in $(seq 1 300); do "$@" && return 0; sleep 0.1; done
  echo "gave up waiting for $what" >&2
  return 1
}

if ! ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1; then
  say "starting containerd (log: $WORK/containerd.log)"
  containerd >"$WORK/containerd.log" 2>&1 &
  STARTED_CONTAINERD=$!
  wait_for containerd ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1
fi
if [ ! -x "$SHOAL_SRC" ]; then
  say "building shoal (release)"
  (cd "$ROOT" && cargo build --release --locked -p shoal)
fi
SHOAL=$WORK/shoal
cp "$SHOAL_SRC" "$SHOAL"

# ---------------------------------------------------------------- image --
say "making a 4-layer image ($LAYER_MB MB random + text per layer), gzip and zstd"
python3 - "$WORK/layout" "$LAYER_MB" >"$WORK/image.txt" <<'PY'
import gzip, hashlib, io, json, os, subprocess, sys, tarfile
out, mb = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def put(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
tars = []
for i in range(4):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("random.bin", os.urandom(mb << 20)),
                           ("text.txt", (f"layer {i} line of text that compresses well\n" * (mb << 14)).encode())):
            info = tarfile.TarInfo(f"layer{i}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tars.append(raw.getvalue())
diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
config = json.dumps({"architecture": arch, "os": "linux",
                     "config": {"Cmd": ["/bin/true"]},
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cdigest, csize = put(config)
index = []
for kind, media in (("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
                    ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd")):
    layers = []
    for t in tars:
        if kind == "gzip":
            data = gzip.compress(t, compresslevel=6, mtime=0)
        else:
            data = subprocess.run(["zstd", "-3", "-q", "-c"], input=t, check=True, capture_output=True).stdout
        d, s = put(data)
        layers.append({"mediaType": media, "digest": d, "size": s})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
                           "layers": layers}).encode()
    md, ms = put(manifest)
    index.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                  "annotations": {"org.opencontainers.image.ref.name": kind}})
    print(kind, sum(l["size"] for l in layers), " ".join(l["digest"] for l in layers))
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": index}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
PY
# "KIND BYTES DIGEST..." per compression.
declare -A BYTES LAYERS
while read -r kind size digests; do
  BYTES[$kind]=$size
  LAYERS[$kind]=$digests
done <"$WORK/image.txt"

# ------------------------------------------------------------- registry --
PORT=$(free_port)
REG=127.0.0.1:$PORT
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
say "starting docker-registry on $REG"
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
wait_for docker-registry curl -fsS "http://$REG/v2/" -o /dev/null 2>/dev/null
for kind in gzip zstd; do
  skopeo copy --quiet --insecure-policy --dest-tls-verify=false \
    "oci:$WORK/layout:$kind" "docker://$REG/bench/big:$kind"
done

# ---------------------------------------------------------------- shoal --
API_PORT=$(free_port)
export SHOAL_ADDR=127.0.0.1:$API_PORT SHOAL_CONFIG=$WORK/shoal-data/admin.json
say "starting shoal dev on $SHOAL_ADDR, namespace $NS_SHOAL (log: $WORK/shoal-dev.log)"
HOME=$WORK "$SHOAL" dev --data-dir "$WORK/shoal-data" --api "$SHOAL_ADDR" \
  --containerd-socket "$CONTAINERD_SOCKET" --containerd-namespace "$NS_SHOAL" \
  --bridge shbenchp0 --cluster-cidr 10.198.0.0/16 >"$WORK/shoal-dev.log" 2>&1 &
SHOAL_PID=$!
wait_for "shoal dev" "$SHOAL" nodes >/dev/null 2>&1

# --------------------------------------------------------------- docker --
if [ ! -x "$DOCKERD" ] || [ ! -x "$DOCKER" ]; then
  say "installing Debian's docker.io"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >"$WORK/apt.log" 2>&1 ||
    { cat "$WORK/apt.log" >&2; exit 1; }
fi
mkdir -p "$WORK/docker"
export DOCKER_HOST=unix://$WORK/docker/docker.sock
say "starting dockerd on the same containerd (log: $WORK/docker/dockerd.log)"
# Loopback registries are insecure (plain HTTP) to dockerd by default.
"$DOCKERD" --containerd "$CONTAINERD_SOCKET" \
  --data-root "$WORK/docker/data" --exec-root "$WORK/docker/exec" \
  --pidfile "$WORK/docker/dockerd.pid" -H "$DOCKER_HOST" \
  --bridge none --iptables=false --ip6tables=false \
  >"$WORK/docker/dockerd.log" 2>&1 &
DOCKERD_PID=$!
wait_for dockerd "$DOCKER" info >/dev/null 2>&1
say "dockerd $("$DOCKER" version --format '{{.Server.Version}}')"

# Each pull starts from an empty namespace and leaves none behind: content
# is shared between namespaces, so a leftover blob would skip a download.
empty() { # namespace
  local image
  for image in $(ctr -n "$1" images ls -q 2>/dev/null); do
    ctr -n "$1" images rm --sync "$image" >/dev/null 2>&1 || true
  done
  for blob in $(ctr -n "$1" content ls -q 2>/dev/null); do
    ctr -n "$1" content rm "$blob" >/dev/null 2>&1 || true
  done
  for _ in $(seq 1 16); do
    local keys
    keys=$(ctr -n "$1" snapshots ls 2>/dev/null | awk 'NR > 1 { print $1 }')
    [ -n "$keys" ] || break
    for key in $keys; do ctr -n "$1" snapshots rm "$key" >/dev/null 2>&1 || true; done
  done
}

declare -A FIG
for kind in gzip zstd; do
  ref=$REG/bench/big:$kind
  for tool in shoal ctr skopeo docker floor; do
    : >"$WORK/times.$tool.$kind"
  done
  for run in $(seq 1 "$RUNS"); do
    say "$kind, run $run of $RUNS"
    empty "$NS_SHOAL"
    t0=$EPOCHREALTIME
    "$SHOAL" image pull "$ref" >/dev/null
    since "$t0" >>"$WORK/times.shoal.$kind"
    empty "$NS_SHOAL"

    t0=$EPOCHREALTIME
    ctr -n "$NS_CTR" images pull --plain-http "$ref" >/dev/null
    since "$t0" >>"$WORK/times.ctr.$kind"
    empty "$NS_CTR"

    rm -rf "$WORK/skopeo-out"
    t0=$EPOCHREALTIME
    skopeo copy --quiet --insecure-policy --src-tls-verify=false "docker://$ref" "oci:$WORK/skopeo-out:x"
    since "$t0" >>"$WORK/times.skopeo.$kind"
    rm -rf "$WORK/skopeo-out"

    t0=$EPOCHREALTIME
    if "$DOCKER" pull -q "$ref" >"$WORK/docker-pull.out" 2>&1; then
      since "$t0" >>"$WORK/times.docker.$kind"
    else
      warn "docker pull of $kind failed: $(tail -1 "$WORK/docker-pull.out")"
    fi
    "$DOCKER" rmi -f "$ref" >/dev/null 2>&1 || true

    # The floor: check every byte and decompress every layer, one core.
    t0=$EPOCHREALTIME
    for digest in ${LAYERS[$kind]}; do
      blob=$WORK/layout/blobs/sha256/${digest#sha256:}
      sha256sum "$blob" >/dev/null
      if [ "$kind" = gzip ]; then gzip -dc "$blob" | sha256sum >/dev/null; else zstd -dcq "$blob" | sha256sum >/dev/null; fi
    done
    since "$t0" >>"$WORK/times.floor.$kind"
  done
  for tool in shoal ctr skopeo docker floor; do
    FIG[$tool.$kind]=$(median <"$WORK/times.$tool.$kind")
    [ -n "${FIG[$tool.$kind]}" ] || FIG[$tool.$kind]=null
  done
done

printf '\n%-6s %10s %9s %9s %9s %9s %9s %10s %13s %11s\n' layers "MB" shoal_s ctr_s skopeo_s docker_s floor_s shoal/ctr shoal/docker shoal/floor
for kind in gzip zstd; do
  printf '%-6s %10.1f %9s %9s %9s %9s %9s %10s %13s %11s\n' "$kind" \
    "$(awk -v b="${BYTES[$kind]}" 'BEGIN { print b / 1048576 }')" \
    "${FIG[shoal.$kind]}" "${FIG[ctr.$kind]}" "${FIG[skopeo.$kind]}" "${FIG[docker.$kind]}" "${FIG[floor.$kind]}" \
    "$(ratio "${FIG[shoal.$kind]}" "${FIG[ctr.$kind]}")" "$(ratio "${FIG[shoal.$kind]}" "${FIG[docker.$kind]}")" \
    "$(ratio "${FIG[shoal.$kind]}" "${FIG[floor.$kind]}")"
done
printf '{"runs":%s,"layer_random_mb":%s,"load":"%s"' "$RUNS" "$LAYER_MB" "$(cut -d' ' -f1-3 /proc/loadavg)"
for kind in gzip zstd; do
  printf ',"%s":{"bytes":%s,"shoal_s":%s,"ctr_s":%s,"skopeo_s":%s,"docker_s":%s,"floor_s":%s}' "$kind" "${BYTES[$kind]}" \
    "${FIG[shoal.$kind]}" "${FIG[ctr.$kind]}" "${FIG[skopeo.$kind]}" "${FIG[docker.$kind]}" "${FIG[floor.$kind]}"
done
echo "}"
