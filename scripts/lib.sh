# Shared by the setup, demo and test scripts. Source it; do not run it.

SHOAL_PACKAGES="containerd runc containernetworking-plugins iproute2 util-linux protobuf-compiler iptables busybox-static dnsutils curl ca-certificates gcc libc6-dev pkg-config docker-registry skopeo openssl python3-venv"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "this script needs root (containerd and runc do): run it with sudo" >&2
    exit 1
  fi
}

# Installs the Debian packages shoal needs, when any is missing.
ensure_packages() {
  local missing=()
  for package in $SHOAL_PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The tests and the demo run registries of their own on loopback; the
    # package's service would listen on :5000 on every interface.
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
  fi
}

# A Rust toolchain recent enough for the workspace (Debian's own is too old).
ensure_rust() {
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  if ! command -v cargo >/dev/null 2>&1; then
    say "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    . "$HOME/.cargo/env"
  fi
}

CONTAINERD_SOCKET=${CONTAINERD_SOCKET:-/run/containerd/containerd.sock}
STARTED_CONTAINERD_PID=""

# Starts containerd when nothing answers on its socket; remembers the pid
# of the one it started so that only that one is stopped.
ensure_containerd() {
  if ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1; then
    return
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl start containerd 2>/dev/null; then
    :
  else
    say "starting containerd (log: /tmp/shoal-containerd.log)"
    containerd >/tmp/shoal-containerd.log 2>&1 &
    STARTED_CONTAINERD_PID=$!
  fi
  for _ in $(seq 1 100); do
    ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "containerd did not come up; see /tmp/shoal-containerd.log" >&2
  exit 1
}

stop_started_containerd() {
  if [ -n "$STARTED_CONTAINERD_PID" ]; then
    kill "$STARTED_CONTAINERD_PID" 2>/dev/null || true
    wait "$STARTED_CONTAINERD_PID" 2>/dev/null || true
  fi
}

# schemathesis (PyPI) in a venv of its own under target/, for the API's
# property-based test; prints the path of its `st` binary.
ensure_schemathesis() {
  local venv=target/schemathesis-venv
  if [ ! -x "$venv/bin/st" ]; then
    say "installing schemathesis (PyPI) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'schemathesis==4.32.5' >&2
  fi
  echo "$PWD/$venv/bin/st"
}
