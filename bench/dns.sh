#!/usr/bin/env bash
# DNS figures: queries per second and latency, measured with dnsperf, of
#
#   shoal    shoal's own DNS server (crates/shoal-net/src/dns.rs, the server
#            each node agent runs), from the example dns_bench_server
#   dnsmasq  the same records from an addn-hosts file and srv-host lines
#   unbound  the same records as local-data in a static local-zone
#
# Each server runs alone, in the foreground, with its own config in a scratch
# directory, on its own loopback address (BENCH_DNS_IP_BLOCK.1/.2/.3, port
# BENCH_DNS_PORT), pinned to one CPU (BENCH_DNS_SERVER_CPU); dnsperf runs
# pinned to another (BENCH_DNS_CLIENT_CPU). The record set is made by
# dns_bench_server (APPS x SERVICES services of REPLICAS tasks: SERVICE.APP
# A, TASK.SERVICE.APP A, _http._tcp.SERVICE.APP SRV), which also writes the
# other servers' files and dnsperf's query list, so every server holds the
# same names and addresses. Before measuring, the script checks with dig that
# every server gives the same answers.
#
# Rows per server: every name of the zone in a loop at each level of queries
# outstanding, then, at the highest level, service A, SRV and task A names
# alone, and names missing from the zone (NXDOMAIN). Beside qps and latency
# (dnsperf -v per query) each row has the CPU used by the server, by dnsperf
# and by the rest of the machine, to tell a server-bound figure from a
# client-bound or disturbed one.
#
#   sudo bench/dns.sh            # 10 s per measurement
#   sudo bench/dns.sh --quick    # 3 s per measurement
#
# Environment: BENCH_DNS_SECONDS (default 10, 3 with --quick),
# BENCH_DNS_OUTSTANDING (dnsperf -q levels, default "1 10 100"; clients -c
# is min(q, 10)), BENCH_DNS_APPS / _SERVICES / _REPLICAS (default 10 each),
# BENCH_DNS_IP_BLOCK (default 127.53.0), BENCH_DNS_PORT (default 5300),
# BENCH_DNS_EDNS=1 (queries with EDNS0, dnsperf -e; by default none, as the
# glibc and musl stubs send), BENCH_DNS_SERVER_CPU (0), BENCH_DNS_CLIENT_CPU
# (1), BENCH_DNS_QUIET_WAIT (before each row, wait up to this many seconds,
# default 30, for the rest of the machine to use under 10 % of a core),
# BENCH_DNS_RETRIES (default 2: a row during which other processes used 15 %
# of a core or more is measured again, up to this many times; the least
# disturbed try is kept), BENCH_KEEP=1 (keep the scratch directory; also
# kept when the script fails), CARGO_TARGET_DIR.
#
# Root is needed only to install what is missing (apt-get: dnsperf,
# dnsmasq-base, unbound, bind9-dnsutils); no system service is started or
# stopped and the host's resolver config is not touched. Prints a table, then
# one line of JSON with every figure. It asserts nothing about the figures.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" -eq 1 ]; then SECONDS_DEFAULT=3; else SECONDS_DEFAULT=10; fi
DURATION=${BENCH_DNS_SECONDS:-$SECONDS_DEFAULT}
LEVELS=${BENCH_DNS_OUTSTANDING:-1 10 100}
APPS=${BENCH_DNS_APPS:-10}
SERVICES=${BENCH_DNS_SERVICES:-10}
REPLICAS=${BENCH_DNS_REPLICAS:-10}
IP_BLOCK=${BENCH_DNS_IP_BLOCK:-127.53.0}
PORT=${BENCH_DNS_PORT:-5300}
SERVER_CPU=${BENCH_DNS_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_DNS_CLIENT_CPU:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
EDNS=${BENCH_DNS_EDNS:-0}
ZONE=shoal
TTL=5
WAIT_S=10
QUIET_WAIT_S=${BENCH_DNS_QUIET_WAIT:-30}
QUIET_PCT=10
RETRIES=${BENCH_DNS_RETRIES:-2}
DISTURBED_PCT=15
SERVERS=(shoal dnsmasq unbound)
declare -A ADDR=([shoal]=$IP_BLOCK.1 [dnsmasq]=$IP_BLOCK.2 [unbound]=$IP_BLOCK.3)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning: %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31merror: %s\033[0m\n' "$*" >&2; exit 1; }
# shellcheck disable=SC2009  # pgrep -x warns about patterns over 15 characters
busy_now() { ps -eo comm= | grep -cxE 'rustc|cargo|cc1|cc1plus|ld|ld\..*|rust-lld|collect2' || true; }

for v in DURATION QUIET_WAIT_S RETRIES APPS SERVICES REPLICAS PORT SERVER_CPU CLIENT_CPU; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v: not a number: ${!v}"
done
for q in $LEVELS; do [[ $q =~ ^[1-9][0-9]*$ ]] || die "BENCH_DNS_OUTSTANDING: not a count: $q"; done
[[ $EDNS =~ ^[01]$ ]] || die "BENCH_DNS_EDNS: 0 or 1: $EDNS"
# dnsperf sends no EDNS unless -e; dig must ask as dnsperf does, over UDP
# only (+ignore: a truncated answer is not retried over TCP).
DNSPERF_OPTS=()
DIG_OPTS=(-p "$PORT" +time=2 +tries=1 +ignore +noedns)
if [ "$EDNS" -eq 1 ]; then DNSPERF_OPTS=(-e); DIG_OPTS=(-p "$PORT" +time=2 +tries=1 +ignore +edns=0 +bufsize=1232); fi
[[ $IP_BLOCK =~ ^127\.[0-9]+\.[0-9]+$ ]] || die "BENCH_DNS_IP_BLOCK must be 127.X.Y (loopback): $IP_BLOCK"
[ "$SERVER_CPU" != "$CLIENT_CPU" ] || warn "server and client share CPU $SERVER_CPU"

# ------------------------------------------------------------ cleanup --
SCRATCH=""
POLICY_RC_D_OURS=0
declare -A PID=()
FAILED=1

stop_pid() { # pid
  local pid=$1
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "pid $pid did not stop on SIGTERM within 5 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_server() { # name
  [ -n "${PID[$1]:-}" ] || return 0
  stop_pid "${PID[$1]}"
  PID[$1]=""
}

cleanup_all() {
  trap - EXIT INT TERM
  local s
  for s in "${SERVERS[@]}"; do stop_server "$s"; done
  if [ "$POLICY_RC_D_OURS" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ -n "$SCRATCH" ] && [ -d "$SCRATCH" ]; then
    if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$FAILED" -eq 1 ]; then
      say "kept $SCRATCH"
    else
      rm -rf -- "$SCRATCH"
    fi
  fi
}
trap cleanup_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ install --
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
UNBOUND=$(command -v unbound || echo /usr/sbin/unbound)
UNBOUND_CHECKCONF=$(command -v unbound-checkconf || echo /usr/sbin/unbound-checkconf)
missing=()
command -v dnsperf >/dev/null || missing+=(dnsperf)
[ -x "$DNSMASQ" ] || missing+=(dnsmasq-base)
[ -x "$UNBOUND" ] || missing+=(unbound)
command -v dig >/dev/null || missing+=(bind9-dnsutils)
command -v taskset >/dev/null || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run as root to install them with apt-get"
  # dnsmasq-base is dnsmasq without its service; unbound's package would
  # start its service: a policy-rc.d that refuses (only while we install,
  # and only if the machine has none) keeps it stopped.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# bench/dns.sh: no service starts while it installs\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    POLICY_RC_D_OURS=1
  fi
  say "installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$POLICY_RC_D_OURS" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_D_OURS=0; fi
fi

# -------------------------------------------------------------- build --
say "building dns_bench_server (release)"
(cd "$ROOT" && cargo build --release --quiet -p shoal-net --example dns_bench_server)
SCRATCH=$(mktemp -d /tmp/shoal-dns-bench.XXXXXX)
# dnsmasq drops privileges to nobody; it must read its files.
chmod 755 "$SCRATCH"
cp "$TARGET_DIR/release/examples/dns_bench_server" "$SCRATCH/"
ZONE_DIR=$SCRATCH/zone
CLK_TCK=$(getconf CLK_TCK)

# ------------------------------------------------------------ servers --
wait_answer() { # name
  local addr=${ADDR[$1]} pid=${PID[$1]}
  for _ in $(seq 1 $((WAIT_S * 10))); do
    kill -0 "$pid" 2>/dev/null || die "$1 exited; see $SCRATCH/$1.log"
    if dig @"$addr" -p "$PORT" +time=1 +tries=1 +short "$ZONE" SOA >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$1 does not answer on $addr:$PORT after ${WAIT_S}s; see $SCRATCH/$1.log"
}

start_shoal() {
  taskset -c "$SERVER_CPU" "$SCRATCH/dns_bench_server" --listen "${ADDR[shoal]}:$PORT" \
    --out "$ZONE_DIR" --apps "$APPS" --services "$SERVICES" --replicas "$REPLICAS" \
    --zone "$ZONE" --ttl "$TTL" >"$SCRATCH/shoal.log" 2>&1 &
  PID[shoal]=$!
  for _ in $(seq 1 $((WAIT_S * 10))); do
    grep -q '^ready ' "$SCRATCH/shoal.log" && return 0
    kill -0 "${PID[shoal]}" 2>/dev/null || die "dns_bench_server exited: $(cat "$SCRATCH/shoal.log")"
    sleep 0.1
  done
  die "dns_bench_server not ready after ${WAIT_S}s"
}

start_dnsmasq() {
  # Every answer comes from addn-hosts and srv-host (nothing is forwarded);
  # the cache size also sizes the table those names are hashed into, so it
  # is set above the record count.
  cat >"$SCRATCH/dnsmasq.conf" <<EOF
# bench/dns.sh: only what is needed to serve the zone from files
port=$PORT
listen-address=${ADDR[dnsmasq]}
bind-interfaces
no-resolv
no-poll
no-hosts
local=/$ZONE/
addn-hosts=$ZONE_DIR/dnsmasq.hosts
conf-file=$ZONE_DIR/dnsmasq-srv.conf
local-ttl=$TTL
neg-ttl=$TTL
cache-size=10000
user=nobody
group=nogroup
pid-file=$SCRATCH/dnsmasq.pid
log-facility=-
EOF
  taskset -c "$SERVER_CPU" "$DNSMASQ" --keep-in-foreground --conf-file="$SCRATCH/dnsmasq.conf" \
    >"$SCRATCH/dnsmasq.log" 2>&1 &
  PID[dnsmasq]=$!
}

start_unbound() {
  cat >"$SCRATCH/unbound.conf" <<EOF
# bench/dns.sh: one thread, the zone as local-data, no recursion needed
server:
  interface: ${ADDR[unbound]}
  port: $PORT
  num-threads: 1
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$SCRATCH"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  include: "$ZONE_DIR/unbound-local.conf"
remote-control:
  control-enable: no
EOF
  "$UNBOUND_CHECKCONF" "$SCRATCH/unbound.conf" >"$SCRATCH/unbound-checkconf.log" 2>&1 ||
    die "unbound-checkconf: $(cat "$SCRATCH/unbound-checkconf.log")"
  taskset -c "$SERVER_CPU" "$UNBOUND" -d -c "$SCRATCH/unbound.conf" >"$SCRATCH/unbound.log" 2>&1 &
  PID[unbound]=$!
}

# What a server answers for a few names: the same on every server, or the
# comparison is not fair.
answers() { # name
  local addr=${ADDR[$1]} name
  local first_service first_task
  first_service=$(awk '$2 == "A" { print $1; exit }' "$ZONE_DIR/queries.txt")
  first_task=$(awk '$2 == "A" && NR > 2 { print $1; exit }' "$ZONE_DIR/queries.txt")
  for name in "$first_service A" "_http._tcp.$first_service SRV" "$first_task A" \
    "$(head -1 "$ZONE_DIR/queries-nxdomain.txt")"; do
    # shellcheck disable=SC2086  # name is "NAME TYPE"
    printf '%s: %s %s\n' "$name" \
      "$(dig "${DIG_OPTS[@]}" @"$addr" +noall +comments $name | sed -n 's/.*status: \([A-Z]*\),.*/\1/p')" \
      "$(dig "${DIG_OPTS[@]}" @"$addr" +short $name | sort | tr '\n' ' ')"
  done
}

# The header flags of a UDP answer, as dnsperf gets it (no retry over TCP).
flags() { # server name type
  dig "${DIG_OPTS[@]}" @"${ADDR[$1]}" +noall +comments "$2" "$3" |
    sed -n 's/^;; flags: \([a-z ]*\);.*/\1/p'
}

cpu_ticks() { # pid: user + system ticks of the process and its threads
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}
# Busy ticks of the whole machine (every CPU): user, nice, system and steal
# (the hypervisor's other guests); idle, iowait and interrupt time (mostly
# the loopback traffic of the benchmark itself) left out.
machine_ticks() {
  awk '$1 == "cpu" { print $2 + $3 + $4 + $9; exit }' /proc/stat
}
# Waits (at most QUIET_WAIT_S) until the machine used under QUIET_PCT % of a
# core over one second: between rows our server idles, so that is others'.
wait_quiet() { # what
  local deadline=$((SECONDS + QUIET_WAIT_S)) m0 m1 pct
  while :; do
    m0=$(machine_ticks)
    sleep 1
    m1=$(machine_ticks)
    pct=$(((m1 - m0) * 100 / CLK_TCK))
    [ "$pct" -ge "$QUIET_PCT" ] || return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      warn "the machine is busy ($pct % of a core) before $1; measuring anyway"
      return 0
    fi
  done
}

# ------------------------------------------------------------ measure --
ROWS=()
JSON_ROWS=()
ROW_FORMAT='%-8s %-9s %4s %3s %9s %7s %7s %7s %7s %6s %6s %4s %4s %4s %4s %3s  %s\n'

TIMEFORMAT='%U %S %R'

# One dnsperf run against a server; sets TRY_OTHER (CPU of other work, % of
# a core), TRY_ROW, TRY_JSON and TRY_SAY.
measure_once() { # server queries-file outstanding label try
  local server=$1 queries=$2 q=$3 label=$4 try=$5
  local c=$((q < 10 ? q : 10)) out=$SCRATCH/$server-$label-q$q-$try
  wait_quiet "$server $label q=$q"
  local pid=${PID[$server]} busy_before busy_after t0 t1 m0 m1 times
  busy_before=$(busy_now)
  t0=$(cpu_ticks "$pid")
  m0=$(machine_ticks)
  { time taskset -c "$CLIENT_CPU" dnsperf -s "${ADDR[$server]}" -p "$PORT" -d "$queries" \
    -l "$DURATION" -c "$c" -q "$q" "${DNSPERF_OPTS[@]}" -v >"$out.txt" 2>"$out.err"; } 2>"$out.time"
  t1=$(cpu_ticks "$pid")
  m1=$(machine_ticks)
  busy_after=$(busy_now)
  times=$(tail -1 "$out.time")
  local qps sent lost avg max resp codes p50 p99 srv_cpu cli_cpu oth_cpu busy qps_shown
  qps=$(awk '/Queries per second:/ { printf "%.0f", $4 }' "$out.txt")
  sent=$(awk '/Queries sent:/ { print $3 }' "$out.txt")
  lost=$(awk '/Queries lost:/ { print $3 }' "$out.txt")
  avg=$(awk '/Average Latency \(s\):/ { printf "%.3f", $4 * 1000 }' "$out.txt")
  max=$(awk '/Average Latency \(s\):/ { gsub(/\)/, "", $8); printf "%.3f", $8 * 1000 }' "$out.txt")
  resp=$(awk '/Average packet size:/ { print $NF }' "$out.txt")
  codes=$(awk -F': *' '/Response codes:/ { gsub(/ \([0-9.]+%\)/, "", $2); gsub(/, /, ",", $2); gsub(/ /, "=", $2); print $2 }' "$out.txt")
  [ -n "$qps" ] || die "dnsperf gave no figures for $server ($label, q=$q): $(cat "$out.err")"
  # Per-query latencies from -v ("> NOERROR name type seconds"); lost
  # queries are not in them.
  awk '/^> / && $NF ~ /^[0-9.]+$/ { print $NF }' "$out.txt" | sort -g >"$out.lat"
  read -r p50 p99 < <(awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "-", "-"; exit }
      i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
      printf "%.3f %.3f\n", v[i50] * 1000, v[i99] * 1000 }' "$out.lat")
  rm -f "$out.lat"
  srv_cpu=$(awk -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" -v r="${times##* }" \
    'BEGIN { printf "%.0f", (t1 - t0) / hz / r * 100 }')
  cli_cpu=$(echo "$times" | awk '{ printf "%.0f", ($1 + $2) / $3 * 100 }')
  # Everything else the machine did meanwhile (others' work, interrupts).
  oth_cpu=$(echo "$times" | awk -v t0="$t0" -v t1="$t1" -v m0="$m0" -v m1="$m1" -v hz="$CLK_TCK" \
    '{ o = ((m1 - m0) - (t1 - t0)) / hz - ($1 + $2); if (o < 0) o = 0; printf "%.0f", o / $3 * 100 }')
  # With one query outstanding dnsperf paces itself (its threads hand the
  # slot over through a wake-up): the rate is the client's, not the server's.
  if [ "$q" -eq 1 ]; then qps_shown="($qps)"; else qps_shown=$qps; fi
  busy=$((busy_before > busy_after ? busy_before : busy_after))
  [ "$busy" -eq 0 ] || warn "$busy compiler/cargo processes running during $server $label q=$q"
  [ "$oth_cpu" -lt "$DISTURBED_PCT" ] || warn "other work used $oth_cpu % of a core during $server $label q=$q"
  TRY_OTHER=$oth_cpu
  # shellcheck disable=SC2059  # the format is ours
  TRY_ROW=$(printf "$ROW_FORMAT" \
    "$server" "$label" "$q" "$c" "$qps_shown" "$avg" "$p50" "$p99" "$max" "$lost" "$resp" \
    "$srv_cpu" "$cli_cpu" "$oth_cpu" "$busy" "$try" "$codes")
  TRY_JSON=$(printf '{"server":"%s","queries":"%s","outstanding":%s,"clients":%s,"qps":%s,"sent":%s,"lost":%s,"avg_ms":%s,"p50_ms":%s,"p99_ms":%s,"max_ms":%s,"response_bytes":%s,"server_cpu_pct":%s,"client_cpu_pct":%s,"other_cpu_pct":%s,"busy":%s,"try":%s,"rcodes":"%s"}' \
    "$server" "$label" "$q" "$c" "$qps" "$sent" "$lost" "$avg" "$p50" "$p99" "$max" "$resp" \
    "$srv_cpu" "$cli_cpu" "$oth_cpu" "$busy" "$try" "$codes")
  say "$(printf '%-8s %-9s q=%-4s %9s qps  avg %s ms  p99 %s ms  lost %s  other %s %%' \
    "$server" "$label" "$q" "$qps" "$avg" "$p99" "$lost" "$oth_cpu")"
}

# A row of the table: measured again (up to RETRIES times) while other work
# took DISTURBED_PCT % of a core or more; the least disturbed try is kept.
measure() { # server queries-file outstanding label
  local try best_other=-1 best_row="" best_json=""
  for try in $(seq 1 $((RETRIES + 1))); do
    measure_once "$@" "$try"
    if [ "$best_other" -lt 0 ] || [ "$TRY_OTHER" -lt "$best_other" ]; then
      best_other=$TRY_OTHER best_row=$TRY_ROW best_json=$TRY_JSON
    fi
    [ "$TRY_OTHER" -ge "$DISTURBED_PCT" ] || break
  done
  ROWS+=("$best_row")
  JSON_ROWS+=("$best_json")
}

say "scratch $SCRATCH; load average $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A ANSWERS=() SRV_FLAGS=()
for server in "${SERVERS[@]}"; do
  say "starting $server on ${ADDR[$server]}:$PORT (CPU $SERVER_CPU)"
  "start_$server"
  wait_answer "$server"
  ANSWERS[$server]=$(answers "$server")
  SRV_FLAGS[$server]=$(flags "$server" "$(awk '$2 == "SRV" { print $1; exit }' "$ZONE_DIR/queries.txt")" SRV)
  if [ "$server" != shoal ] && [ "${ANSWERS[$server]}" != "${ANSWERS[shoal]}" ]; then
    printf 'shoal:\n%s\n%s:\n%s\n' "${ANSWERS[shoal]}" "$server" "${ANSWERS[$server]}" >&2
    die "$server does not answer as shoal does"
  fi
  # Warm-up (not measured): one second at the highest level.
  taskset -c "$CLIENT_CPU" dnsperf -s "${ADDR[$server]}" -p "$PORT" -d "$ZONE_DIR/queries.txt" \
    -l 1 -c 10 -q 100 "${DNSPERF_OPTS[@]}" >/dev/null 2>&1 || true
  for q in $LEVELS; do
    measure "$server" "$ZONE_DIR/queries.txt" "$q" zone
  done
  # The same names by kind, and missing names, at the highest level.
  q=${LEVELS##* }
  measure "$server" "$ZONE_DIR/queries-service-a.txt" "$q" service-A
  measure "$server" "$ZONE_DIR/queries-srv.txt" "$q" SRV
  measure "$server" "$ZONE_DIR/queries-task-a.txt" "$q" task-A
  measure "$server" "$ZONE_DIR/queries-nxdomain.txt" "$q" nxdomain
  stop_server "$server"
done

# ------------------------------------------------------------- report --
records=$(sed -n 's/^ready .* records \([0-9]*\) queries \([0-9]*\)$/\1/p' "$SCRATCH/shoal.log")
query_names=$(wc -l <"$ZONE_DIR/queries.txt")
echo
if [ "$EDNS" -eq 1 ]; then edns_text="EDNS0 (1232 bytes)"; else edns_text="no EDNS (512-byte answers)"; fi
echo "DNS over UDP, $edns_text, dnsperf ${DURATION}s per row; servers on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU"
echo "zone $ZONE: $((APPS * SERVICES)) services x $REPLICAS tasks, $records records; queries: $query_names names" \
  "(service A, _http._tcp SRV, task A) in a loop; nxdomain: 1000 missing names in the zone"
echo "answers checked alike on every server:"
printf "%s\n" "${ANSWERS[shoal]}" | sed "s/^/  /"
printf 'header flags of that SRV answer over UDP:'
for server in "${SERVERS[@]}"; do printf ' %s "%s"' "$server" "${SRV_FLAGS[$server]}"; done
echo "  (tc: truncated, a client retries over TCP)"
echo
# shellcheck disable=SC2059  # the format is ours
printf "$ROW_FORMAT" \
  server queries q c qps avg_ms p50_ms p99_ms max_ms lost resp_B srv% cli% oth% busy try rcodes
printf '%s\n' "${ROWS[@]}"
echo
echo "queries: zone = every name (service A, SRV, task A) in a loop; service-A, SRV, task-A: one kind only;"
echo "  nxdomain: missing names inside the zone. q: queries outstanding (dnsperf -q), c: clients (-c)."
echo "qps in (): with one query outstanding dnsperf paces itself; read only the latencies there."
echo "latencies: dnsperf -v per query (lost queries not counted). resp_B: dnsperf's average response size."
echo "srv%/cli%/oth%: CPU of the server / dnsperf / other processes and steal over the run (100 = one core);"
echo "  busy: compiler/cargo processes seen at its start or end; try: which try was kept (a row is"
echo "  measured again, up to $RETRIES more times, while oth% >= $DISTURBED_PCT; the least disturbed try is kept)."
printf '{"bench":"dns","edns":%s,"seconds":%s,"services":%s,"replicas":%s,"records":%s,"loadavg":"%s","rows":[%s]}\n' \
  "$EDNS" "$DURATION" "$((APPS * SERVICES))" "$REPLICAS" "$records" "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "$(IFS=,; echo "${JSON_ROWS[*]}")"
FAILED=0
