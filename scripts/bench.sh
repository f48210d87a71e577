#!/usr/bin/env bash
# sockstun benchmark: one machine, throwaway network namespaces, one table.
#
#   client (netbench; TUN + sockstun tun) --veth-- proxy (SOCKS upstream) --veth-- target (netbench server)
#    198.51.100.2/24                        198.51.100.1/24   203.0.113.1/24     203.0.113.2/24, .3, .4, .10...
#   wan scenario only: client --TAP wcc == delayline (in proxy ns) == TAP wpc-- proxy, carrying
#   the client's traffic to and from 198.51.100.1 (and the redsocks client's, over wcr/wpr)
#
# Rows (TUN mode, the default), all set up at once and run one after another for each
# scenario, so a ratio compares figures taken under the same machine load:
#   direct      client -> 203.0.113.2 routed through the proxy namespace by plain kernel
#               forwarding: no TUN, no SOCKS (the ceiling of the path)
#   socks-only  client speaks SOCKS5 to the upstream, which dials 203.0.113.2: no TUN
#   sockstun    client -> 203.0.113.3 follows the default route into the TUN of
#               `sockstun tun`, which dials it through the same upstream
#   redsocks    (when redsocks and nft are installed) client -> 203.0.113.4 is
#               redirected by nftables to redsocks, Debian's transparent socksifier,
#               which dials it through the same upstream: a field peer with the
#               kernel's TCP on both legs and no userspace stack, in a second table
#   hop         (only when named in --rows) client -> 127.0.0.1:9100, where hop.rs, a
#               relay with no protocol (blocking threads, poll(2), recvmmsg/sendmmsg),
#               passes TCP and UDP on to 203.0.113.2: the direct path plus one relay
#               process, so hop against direct is what any process on the path costs
#               at least (its wake-ups and socket calls), whatever protocol it speaks
#   NAME        one row per --variant NAME='ARGS' (`sockstun tun ARGS`, its own TUN) and per
#               --peer NAME='COMMAND' (any TUN program), each in the client namespace
#               with its own target address (203.0.113.10, .11, ... in the order given)
#               routed into its own device; a table each, against sockstun
# With --server the rows are SOCKS servers side by side in the proxy namespace
# (dante-server :1080, microsocks :1081, sockstun server :1082), each the upstream of a
# SOCKS-speaking client; `--rows ...,hop` adds hop.rs on :1083 relaying to the target
# with no protocol (the client speaks none to it either): the floor of any relay server;
# `hop-socks` adds hop.rs --socks on :1084, the least a SOCKS5 server can do (CONNECT and
# UDP ASSOCIATE to IPv4, blocking threads, no checks): the floor of any SOCKS5 server
# against the same client.
#
# Needs root. Installs nothing: says what is missing. Every process it starts and every
# namespace it creates is removed on exit, whatever happens. Traffic stays inside the
# namespaces. See docs/performance.md for what each figure means and what limits it.
#
# Usage: scripts/bench.sh [--server] [--quick] [--only S1,S2] [--rows R1,R2]
#                         [--upstream auto|dante|sockstun|microsocks] [--secs N]
#                         [--idle-secs N] [--rounds N] [--iperf3] [--perf DIR] [--sockstun-args "ARGS"]
#                         [--variant NAME='ARGS']... [--peer NAME='COMMAND']...
#                         [--wan-ms N] [--wan-conns N]
#                         [--save FILE] [--compare FILE] [--no-build] [--keep-logs]
#   scenarios: tcp-up-1 tcp-up-10 tcp-down-1 tcp-down-10 rr crr udp wan udp-rtt udp-max dns
#              memory idle hold
#   (cpu is taken during tcp-up-1, and for the rows with a process of their own during the
#   other tcp-* runs and crr; idle is measured after start and again after the load.)
#   wan (TUN mode only): the client's link to the proxy goes through a delay line (delayline.rs,
#   two TAP devices, --wan-ms each way, default 10: 20 ms round trip; this kernel has no
#   netem) for this scenario only; --wan-conns connections (default 200) opened one at a
#   time per row, the rows taking turns in --rounds rounds: time from connect() to the
#   first byte of the answer, p50 and p99 over all of a row's connections. The delay line's
#   own lateness (p50/p99/max beyond the delay) is printed with it.
#   udp-rtt: UDP echo with one datagram in flight (--secs; rounds, median): p50, p99.
#   dns: DNS queries over UDP one at a time, each from a new source port as a stub
#   resolver asks, to port 53 of the row's target (netbench answers NODATA): p50, p99
#   (rounds, median). socks-only keeps one association for all of them. The sockstun
#   row answers A queries itself in its default --dns virtual mode: give
#   --sockstun-args "--dns udp" to send them through the proxy as peers do.
#   udp-max: the highest offered rate with under 1 % loss, searched (double from the udp
#   scenario's rate, then bisect; 2 s probes, 0.5 s with --quick).
#   --variant NAME='ARGS': a row `sockstun tun ARGS` beside the sockstun row (its own
#   device and target; --sockstun-args is not added), e.g. --variant warm='--warm 4', or
#   --variant q1='--queues 1' --variant q2='--queues 2' --only tcp-up-10,tcp-down-10,crr
#   (with two or more variants, each later one also gets a table against the first).
#   --peer NAME='COMMAND': a row for any TUN program, run with `sh -c` in the client
#   namespace after these placeholders are replaced: {dev} (the TUN device it must create
#   or open), {tun_addr} (198.18.X.1/24, its address; {tun_ip} without the prefix),
#   {proxy_host} {proxy_port} {proxy} (host:port) {proxy_url} (socks5://host:port),
#   {target} (the address routed into {dev}), {work} (this run's scratch directory),
#   and {conf:FILE}: FILE copied into {work} with the placeholders above replaced in it,
#   replaced by the copy's path (for programs that read a config file). Once {dev} exists
#   the bench sets it up, adds {tun_addr} if it has no IPv4 address, and routes {target}
#   into it. E.g. --peer hev='hev-socks5-tunnel {conf:/path/hev.yml}'.
#   --rounds N: tcp-up-1, tcp-down-1 (the issue's targets), rr and crr run N rounds
#   (default 3), the rows taking turns in each round (rr and crr after a 1 s warm-up of
#   each), and report each row's median: one slow spell of the machine or the upstream
#   (dante's crr moves by 2-4x between runs) then lands in one round of one row, not in
#   the ratio.
#   --quick: 1 s runs, 1 round, 200 held connections, 3 s idle, 20 wan connections a row:
#   a smoke run of the whole pipeline in about a minute.
#   --iperf3: also tcp-up-1/tcp-down-1 with iperf3 on the direct, sockstun and redsocks rows
#   (iperf3 cannot speak SOCKS, so socks-only has no iperf3 figure).
#   --perf DIR: record a CPU profile of sockstun (perf record, cpu-clock, DWARF call graphs)
#   during tcp-up-1, tcp-down-1, rr, crr and udp into DIR/perf-SCENARIO.data (read with
#   `perf report -i`), and its syscall and context-switch counts into DIR/stat-SCENARIO.txt.
#   hold runs twice through sockstun (in one process life), with its RSS once the
#   connections are closed and it has settled (back to its descriptors, a quiet second).
#   --sockstun-args "ARGS": extra options for `sockstun tun` (e.g. "--mtu 65000"), for A/B runs.
#   --save FILE: write every figure to FILE; --compare FILE: also print this run's sockstun
#   column against a saved run (figures and ratios to socks-only, before and now).
#   Binaries are built and taken from $CARGO_TARGET_DIR (default target/).
#   Exit status: 0 when every measurement ran, 1 when one failed, 2 when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=tun
QUICK=0
ONLY=""
ROWS=""
UPSTREAM=auto
SECS=5
ROUNDS=""
IDLE_SECS=20
BUILD=1
KEEP_LOGS=0
IPERF=0
PERF_DIR=""
TUN_ARGS=""
SAVE=""
COMPARE=""
UDP_PPS=50000
MEM_CONNS=1000
# Seconds the memory scenario's connections stay idle before the second RSS sample
# (sockstun gives an idle flow's buffer pages back after 1-2 s).
IDLE_HOLD=3
HOLD_CONNS=10000
WAN_MS=10
WAN_CONNS=200
UDPMAX_SECS=2
UDPMAX_PROBES=8
VARIANTS=()
PEERS=()

usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --server) MODE=server ;;
    --quick) QUICK=1 ;;
    --only) ONLY="$2"; shift ;;
    --rows) ROWS="$2"; shift ;;
    --upstream) UPSTREAM="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --idle-secs) IDLE_SECS="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --iperf3) IPERF=1 ;;
    --perf) PERF_DIR=$(realpath -m "$2"); shift ;;
    --sockstun-args) TUN_ARGS="$2"; shift ;;
    --variant) VARIANTS+=("$2"); shift ;;
    --peer) PEERS+=("$2"); shift ;;
    --wan-ms) WAN_MS="$2"; shift ;;
    --wan-conns) WAN_CONNS="$2"; shift ;;
    --save) SAVE=$(realpath -m "$2"); shift ;;
    --compare) COMPARE=$(realpath -m "$2"); shift ;;
    --no-build) BUILD=0 ;;
    --keep-logs) KEEP_LOGS=1 ;;
    -h|--help) usage 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  SECS=1; IDLE_SECS=3; MEM_CONNS=200; HOLD_CONNS=500; UDP_PPS=20000; ROUNDS=${ROUNDS:-1}
  WAN_CONNS=20; UDPMAX_SECS=0.5; UDPMAX_PROBES=3
fi
ROUNDS=${ROUNDS:-3}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --rounds wants a positive number" >&2; exit 2; }
[[ "$WAN_CONNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --wan-conns wants a positive number" >&2; exit 2; }
[[ "$WAN_MS" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench.sh: --wan-ms wants a number of milliseconds" >&2; exit 2; }

# Extra TUN rows (--variant, --peer): each gets a device, a TUN address and a target
# address of its own, in the order given.
EXTRA=()
declare -A XKIND XSPEC XDEV XTARGET XTUN
for x in "${VARIANTS[@]/#/variant:}" "${PEERS[@]/#/peer:}"; do
  kind=${x%%:*}; x=${x#*:}; name=${x%%=*}
  if [[ "$x" != *=* ]] || ! [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]]; then
    echo "bench.sh: --$kind wants NAME='...' (NAME: letters, digits, . _ -)" >&2; exit 2
  fi
  case "$name" in direct|socks-only|sockstun|redsocks|delayline|hop)
    echo "bench.sh: --$kind $name: that name is a built-in row" >&2; exit 2 ;; esac
  [ -z "${XKIND[$name]:-}" ] || { echo "bench.sh: row $name given twice" >&2; exit 2; }
  i=${#EXTRA[@]}
  [ "$i" -lt 40 ] || { echo "bench.sh: at most 40 --variant/--peer rows" >&2; exit 2; }
  EXTRA+=("$name"); XKIND[$name]=$kind; XSPEC[$name]=${x#*=}
  XDEV[$name]=$([ "$kind" = variant ] && echo bsv || echo bsp)$i
  XTARGET[$name]=203.0.113.$((10 + i)); XTUN[$name]=198.18.$((10 + i)).1/24
done

# ------------------------------------------------------------------ requirements
[ "$(id -u)" = 0 ] || { echo "bench.sh: needs root (network namespaces, TUN)" >&2; exit 2; }
missing=()
for t in ip ss ps timeout awk sed cargo; do command -v "$t" >/dev/null || missing+=("$t"); done
[ -c /dev/net/tun ] || missing+=("/dev/net/tun")
[ "$IPERF" = 0 ] || command -v iperf3 >/dev/null || missing+=("iperf3 (for --iperf3)")
[ -z "$PERF_DIR" ] || command -v perf >/dev/null || missing+=("perf (for --perf; Debian: linux-perf)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench.sh: missing: ${missing[*]} (install them; this script installs nothing)" >&2
  exit 2
fi
have() { command -v "$1" >/dev/null; }
have danted || echo "note: danted (Debian: dante-server) not found: no dante upstream" >&2
have microsocks || echo "note: microsocks not found: no microsocks upstream" >&2
if [ "$MODE" = tun ] && [ -z "$ROWS" ] && ! { have redsocks && have nft; }; then
  echo "note: redsocks or nft (Debian: redsocks, nftables) not found: no redsocks row" >&2
fi

if [ "$BUILD" = 1 ]; then
  cargo build --release --locked --bins --example netbench --example delayline --example hop >&2
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SOCKSTUN=$TARGET_DIR/release/sockstun
NB=$TARGET_DIR/release/examples/netbench
HOP=$TARGET_DIR/release/examples/hop
DL=$TARGET_DIR/release/examples/delayline
for b in "$SOCKSTUN" "$NB" "$DL"; do
  [ -x "$b" ] || { echo "bench.sh: $b not built (run without --no-build)" >&2; exit 2; }
done

# Holding 10,000 connections through a proxy needs ~2 descriptors each, per process.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------------------ namespaces
TAG="bn$$"
NSC="${TAG}c"; NSP="${TAG}p"; NST="${TAG}t"
# The redsocks row's client, made only for that row: its nftables redirect turns on
# connection tracking in its namespace, which the other rows must not pay for.
NSR="${TAG}r"
NBNS=$NSC  # where the next netbench client runs (nb, hold_conns, iperf3)
WORK=$(mktemp -d "/tmp/sockstun-bench.XXXXXX")
PIDS=()
cleanup() {
  set +e
  [ "$KEEP_LOGS" = 1 ] && echo "logs kept in $WORK" >&2
  # From here on bash would only report the jobs it reaps as "Killed".
  exec 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for ns in "$NSC" "$NSP" "$NST" "$NSR"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  for ns in "$NSC" "$NSP" "$NST" "$NSR"; do ip netns del "$ns" 2>/dev/null; done
  [ "$KEEP_LOGS" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
for ns in "$NSC" "$NSP" "$NST"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  # Many short connections: widen the ports and let TIME-WAIT ports be reused.
  inns "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1
done
ip link add c0 netns "$NSC" type veth peer name p0 netns "$NSP"
ip link add p1 netns "$NSP" type veth peer name t0 netns "$NST"
ip -n "$NSC" addr add 198.51.100.2/24 dev c0
ip -n "$NSP" addr add 198.51.100.1/24 dev p0
ip -n "$NSP" addr add 203.0.113.1/24 dev p1
ip -n "$NST" addr add 203.0.113.2/24 dev t0
ip -n "$NST" addr add 203.0.113.3/24 dev t0
for x in "$NSC c0" "$NSP p0" "$NSP p1" "$NST t0"; do ip -n "${x% *}" link set "${x#* }" up; done
inns "$NSP" sysctl -qw net.ipv4.ip_forward=0

PROXY_IP=198.51.100.1

# ------------------------------------------------------------------ delay line (wan)
# delay_link KEY NS CLIENT_IP: a second link between namespace NS (whose address on
# its veth to the proxy is CLIENT_IP) and the proxy namespace, through the delay line:
# delayline runs in the proxy namespace, creates two TAP devices there (wp<KEY>, wc<KEY>)
# and the client one moves to NS. The link carries nothing until wan_on routes the
# client's traffic to the proxy (and the proxy's back) over it. Neighbours are static, so
# no ARP crosses the delay. KEY: one character; the delay line's PID in DLPID[KEY].
declare -A DLPID DLNS DLIP
DLKEYS=()
delay_link() {
  local k=$1 ns=$2 ip=$3 n=${#DLKEYS[@]}
  start_bg "$NSP" "$WORK/delayline-$k.log" "$DL" --dev "wp$k" --dev "wc$k" --delay-ms "$WAN_MS" --rt
  DLPID[$k]=$BGPID; DLNS[$k]=$ns; DLIP[$k]=$ip; DLKEYS+=("$k")
  for _ in $(seq 100); do grep -q '^READY' "$WORK/delayline-$k.log" && break; sleep 0.1; done
  grep -q '^READY' "$WORK/delayline-$k.log" ||
    { say "delay line did not start: $(tail -2 "$WORK/delayline-$k.log")"; exit 1; }
  ip -n "$NSP" link set "wc$k" netns "$ns"
  ip -n "$ns" link set "wc$k" address "02:00:00:00:$((10 + n)):01" up
  ip -n "$NSP" link set "wp$k" address "02:00:00:00:$((10 + n)):02" up
  ip -n "$ns" neigh replace "$PROXY_IP" lladdr "02:00:00:00:$((10 + n)):02" dev "wc$k" nud permanent
  ip -n "$NSP" neigh replace "$ip" lladdr "02:00:00:00:$((10 + n)):01" dev "wp$k" nud permanent
}
# wan_on / wan_off: the client namespaces reach the proxy (and, for the direct row, the
# target through it) over the delay line, and the proxy answers over it; then back.
wan_on() {
  local k ns ip
  for k in "${DLKEYS[@]}"; do
    ns=${DLNS[$k]}; ip=${DLIP[$k]}
    ip -n "$ns" route replace "$PROXY_IP/32" dev "wc$k" src "$ip"
    [ "$ns" = "$NSC" ] && [ -n "${ARGS[direct]:-}" ] &&
      ip -n "$ns" route replace 203.0.113.2/32 via "$PROXY_IP" dev "wc$k" onlink src "$ip"
    ip -n "$NSP" route replace "$ip/32" dev "wp$k"
  done
}
wan_off() {
  local k ns ip
  for k in "${DLKEYS[@]}"; do
    ns=${DLNS[$k]}; ip=${DLIP[$k]}
    if [ "$ns" = "$NSC" ]; then
      ip -n "$ns" route del "$PROXY_IP/32" dev "wc$k"
      [ -n "${ARGS[direct]:-}" ] && ip -n "$ns" route replace 203.0.113.2/32 via "$PROXY_IP" dev c0
      ip -n "$NSP" route del "$ip/32" dev "wp$k"
    else # the redsocks client: a /32 on its own veth, both ways
      ip -n "$ns" route replace "$PROXY_IP/32" dev r0
      ip -n "$NSP" route replace "$ip/32" dev p2
    fi
  done
}
# delay_stats: ask every delay line for its counters since the last call (SIGUSR1).
delay_stats() {
  local k log n
  for k in "${DLKEYS[@]}"; do
    log="$WORK/delayline-$k.log"; n=$(grep -c '^STATS' "$log" || true)
    kill -USR1 "${DLPID[$k]}" 2>/dev/null || continue
    for _ in $(seq 50); do [ "$(grep -c '^STATS' "$log" || true)" -gt "$n" ] && break; sleep 0.1; done
    grep '^STATS' "$log" | tail -1
  done
}

# start_bg NS LOG CMD...: start a process in a namespace; its PID in $BGPID.
# (`ip netns exec` execs the command, so the PID is the command's own.)
start_bg() {
  local ns=$1 log=$2; shift 2
  ip netns exec "$ns" "$@" >"$log" 2>&1 </dev/null &
  BGPID=$!
  PIDS+=("$BGPID")
}
stop_bg() {
  local p=$1
  kill "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
# wait_listen NS PORT: until something listens on TCP PORT (deadline 10 s).
wait_listen() {
  for _ in $(seq 100); do
    [ -n "$(inns "$1" ss -Hltn "sport = :$2" 2>/dev/null)" ] && return 0
    sleep 0.1
  done
  return 1
}

ip -n "$NST" addr add 203.0.113.4/24 dev t0
XLISTEN=()
for x in "${EXTRA[@]}"; do
  ip -n "$NST" addr add "${XTARGET[$x]}/24" dev t0
  XLISTEN+=(--listen "${XTARGET[$x]}:9000")
done
start_bg "$NST" "$WORK/target.log" "$NB" server --listen 203.0.113.2:9000 --listen 203.0.113.3:9000 \
  --listen 203.0.113.4:9000 "${XLISTEN[@]}"
wait_listen "$NST" 9000 || { echo "netbench server did not start" >&2; cat "$WORK/target.log" >&2; exit 1; }
if [ "$IPERF" = 1 ]; then
  start_bg "$NST" "$WORK/iperf3.log" iperf3 -s -p 5201
  wait_listen "$NST" 5201 || { echo "iperf3 server did not start" >&2; exit 1; }
fi

# ------------------------------------------------------------------ upstreams
# start_upstream NAME PORT: start a SOCKS5 server on $PROXY_IP:PORT; its PID in $BGPID.
start_upstream() {
  local name=$1 port=$2
  case "$name" in
    dante)
      cat >"$WORK/danted-$port.conf" <<EOF
logoutput: $WORK/danted-$port.log
internal: $PROXY_IP port = $port
external: 203.0.113.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }
socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect udpassociate udpreply bind bindreply }
EOF
      start_bg "$NSP" "$WORK/up-dante.log" danted -f "$WORK/danted-$port.conf" ;;
    microsocks) start_bg "$NSP" "$WORK/up-microsocks.log" microsocks -i "$PROXY_IP" -p "$port" ;;
    sockstun) start_bg "$NSP" "$WORK/up-sockstun.log" "$SOCKSTUN" --log warn server \
        --listen "$PROXY_IP:$port" --allow-client 198.51.100.0/24 --max-clients 100000 ;;
    *) echo "unknown upstream $name" >&2; return 1 ;;
  esac
  wait_listen "$NSP" "$port" || { stop_bg "$BGPID"; return 1; }
}
# The process and its children (dante forks workers).
tree() { local p c; for p in "$@"; do echo "$p"; for c in $(ps -o pid= --ppid "$p"); do tree "$c"; done; done; }
upstream_available() {
  case "$1" in
    dante) have danted ;;
    microsocks) have microsocks ;;
    sockstun)
      if start_upstream sockstun 1099 2>/dev/null; then stop_bg "$BGPID"; return 0; fi
      return 1 ;;
  esac
}

# ------------------------------------------------------------------ measurement helpers
declare -A R      # R[row|key] = figure
declare -A ARGS   # netbench arguments of each row
declare -A CPUW   # pid whose CPU (with its children) a row charges, if any
declare -A CLIENTNS  # the client namespace of a row, when not $NSC
ERRORS=0
kv() { sed -n "s/.*[ ]$2=\([^ ]*\).*/\1/p" <<<"$1" | head -1; }
# nb ARGS...: run a netbench client in the client namespace, bounded in time; prints
# its RESULT line (nothing when it failed; its errors go to netbench.err).
nb() {
  local out
  out=$(timeout $((SECS * 3 + 60)) ip netns exec "$NBNS" "$NB" "$@" 2>>"$WORK/netbench.err") || true
  grep '^RESULT' <<<"$out" | head -1 || true
}
ticks() { # user+system CPU ticks of PID and its children, living and reaped
  local p s=0
  for p in $(tree "$1"); do
    s=$((s + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}' || echo 0)))
  done
  echo "$s"
}
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; } # the machine's busy ticks
uticks() { # the user-space part of ticks
  local p s=0
  for p in $(tree "$1"); do
    s=$((s + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $14}' || echo 0)))
  done
  echo "$s"
}
# cpu_per ROW KEY N T0 U0: CPU µs of ROW's own process per unit of work (N units since
# ticks T0 and user ticks U0) into KEY, and its user-space part into KEY-user: with
# one transaction in flight, what the process's user space adds to each round trip.
cpu_per() {
  local hz t1 u1
  hz=$(getconf CLK_TCK); t1=$(ticks "${CPUW[$1]}"); u1=$(uticks "${CPUW[$1]}")
  R["$1|$2"]=$(awk -v t=$((t1 - $4)) -v hz="$hz" -v n="$3" 'BEGIN {printf "%.1f", (t / hz) * 1e6 / n}')
  R["$1|$2-user"]=$(awk -v t=$((u1 - $5)) -v hz="$hz" -v n="$3" 'BEGIN {printf "%.1f", (t / hz) * 1e6 / n}')
}
# Memory of PID in kB: VmRSS for one process; for a process with children (dante
# forks) the sum of their PSS, so pages they share are counted once.
rss_kb() {
  local ps p s=0
  ps=$(tree "$1")
  if [ "$(wc -w <<<"$ps")" = 1 ]; then awk '/^VmRSS/ {print $2}' "/proc/$1/status"; return; fi
  for p in $ps; do s=$((s + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0))); done
  echo "$s"
}
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
wakeups() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
fail() { R["$1|$2"]=ERR; ERRORS=$((ERRORS + 1)); say "  $1 $2: FAILED (last netbench error: $(tail -1 "$WORK/netbench.err" 2>/dev/null))"; }
say() { echo "$*" >&2; }

# perf_start ROW SCENARIO / perf_stop: with --perf, profile sockstun during one
# measurement (perf record, cpu-clock, DWARF call graphs) and count its system
# calls and context switches against the packets the TUN carried.
PERFPIDS=()
PERF_S=""
PERF_DEV0=""
perf_start() {
  PERFPIDS=()
  [ -n "$PERF_DIR" ] && [ "$1" = sockstun ] && [ "${ROUND:-1}" = 1 ] || return 0
  case "$2" in tcp-up-1|tcp-down-1|rr|crr|udp|udp-rtt) ;; *) return 0 ;; esac
  mkdir -p "$PERF_DIR"
  PERF_S=$2
  perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "${CPUW[$1]}" \
    -o "$PERF_DIR/perf-$2.data" >"$WORK/perf-$2.log" 2>&1 &
  PERFPIDS+=($!)
  perf stat -x, -o "$PERF_DIR/stat-$2.txt" -p "${CPUW[$1]}" -e context-switches \
    -e 'syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_readv,syscalls:sys_enter_writev' \
    -e 'syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait' \
    -e 'syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_connect' \
    -e 'syscalls:sys_enter_close,syscalls:sys_enter_mmap,syscalls:sys_enter_munmap' \
    -e 'syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvmsg,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_recvmmsg' \
    >/dev/null 2>&1 &
  PERFPIDS+=($!)
  PERF_DEV0=$(inns "$NSC" cat /proc/net/dev | awk '/bst0:/ {print $3, $11}')
  sleep 0.5
}
perf_stop() {
  [ ${#PERFPIDS[@]} -gt 0 ] || return 0
  kill -INT "${PERFPIDS[@]}" 2>/dev/null; wait "${PERFPIDS[@]}" 2>/dev/null || true
  local dev1; dev1=$(inns "$NSC" cat /proc/net/dev | awk '/bst0:/ {print $3, $11}')
  # The kernel's view of bst0: its rx is what sockstun wrote, its tx what sockstun read.
  awk -v a="$PERF_DEV0" -v b="$dev1" 'BEGIN {split(a, x, " "); split(b, y, " ");
    printf "tun packets: sockstun read %d, wrote %d\n", y[2] - x[2], y[1] - x[1]}' >>"$PERF_DIR/stat-$PERF_S.txt"
  say "  perf: $PERF_DIR/perf-$PERF_S.data, counts in $PERF_DIR/stat-$PERF_S.txt"
  PERFPIDS=()
}

# scenario ROW NAME: one measurement of one row.
scenario() {
  local row=$1 s=$2 r t0 t1 u0 m0 dir n k
  NBNS=${CLIENTNS[$row]:-$NSC}
  # shellcheck disable=SC2086
  set -- ${ARGS[$row]}
  case "$s" in
    tcp-*)
      dir=${s#tcp-}; n=${dir#*-}; dir=${dir%-*}
      [ -n "${CPUW[$row]:-}" ] && t0=$(ticks "${CPUW[$row]}")
      perf_start "$row" "$s"
      r=$(nb "$dir" "$@" --secs "$SECS" --streams "$n")
      perf_stop
      [ -n "$r" ] || { fail "$row" "$s"; return; }
      R["$row|$s"]=$(kv "$r" gbps)
      # CPU per 10^9 bytes of the row's own process: "cpu" for tcp-up-1 (the
      # historical key), cpu-SCENARIO for the others.
      k=cpu; [ "$s" = tcp-up-1 ] || k=cpu-$s
      if [ -n "${CPUW[$row]:-}" ]; then
        t1=$(ticks "${CPUW[$row]}")
        R["$row|$k"]=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v b="$(kv "$r" bytes)" \
          'BEGIN {printf "%.2f", (t / hz) / (b / 1e9)}')
      fi
      say "  $row $s: ${R[$row|$s]} Gbit/s${R[$row|$k]:+ (CPU ${R[$row|$k]} s/GB)}" ;;
    iperf3-*)
      [[ "$*" == *--socks* ]] && return
      dir=${s#iperf3-}; dir=${dir%-1}
      local rev=(); [ "$dir" = down ] && rev=(-R)
      r=$(timeout $((SECS + 30)) ip netns exec "$NBNS" iperf3 -c "${2%:*}" -p 5201 -f g -t "$SECS" \
        "${rev[@]}" 2>>"$WORK/netbench.err" |
        awk '/receiver/ {for (i = 1; i <= NF; i++) if ($i == "Gbits/sec") print $(i - 1)}') || true
      [ -n "$r" ] || { fail "$row" "$s"; return; }
      R["$row|$s"]=$r; say "  $row $s: $r Gbit/s" ;;
    udp-rtt)
      [ "$row" = redsocks ] && return
      [ -n "${CPUW[$row]:-}" ] && { t0=$(ticks "${CPUW[$row]}"); u0=$(uticks "${CPUW[$row]}"); }
      perf_start "$row" udp-rtt
      r=$(nb udp-rtt "$@" --secs "$SECS")
      perf_stop
      if [ -n "$r" ]; then
        [ -n "${CPUW[$row]:-}" ] && cpu_per "$row" udp-rtt-cpu "$(kv "$r" n)" "$t0" "$u0"
        R["$row|udp-rtt"]=$(kv "$r" p50_us); R["$row|udp-rtt-p99"]=$(kv "$r" p99_us)
        [ "$(kv "$r" lost)" = 0 ] || R["$row|udp-rtt-p99"]="${R[$row|udp-rtt-p99]}($(kv "$r" lost)lost)"
        say "  $row udp-rtt: p50 ${R[$row|udp-rtt]} us p99 ${R[$row|udp-rtt-p99]} us ($(kv "$r" n) echoes)"
      elif tail -1 "$WORK/netbench.err" | grep -q 'socks reply 0x07'; then
        R["$row|udp-rtt"]=unsupported; say "  $row udp-rtt: the upstream does not support UDP ASSOCIATE"
      else fail "$row" udp-rtt; fi ;;
    udp-max)
      [ "$row" = redsocks ] && return
      udp_max "$row" "$@" ;;
    dns)
      [ "$row" = redsocks ] && return
      r=$(nb dns "$@" --secs "$SECS")
      # A row that answered nothing in the round prints n=0 and no figure.
      if [ -n "$r" ] && [ "$(kv "$r" n)" != 0 ]; then
        R["$row|dns"]=$(kv "$r" p50_us); R["$row|dns-p99"]=$(kv "$r" p99_us)
        [ "$(kv "$r" lost)" = 0 ] || R["$row|dns-p99"]="${R[$row|dns-p99]}($(kv "$r" lost)lost)"
        say "  $row dns: p50 ${R[$row|dns]} us p99 ${R[$row|dns-p99]} us ($(kv "$r" n) queries)"
      else fail "$row" dns; fi ;;
    rr)
      [ -n "${CPUW[$row]:-}" ] && { t0=$(ticks "${CPUW[$row]}"); u0=$(uticks "${CPUW[$row]}"); }
      perf_start "$row" rr
      r=$(nb rr "$@" --secs "$SECS")
      perf_stop
      [ -n "$r" ] || { fail "$row" rr; return; }
      [ -n "${CPUW[$row]:-}" ] && cpu_per "$row" rr-cpu "$(kv "$r" n)" "$t0" "$u0"
      R["$row|rr"]=$(kv "$r" tps); R["$row|rr-p50"]=$(kv "$r" p50_us); R["$row|rr-p99"]=$(kv "$r" p99_us)
      say "  $row rr: ${R[$row|rr]} tps p50 ${R[$row|rr-p50]} us p99 ${R[$row|rr-p99]} us" ;;
    crr)
      [ -n "${CPUW[$row]:-}" ] && { t0=$(ticks "${CPUW[$row]}"); u0=$(uticks "${CPUW[$row]}"); }
      m0=$(busy)
      perf_start "$row" crr
      r=$(nb crr "$@" --secs "$SECS")
      perf_stop
      if [ -z "$r" ] || [ "$(kv "$r" ok)" = 0 ]; then fail "$row" crr; return; fi
      R["$row|crr"]=$(kv "$r" cps)
      # The whole machine's CPU per connection: crr keeps both cores busy, so a
      # row's rate is about 2 cores over this, and what a row's own process
      # could save at most shows against it.
      R["$row|crr-cpu-all"]=$(awk -v t=$(( $(busy) - m0 )) -v hz="$(getconf CLK_TCK)" -v n="$(kv "$r" ok)" \
        'BEGIN {printf "%.0f", (t / hz) * 1e6 / n}')
      [ -n "${CPUW[$row]:-}" ] && cpu_per "$row" crr-cpu "$(kv "$r" ok)" "$t0" "$u0"
      if [ "$(kv "$r" errors)" != 0 ]; then
        R["$row|crr"]="${R[$row|crr]}($(kv "$r" errors)err)"; ERRORS=$((ERRORS + 1))
      fi
      say "  $row crr: ${R[$row|crr]} /s" ;;
    udp)
      # redsocks relays TCP only (UDP would need its redudp part and TPROXY).
      [ "$row" = redsocks ] && return
      [ -n "${CPUW[$row]:-}" ] && { t0=$(ticks "${CPUW[$row]}"); u0=$(uticks "${CPUW[$row]}"); }
      perf_start "$row" udp
      r=$(nb udp "$@" --secs "$SECS" --pps "$UDP_PPS")
      perf_stop
      if [ -n "$r" ]; then
        # Per datagram answered: each crossed the row's process twice.
        [ -n "${CPUW[$row]:-}" ] && cpu_per "$row" udp-cpu \
          "$(awk -v p="$(kv "$r" answered_pps)" -v s="$SECS" 'BEGIN {printf "%d", p * s + 1}')" "$t0" "$u0"
        R["$row|udp-offered"]=$(kv "$r" offered_pps)
        R["$row|udp"]=$(kv "$r" answered_pps); R["$row|udp-loss"]=$(kv "$r" loss_pct)
        say "  $row udp: offered ${R[$row|udp-offered]} answered ${R[$row|udp]} pps, loss ${R[$row|udp-loss]} %"
      elif tail -1 "$WORK/netbench.err" | grep -q 'socks reply 0x07'; then
        R["$row|udp"]=unsupported; say "  $row udp: the upstream does not support UDP ASSOCIATE"
      else fail "$row" udp; fi ;;
  esac
}

# udp_max ROW ARGS...: the highest offered rate with under 1 % loss. From the udp
# scenario's rate, double while a probe passes, then bisect between the best passing
# and the lowest failing rate until they are within 15 % (UDPMAX_PROBES probes at most,
# UDPMAX_SECS each, replies counted 300 ms past the end). The figure is the rate the
# probe really offered (netbench's pacing may fall short of the asked one: then the
# sender is the limit, said in the log).
udp_max() {
  local row=$1 rate=$UDP_PPS lo=0 hi=0 best="" bestloss="" r off loss probes=0 short=""
  shift
  while [ "$probes" -lt "$UDPMAX_PROBES" ]; do
    probes=$((probes + 1))
    r=$(nb udp "$@" --secs "$UDPMAX_SECS" --pps "$rate" --grace-ms 300)
    if [ -z "$r" ]; then
      if tail -1 "$WORK/netbench.err" | grep -q 'socks reply 0x07'; then
        R["$row|udp-max"]=unsupported; say "  $row udp-max: the upstream does not support UDP ASSOCIATE"
      else fail "$row" udp-max; fi
      return
    fi
    off=$(kv "$r" offered_pps); loss=$(kv "$r" loss_pct)
    say "  $row udp-max probe $probes: asked $rate offered $off pps, loss $loss %"
    if awk -v l="$loss" 'BEGIN {exit !(l < 1)}'; then
      lo=$rate; best=$off; bestloss=$loss
      awk -v o="$off" -v a="$rate" 'BEGIN {exit !(o < 0.9 * a)}' && { short=1; break; }
    else
      hi=$rate
    fi
    if [ "$hi" = 0 ]; then rate=$((rate * 2))
    elif [ "$lo" = 0 ]; then rate=$((rate / 4)); [ "$rate" -ge 100 ] || break
    else
      awk -v a="$lo" -v b="$hi" 'BEGIN {exit !(b < 1.15 * a)}' && break
      rate=$(( (lo + hi) / 2 ))
    fi
  done
  if [ -z "$best" ]; then R["$row|udp-max"]="<$rate"; say "  $row udp-max: no probe under 1 % loss"; return; fi
  R["$row|udp-max"]=$best; R["$row|udp-max-loss"]=$bestloss
  say "  $row udp-max: $best pps at $bestloss % loss ($probes probes${short:+; the sender could not offer more: netbench is the limit})"
}

# pct P: the P-quantile (0..1) of the numbers on stdin, as netbench takes it.
pct() { sort -n | awk -v p="$1" '{a[NR] = $1} END {if (NR) {i = int((NR - 1) * p + 0.5) + 1; print a[i]}}'; }

# wan ROW...: connections opened one at a time over the delayed link, the rows taking
# turns in $ROUNDS rounds of WAN_CONNS/ROUNDS connections each; p50/p99 in ms of the
# time from connect() to the first byte of the answer, over all of a row's samples.
wan() {
  local row round per r samp v
  local -A acc=()
  per=$(( (WAN_CONNS + ROUNDS - 1) / ROUNDS ))
  [ ${#DLKEYS[@]} -gt 0 ] || { say "  wan: no delay line"; ERRORS=$((ERRORS + 1)); return; }
  delay_stats >/dev/null
  wan_on
  sleep 0.2
  for round in $(seq "$ROUNDS"); do
    [ "$ROUNDS" = 1 ] || say "  wan round $round/$ROUNDS"
    for row in "$@"; do
      NBNS=${CLIENTNS[$row]:-$NSC}
      # shellcheck disable=SC2086
      r=$(nb fb ${ARGS[$row]} --count "$per" --secs $((per * 2 + 10)))
      samp=$(kv "$r" samples_us)
      if [ -z "$samp" ]; then fail "$row" wan; continue; fi
      [ "$(kv "$r" errors)" = 0 ] || { ERRORS=$((ERRORS + 1)); acc["$row|err"]+="$(kv "$r" errors) "; }
      acc[$row]+="${samp//,/ } "
    done
  done
  wan_off
  for row in "$@"; do
    [ -n "${acc[$row]:-}" ] || continue
    R["$row|wan-p50"]=$(tr ' ' '\n' <<<"${acc[$row]}" | grep -v '^$' | pct 0.50 | awk '{printf "%.1f", $1 / 1000}')
    R["$row|wan-p99"]=$(tr ' ' '\n' <<<"${acc[$row]}" | grep -v '^$' | pct 0.99 | awk '{printf "%.1f", $1 / 1000}')
    v=$(wc -w <<<"${acc[$row]}")
    [ -z "${acc[$row|err]:-}" ] || R["$row|wan-p99"]="${R[$row|wan-p99]}(errors)"
    say "  $row wan: first byte p50 ${R[$row|wan-p50]} ms p99 ${R[$row|wan-p99]} ms ($v connections)"
  done
  while read -r v; do
    [ -n "$v" ] || continue
    R[delayline|late-p50]=$(kv "$v" late_p50_us); R[delayline|late-p99]=$(kv "$v" late_p99_us)
    R[delayline|late-max]=$(kv "$v" late_max_us)
    say "  delay line: ${WAN_MS} ms each way; $(kv "$v" frames_ab) frames to the client, $(kv "$v" frames_ba) to the proxy, $(kv "$v" write_errors) write errors; released late by p50 $(kv "$v" late_p50_us) us, p99 $(kv "$v" late_p99_us) us, max $(kv "$v" late_max_us) us"
    DLSTATS+="${DLSTATS:+; }$(kv "$v" frames_ab)+$(kv "$v" frames_ba) frames, late p50 $(kv "$v" late_p50_us) us p99 $(kv "$v" late_p99_us) us max $(kv "$v" late_max_us) us, $(kv "$v" write_errors) write errors"
  done < <(delay_stats)
  # Frames the kernel dropped because the delay line did not read them in time.
  for v in "${DLKEYS[@]}"; do
    r=$(( $(inns "${DLNS[$v]}" cat "/sys/class/net/wc$v/statistics/tx_dropped") +
      $(inns "$NSP" cat "/sys/class/net/wp$v/statistics/tx_dropped") ))
    R[delayline|dropped]=$(( ${R[delayline|dropped]:-0} + r ))
  done
  say "  delay line: frames dropped by the TAP devices (queue full): ${R[delayline|dropped]}"
  DLSTATS+=", ${R[delayline|dropped]} dropped at the TAP queues"
}
DLSTATS=""

# rounds NAME ROW...: one scenario in $ROUNDS rounds, the rows taking turns in each (rr
# and crr after an unmeasured 1 s warm-up of each row: dante forks its workers on
# demand); each figure is the median of its rounds, or the first failure.
rounds() {
  local s=$1 row k v round keys
  shift
  case "$s" in
    rr) keys="rr rr-p50 rr-p99 rr-cpu rr-cpu-user" ;; tcp-up-1) keys="tcp-up-1 cpu" ;; tcp-*) keys="$s cpu-$s" ;;
    crr) keys="crr crr-cpu crr-cpu-user crr-cpu-all" ;; udp-rtt) keys="udp-rtt udp-rtt-p99 udp-rtt-cpu udp-rtt-cpu-user" ;; dns) keys="dns dns-p99" ;;
    *) keys=$s ;;
  esac
  local -A acc=()
  if [ "$ROUNDS" -gt 1 ] && [[ "$s" == *rr ]]; then
    for row in "$@"; do
      NBNS=${CLIENTNS[$row]:-$NSC}
      # shellcheck disable=SC2086
      nb "$s" ${ARGS[$row]} --secs 1 >/dev/null
    done
  fi
  for round in $(seq "$ROUNDS"); do
    ROUND=$round
    [ "$ROUNDS" = 1 ] || say "  $s round $round/$ROUNDS"
    for row in "$@"; do
      # A failed round sets only the scenario's own key: clear the others so
      # they cannot repeat the previous round's figures.
      for k in $keys; do unset "R[$row|$k]"; done
      scenario "$row" "$s"
      for k in $keys; do [ -z "${R[$row|$k]+x}" ] || acc["$row|$k"]+="${R[$row|$k]} "; done
    done
  done
  ROUND=1
  for row in "$@"; do
    for k in $keys; do
      [ -n "${acc[$row|$k]:-}" ] || continue
      v=$(tr ' ' '\n' <<<"${acc[$row|$k]}" | grep -v -e '^$' -e '^[0-9.]*$' | head -1 || true)
      # An even count averages the middle two, printed with the inputs' decimals.
      [ -n "$v" ] || v=$(tr ' ' '\n' <<<"${acc[$row|$k]}" | grep -v '^$' | sort -g |
        awk '{a[NR] = $1; if (index($1, ".")) d = length($1) - index($1, ".")}
          END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.*f\n", d + 0, (a[NR / 2] + a[NR / 2 + 1]) / 2}' || true)
      R["$row|$k"]=$v
    done
    [ "$ROUNDS" = 1 ] || say "  $row $s median of $ROUNDS: ${R[$row|$s]} (rounds: ${acc[$row|$s]% })"
  done
}

# Open descriptors of PID and its children.
fds() { local p s=0; for p in $(tree "$1"); do s=$((s + $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l))); done; echo "$s"; }

# settle_closed PID FDS: wait (30 s at most) until PID is back to FDS open descriptors
# (every upstream connection of the closed flows is gone) and then stays quiet for a
# whole second (no wake-up: the flows are out of the table and the once-a-second
# sweep that gives their memory back has run and disarmed itself). Prints the seconds.
settle_closed() {
  local pid=$1 base=$2 t0 w0 w1
  t0=$(date +%s)
  while [ $(($(date +%s) - t0)) -lt 30 ]; do
    if [ "$(fds "$pid")" -le "$base" ]; then
      w0=$(wakeups "$pid"); sleep 1; w1=$(wakeups "$pid")
      [ $((w1 - w0)) = 0 ] && break
    else
      sleep 0.2
    fi
  done
  echo $(($(date +%s) - t0))
}

# hold_conns ROW N KEY: hold N connections through ROW; when the row has a process,
# sample its RSS while they are held: R[row|KEY-rss] (MB), R[row|KEY-per] (KB each),
# right after every connection was proven end to end, and for KEY mem again after
# they have all been idle IDLE_HOLD seconds: R[row|mem-idle-rss], R[row|mem-idle-per].
# For KEY hold*, also once they are closed and the process has settled (settle_closed):
# R[row|KEY-closed-rss].
hold_conns() {
  local row=$1 n=$2 key=$3 who=${CPUW[$1]:-} log="$WORK/hold-$1-$3.out" before=0 after=0 hp r
  local idle_after="" secs=2 fd0=0 closed="" settled
  [ "$key" = mem ] && secs=$((IDLE_HOLD + 2))
  [ -n "$who" ] && before=$(rss_kb "$who") && fd0=$(fds "$who")
  NBNS=${CLIENTNS[$row]:-$NSC}
  # shellcheck disable=SC2086
  ip netns exec "$NBNS" timeout 180 "$NB" hold ${ARGS[$row]} --conns "$n" --workers 16 \
    --secs "$secs" >"$log" 2>>"$WORK/netbench.err" &
  hp=$!
  for _ in $(seq 1700); do
    grep -q '^ESTABLISHED' "$log" 2>/dev/null && break
    kill -0 "$hp" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$who" ] && after=$(rss_kb "$who")
  if [ -n "$who" ] && [ "$key" = mem ] && kill -0 "$hp" 2>/dev/null; then
    sleep "$IDLE_HOLD"
    idle_after=$(rss_kb "$who")
  fi
  wait "$hp" || true
  if [ "$MODE" = tun ] && [ -n "$who" ] && [[ "$key" == hold* ]] && kill -0 "$who" 2>/dev/null; then
    settled=$(settle_closed "$who" "$fd0")
    closed=$(rss_kb "$who")
    R["$row|$key-closed-rss"]=$(mb "$closed")
  fi
  r=$(grep '^RESULT' "$log" | head -1) || true
  if [ -z "$r" ]; then fail "$row" "$key"; return; fi
  R["$row|$key"]="$(kv "$r" alive_after_hold)/$n"
  if [ "$(kv "$r" errors)" != 0 ]; then
    R["$row|$key"]="${R[$row|$key]}($(kv "$r" errors)err)"; ERRORS=$((ERRORS + 1))
  fi
  if [ -n "$who" ]; then
    R["$row|$key-rss"]=$(mb "$after")
    R["$row|$key-per"]=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.1f", (a - b) * 1.024 / n}')
    if [ -n "$idle_after" ]; then
      R["$row|$key-idle-rss"]=$(mb "$idle_after")
      R["$row|$key-idle-per"]=$(awk -v a="$idle_after" -v b="$before" -v n="$n" 'BEGIN {printf "%.1f", (a - b) * 1.024 / n}')
    fi
  fi
  say "  $row hold $n: ${R[$row|$key]} alive; $(grep '^ESTABLISHED' "$log" | head -1)${who:+; RSS $(mb "$before") -> $(mb "$after") MB}${idle_after:+, $(mb "$idle_after") MB after ${IDLE_HOLD} s idle}${closed:+, $(mb "$closed") MB after close (settled in ${settled} s)}"
}

pick_upstream() {
  local cands=() u best="" bestv=0 r v
  if [ "$UPSTREAM" != auto ]; then echo "$UPSTREAM"; return; fi
  for u in sockstun dante microsocks; do
    # A one-process server needs two descriptors per held connection; dante forks.
    if want hold && [ "$u" != dante ] && [ "$(ulimit -n)" -lt $((2 * HOLD_CONNS + 200)) ]; then
      say "  upstream $u left out: open-files limit $(ulimit -n) is too low for $HOLD_CONNS held connections"
      continue
    fi
    upstream_available "$u" && cands+=("$u")
  done
  [ ${#cands[@]} -gt 0 ] || { echo none; return; }
  if [ ${#cands[@]} = 1 ]; then echo "${cands[0]}"; return; fi
  for u in "${cands[@]}"; do
    start_upstream "$u" 1098 || continue
    r=$(nb up --target 203.0.113.2:9000 --socks "$PROXY_IP:1098" --secs 2)
    stop_bg "$BGPID"
    for p in $(ip netns pids "$NSP"); do kill -9 "$p" 2>/dev/null || true; done
    v=$(kv "$r" gbps); v=${v:-0}
    say "  upstream probe $u: tcp-up-1 ${v} Gbit/s"
    if awk -v a="$v" -v b="$bestv" 'BEGIN {exit !(a > b)}'; then best=$u; bestv=$v; fi
  done
  echo "${best:-${cands[0]}}"
}

# ------------------------------------------------------------------ table
TABLE_KEYS="tcp-up-1;tcp-up-1 Gbit/s
tcp-up-10;tcp-up-10 Gbit/s
tcp-down-1;tcp-down-1 Gbit/s
tcp-down-10;tcp-down-10 Gbit/s
iperf3-up-1;iperf3 tcp-up-1 Gbit/s
iperf3-down-1;iperf3 tcp-down-1 Gbit/s
rr;rr transactions/s
rr-p50;rr p50 us
rr-p99;rr p99 us
crr;crr connections/s
udp-offered;udp offered pps
udp;udp answered pps
udp-loss;udp loss %
udp-cpu;CPU us per datagram echoed (udp)
udp-cpu-user;user CPU us per datagram echoed (udp)
wan-p50;wan first byte p50 ms
wan-p99;wan first byte p99 ms
udp-rtt;udp-rtt p50 us
udp-rtt-p99;udp-rtt p99 us
udp-max;udp-max pps (<1 % loss)
dns;dns query p50 us
dns-p99;dns query p99 us
cpu-tcp-up-10;CPU s per GB (tcp-up-10)
cpu-tcp-down-1;CPU s per GB (tcp-down-1)
cpu-tcp-down-10;CPU s per GB (tcp-down-10)
crr-cpu;CPU us per conn (crr)
crr-cpu-user;user CPU us per conn (crr)
crr-cpu-all;machine CPU us per conn (crr)
rr-cpu;CPU us per transaction (rr)
rr-cpu-user;user CPU us per transaction (rr)
udp-rtt-cpu;CPU us per echo (udp-rtt)
udp-rtt-cpu-user;user CPU us per echo (udp-rtt)
cpu;CPU s per GB (tcp-up-1)
rss-idle;RSS idle MB
mem-rss;RSS MEMN held MB
mem-per;KB per held connection
mem-idle-rss;RSS MEMN held, idle IH s MB
mem-idle-per;KB per held conn, idle IH s
idle;wake-ups in idle window
idle-after;wake-ups idle after load
rss-after;RSS idle after load MB
hold;HOLDN held, alive after
hold-rss;RSS HOLDN held MB
hold-closed-rss;RSS after close MB
hold2;HOLDN held (2nd), alive
hold2-rss;RSS HOLDN held (2nd) MB
hold2-closed-rss;RSS after close (2nd) MB"
fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else printf "-" }'; }
print_table() { # print_table ROW1 ROW2 ROW3: ratios are ROW3 to ROW1 and to ROW2
  local a=$1 b=$2 c=$3 key label va vb vc
  printf '| %-28s | %12s | %12s | %12s | %10s | %10s |\n' scenario "$a" "$b" "$c" "/$a" "/$b"
  printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------------" "-------------:" "-------------:" \
    "-------------:" "-----------:" "-----------:"
  while IFS=';' read -r key label; do
    local noratio=""; [[ "$key" == udp-loss || "$key" == hold || "$key" == hold2 ]] && noratio=1
    va=${R[$a|$key]:--}; vb=${R[$b|$key]:--}; vc=${R[$c|$key]:--}
    [ "$va$vb$vc" = "---" ] && continue
    label=${label/MEMN/$MEM_CONNS}; label=${label/HOLDN/$HOLD_CONNS}; label=${label/IH/$IDLE_HOLD}
    printf '| %-28s | %12s | %12s | %12s | %10s | %10s |\n' "$label" "$va" "$vb" "$vc" \
      "$([ -z "$noratio" ] && fmt_ratio "$vc" "$va" || echo -)" "$([ -z "$noratio" ] && fmt_ratio "$vc" "$vb" || echo -)"
  done <<<"$TABLE_KEYS"
}

TRAFFIC=(tcp-up-1 tcp-up-10 tcp-down-1 tcp-down-10)
[ "$IPERF" = 1 ] && TRAFFIC+=(iperf3-up-1 iperf3-down-1)
TRAFFIC+=(rr crr udp wan udp-rtt udp-max dns)

# ------------------------------------------------------------------ TUN mode
# subst NAME TEXT: TEXT with the --peer placeholders of row NAME replaced.
subst() {
  local x=$1 t=$2
  t=${t//\{dev\}/${XDEV[$x]}}; t=${t//\{tun_addr\}/${XTUN[$x]}}; t=${t//\{tun_ip\}/${XTUN[$x]%/*}}
  t=${t//\{proxy_host\}/$PROXY_IP}; t=${t//\{proxy_port\}/1080}; t=${t//\{proxy\}/$PROXY_IP:1080}
  t=${t//\{proxy_url\}/socks5://$PROXY_IP:1080}; t=${t//\{target\}/${XTARGET[$x]}}; t=${t//\{work\}/$WORK}
  printf '%s' "$t"
}
# start_extra NAME: start a --variant or --peer row in the client namespace, wait for
# its device, route its target address into it.
start_extra() {
  local x=$1 dev=${XDEV[$1]} cmd f copy ok=0 p
  if [ "${XKIND[$x]}" = variant ]; then
    # shellcheck disable=SC2086 # the variant's arguments are a list of options
    start_bg "$NSC" "$WORK/$x.log" env SOCKSTUN_LOG=warn "$SOCKSTUN" tun \
      --proxy "socks5://$PROXY_IP:1080" --device "$dev" --ipv4 "${XTUN[$x]}" ${XSPEC[$x]}
  else
    cmd=${XSPEC[$x]}
    # {conf:FILE}: a copy of FILE with the placeholders replaced.
    while [[ "$cmd" =~ \{conf:([^}]*)\} ]]; do
      f=${BASH_REMATCH[1]}
      [ -r "$f" ] || { say "--peer $x: cannot read $f"; exit 2; }
      copy="$WORK/$x-$(basename "$f")"
      subst "$x" "$(cat "$f")" >"$copy"
      cmd=${cmd//"{conf:$f}"/$copy}
    done
    cmd=$(subst "$x" "$cmd")
    echo "$cmd" >"$WORK/$x.cmd"
    start_bg "$NSC" "$WORK/$x.log" sh -c "$cmd"
  fi
  p=$BGPID
  for _ in $(seq 100); do
    kill -0 "$p" 2>/dev/null || break
    # A variant brings its device up itself; a peer may leave that to us.
    if ip -n "$NSC" link show "$dev" 2>/dev/null | grep -q ',UP' ||
      { [ "${XKIND[$x]}" = peer ] && ip -n "$NSC" link show "$dev" >/dev/null 2>&1; }; then
      ok=1; break
    fi
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    say "row $x did not bring up its device $dev: $(tail -3 "$WORK/$x.log" | tr '\n' ' ')"
    R[$x|na]=1; stop_bg "$p"; return 0
  fi
  if [ "${XKIND[$x]}" = peer ]; then
    sleep 0.5 # let it finish configuring the device it made
    ip -n "$NSC" link set "$dev" up
    [ -n "$(ip -n "$NSC" -4 addr show dev "$dev")" ] || ip -n "$NSC" addr add "${XTUN[$x]}" dev "$dev"
  fi
  ip -n "$NSC" route replace "${XTARGET[$x]}/32" dev "$dev"
  ARGS[$x]="--target ${XTARGET[$x]}:9000"
  CPUW[$x]=$p
  say "  row $x: ${XKIND[$x]} on $dev, target ${XTARGET[$x]}"
}

run_tun() {
  local rows=() row up="" dev=bst0 pid="" s
  local def=direct,socks-only,sockstun x
  have redsocks && have nft && def+=,redsocks
  for x in "${EXTRA[@]}"; do def+=",$x"; done
  IFS=, read -r -a rows <<<"${ROWS:-$def}"
  if [ "${rows[*]}" != direct ]; then
    up=$(pick_upstream)
    [ "$up" != none ] || { say "no SOCKS upstream available (install dante-server)"; exit 2; }
    start_upstream "$up" 1080 || { say "upstream $up did not start"; exit 1; }
    UPNAME=$up
  fi
  # After pick_upstream, which clears the proxy namespace of its probes.
  want wan && delay_link c "$NSC" 198.51.100.2
  for row in "${rows[@]}"; do
    case "$row" in
      direct)
        inns "$NSP" sysctl -qw net.ipv4.ip_forward=1
        ip -n "$NSC" route replace 203.0.113.2/32 via "$PROXY_IP"
        ip -n "$NST" route replace 198.51.100.0/24 via 203.0.113.1
        ARGS[direct]="--target 203.0.113.2:9000" ;;
      socks-only) ARGS[socks-only]="--target 203.0.113.2:9000 --socks $PROXY_IP:1080" ;;
      hop)
        ip -n "$NSC" route replace 203.0.113.2/32 via "$PROXY_IP"
        ip -n "$NST" route replace 198.51.100.0/24 via 203.0.113.1
        inns "$NSP" sysctl -qw net.ipv4.ip_forward=1
        start_bg "$NSC" "$WORK/hop.log" "$HOP" --listen 127.0.0.1:9100 --to 203.0.113.2:9000
        wait_listen "$NSC" 9100 || { say "hop did not start: $(tail -3 "$WORK/hop.log")"; exit 1; }
        ARGS[hop]="--target 127.0.0.1:9100"
        CPUW[hop]=$BGPID ;;
      sockstun)
        # shellcheck disable=SC2086 # TUN_ARGS is a list of options
        start_bg "$NSC" "$WORK/sockstun-tun.log" env SOCKSTUN_LOG=warn "$SOCKSTUN" tun \
          --proxy "socks5://$PROXY_IP:1080" --device "$dev" --ipv4 198.18.0.1/15 $TUN_ARGS
        pid=$BGPID
        local ok=0
        for _ in $(seq 100); do
          kill -0 "$pid" 2>/dev/null || break
          ip -n "$NSC" link show "$dev" 2>/dev/null | grep -q ',UP' && { ok=1; break; }
          sleep 0.1
        done
        if [ "$ok" != 1 ]; then
          say "sockstun tun is not available: $(tail -3 "$WORK/sockstun-tun.log" | tr '\n' ' ')"
          R[sockstun|na]=1; stop_bg "$pid"; pid=""; continue
        fi
        ip -n "$NSC" route replace default dev "$dev"
        ARGS[sockstun]="--target 203.0.113.3:9000"
        CPUW[sockstun]=$pid ;;
      redsocks)
        { have redsocks && have nft; } || { say "redsocks row: redsocks or nft not installed"; exit 2; }
        printf '%s\n' \
          'base { log_debug = off; log_info = off; log = stderr; daemon = off; redirector = iptables; }' \
          "redsocks { local_ip = 127.0.0.1; local_port = 12345; ip = $PROXY_IP; port = 1080; type = socks5; }" \
          >"$WORK/redsocks.conf"
        # A client namespace of its own (198.51.100.3 on a second veth into the
        # proxy namespace, the same path as the other rows' clients).
        ip netns add "$NSR"
        ip -n "$NSR" link set lo up
        inns "$NSR" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1
        ip link add r0 netns "$NSR" type veth peer name p2 netns "$NSP"
        ip -n "$NSR" addr add 198.51.100.3/32 dev r0
        ip -n "$NSR" link set r0 up
        ip -n "$NSP" link set p2 up
        ip -n "$NSR" route add "$PROXY_IP/32" dev r0
        ip -n "$NSP" route add 198.51.100.3/32 dev p2
        # Only the target's ports (netbench, iperf3) on its own address are
        # redirected, so redsocks' own connections to the upstream are not. The
        # route serves the first lookup; the redirect then reroutes to loopback.
        ip -n "$NSR" route add 203.0.113.4/32 via "$PROXY_IP" dev r0
        printf '%s\n' 'table ip bench_redsocks {' \
          '  chain out { type nat hook output priority -100; ip daddr 203.0.113.4 tcp dport { 9000, 5201 } redirect to :12345; }' \
          '}' | inns "$NSR" nft -f - || { say "redsocks row: nft failed"; exit 1; }
        start_bg "$NSR" "$WORK/redsocks.log" redsocks -c "$WORK/redsocks.conf"
        wait_listen "$NSR" 12345 || { say "redsocks did not start: $(tail -3 "$WORK/redsocks.log")"; exit 1; }
        want wan && delay_link r "$NSR" 198.51.100.3
        CLIENTNS[redsocks]=$NSR
        ARGS[redsocks]="--target 203.0.113.4:9000"
        CPUW[redsocks]=$BGPID ;;
      *)
        [ -n "${XKIND[$row]:-}" ] || { say "unknown row $row"; exit 2; }
        start_extra "$row" ;;
    esac
  done
  if [ -n "$pid" ]; then
    sleep 1
    { want memory || want hold; } && R[sockstun|rss-idle]=$(mb "$(rss_kb "$pid")")
    if want idle; then
      local w0 w1
      w0=$(wakeups "$pid"); sleep "$IDLE_SECS"; w1=$(wakeups "$pid")
      R[sockstun|idle]=$((w1 - w0))
      say "  sockstun idle: $((w1 - w0)) wake-ups in ${IDLE_SECS} s, RSS ${R[sockstun|rss-idle]:-?} MB"
    fi
  fi
  if [ -n "${CPUW[redsocks]:-}" ] && want memory; then
    R[redsocks|rss-idle]=$(mb "$(rss_kb "${CPUW[redsocks]}")")
  fi
  for s in "${TRAFFIC[@]}"; do
    want "$s" || { [ "$s" = tcp-up-1 ] && want cpu; } || continue
    case "$s" in
      tcp-up-1|tcp-down-1|rr|crr|udp-rtt|dns|wan)
        local live=(); for row in "${rows[@]}"; do [ -n "${ARGS[$row]:-}" ] && live+=("$row"); done
        if [ "$s" = wan ]; then wan "${live[@]}"; else rounds "$s" "${live[@]}"; fi ;;
      *) for row in "${rows[@]}"; do [ -n "${ARGS[$row]:-}" ] && scenario "$row" "$s"; done ;;
    esac
  done
  [ -n "$pid" ] && want memory && hold_conns sockstun "$MEM_CONNS" mem
  [ -n "${ARGS[redsocks]:-}" ] && want memory && hold_conns redsocks "$MEM_CONNS" mem
  if want hold; then
    for row in "${rows[@]}"; do
      # redsocks leaves some of 10,000 connections opened at once hanging
      # (its original-destination lookup fails: "getdestaddr_iptables ... No
      # such file or directory"), so each costs netbench its 10 s timeout.
      [ "$row" = redsocks ] && continue
      [ -n "${ARGS[$row]:-}" ] && hold_conns "$row" "$HOLD_CONNS" hold
    done
    # A second hold in the same process life: memory given back after the first
    # must be reusable, not ratchet up.
    [ -n "$pid" ] && hold_conns sockstun "$HOLD_CONNS" hold2
  fi
  if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
    say "sockstun tun died during the run:"; tail -5 "$WORK/sockstun-tun.log" >&2
    ERRORS=$((ERRORS + 1))
  elif [ -n "$pid" ] && want idle; then
    # Idle again after all that: closed flows must not leave timers behind.
    # Tearing down 10,000 flows takes a few seconds; start once a second
    # passes with at most one wake-up (30 s at most).
    local w0 w1 settle=0
    while [ "$settle" -lt 30 ]; do
      w0=$(wakeups "$pid"); sleep 1; w1=$(wakeups "$pid"); settle=$((settle + 1))
      [ $((w1 - w0)) -le 1 ] && break
    done
    say "  sockstun settled ${settle} s after the load"
    w0=$(wakeups "$pid"); sleep "$IDLE_SECS"; w1=$(wakeups "$pid")
    R[sockstun|idle-after]=$((w1 - w0))
    R[sockstun|rss-after]=$(mb "$(rss_kb "$pid")")
    say "  sockstun idle after the load: $((w1 - w0)) wake-ups in ${IDLE_SECS} s, RSS ${R[sockstun|rss-after]} MB"
  fi
}

# ------------------------------------------------------------------ server mode
run_server() {
  local rows=() row port lim
  # A SOCKS server holds two descriptors per connection; under a hard limit
  # it cannot raise (this machine: 20000), hold what fits.
  lim=$(ulimit -n)
  if [ "$HOLD_CONNS" -gt $(( (lim - 200) / 2 )) ]; then
    HOLD_CONNS=$(( (lim - 200) / 2 ))
    say "note: open-files limit $lim: holding $HOLD_CONNS connections per server"
  fi
  IFS=, read -r -a rows <<<"${ROWS:-dante,microsocks,sockstun-server}"
  for row in "${rows[@]}"; do
    case "$row" in
      dante) have danted || continue; port=1080; start_upstream dante $port ;;
      microsocks) have microsocks || continue; port=1081; start_upstream microsocks $port ;;
      sockstun-server)
        port=1082
        start_upstream sockstun $port || { say "sockstun server is not available"; R[sockstun-server|na]=1; continue; } ;;
      hop)
        start_bg "$NSP" "$WORK/hop.log" "$HOP" --listen "$PROXY_IP:1083" --to 203.0.113.2:9000
        wait_listen "$NSP" 1083 || { say "hop did not start: $(tail -3 "$WORK/hop.log")"; exit 1; }
        ARGS[hop]="--target $PROXY_IP:1083"
        CPUW[hop]=$BGPID
        continue ;;
      hop-socks)
        start_bg "$NSP" "$WORK/hop-socks.log" "$HOP" --socks --listen "$PROXY_IP:1084" --to 203.0.113.2:9000
        wait_listen "$NSP" 1084 || { say "hop --socks did not start: $(tail -3 "$WORK/hop-socks.log")"; exit 1; }
        ARGS[hop-socks]="--target 203.0.113.2:9000 --socks $PROXY_IP:1084"
        CPUW[hop-socks]=$BGPID
        continue ;;
      *) say "unknown row $row"; exit 2 ;;
    esac
    ARGS[$row]="--target 203.0.113.2:9000 --socks $PROXY_IP:$port"
    CPUW[$row]=$BGPID
  done
  sleep 0.5
  if want memory; then
    for row in "${rows[@]}"; do [ -n "${CPUW[$row]:-}" ] && R[$row|rss-idle]=$(mb "$(rss_kb "${CPUW[$row]}")"); done
  fi
  for s in "${TRAFFIC[@]}"; do
    want "$s" || { [ "$s" = tcp-up-1 ] && want cpu; } || continue
    case "$s" in
      tcp-up-1|tcp-down-1|rr|crr)
        local live=(); for row in "${rows[@]}"; do [ -n "${ARGS[$row]:-}" ] && live+=("$row"); done
        rounds "$s" "${live[@]}" ;;
      *) for row in "${rows[@]}"; do [ -n "${ARGS[$row]:-}" ] && scenario "$row" "$s"; done ;;
    esac
  done
  if want memory; then
    for row in "${rows[@]}"; do [ -n "${ARGS[$row]:-}" ] && hold_conns "$row" "$MEM_CONNS" mem; done
  fi
  if want hold; then
    for row in "${rows[@]}"; do [ -n "${ARGS[$row]:-}" ] && hold_conns "$row" "$HOLD_CONNS" hold; done
  fi
}

# compare_table ROW2 ROW3: ROW3 now against a saved run, raw and as a ratio to ROW2.
compare_table() {
  local b=$1 c=$2 key label ob oc nb nc
  declare -A OLD
  while IFS=$'\t' read -r key label; do [ -n "$key" ] && OLD[$key]=$label; done < <(grep -v '^#' "$COMPARE")
  echo
  echo "against $COMPARE ($(head -1 "$COMPARE" | sed 's/^# //')):"
  echo
  printf '| %-28s | %12s | %12s | %8s | %12s | %12s |\n' scenario "$c before" "$c now" "now/bef" "/$b before" "/$b now"
  printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------------" "-------------:" "-------------:" \
    "---------:" "-------------:" "-------------:"
  while IFS=';' read -r key label; do
    oc=${OLD[$c|$key]:--}; nc=${R[$c|$key]:--}; ob=${OLD[$b|$key]:--}; nb=${R[$b|$key]:--}
    [ "$oc$nc" = "--" ] && continue
    label=${label/MEMN/$MEM_CONNS}; label=${label/HOLDN/$HOLD_CONNS}; label=${label/IH/$IDLE_HOLD}
    printf '| %-28s | %12s | %12s | %8s | %12s | %12s |\n' "$label" "$oc" "$nc" "$(fmt_ratio "$nc" "$oc")" \
      "$(fmt_ratio "$oc" "$ob")" "$(fmt_ratio "$nc" "$nb")"
  done <<<"$TABLE_KEYS"
}
save_results() {
  local k
  {
    echo "# $(date -u +%FT%TZ) $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown) mode $MODE, ${SECS} s runs${TUN_ARGS:+, sockstun tun $TUN_ARGS}, load $(cut -d' ' -f1-3 /proc/loadavg)"
    for k in "${!R[@]}"; do printf '%s\t%s\n' "$k" "${R[$k]}"; done | sort
  } >"$SAVE"
  echo "figures saved to $SAVE"
}

say "bench: $(nproc) cores, kernel $(uname -r), $("$SOCKSTUN" --version 2>/dev/null), load average $(cut -d' ' -f1-3 /proc/loadavg)"
START=$(date +%s)
UPNAME=none
if [ "$MODE" = tun ]; then
  run_tun
  echo
  echo "sockstun bench, $(date -u +%FT%TZ): $(nproc) cores, kernel $(uname -r), upstream $UPNAME, ${SECS} s per run,"
  echo "udp offered ${UDP_PPS} pps, idle window ${IDLE_SECS} s; ratios are sockstun to each baseline"
  echo "(for the rows in ms, us and CPU, lower is better: a ratio under 1 is in sockstun's favour)"
  [ -n "$TUN_ARGS" ] && echo "sockstun tun extra options: $TUN_ARGS"
  [ -n "${R[sockstun|na]:-}" ] && echo "(sockstun tun mode is not available in this build: its column is empty)"
  echo
  print_table direct socks-only sockstun
  if [ -n "${ARGS[redsocks]:-}" ]; then
    echo
    echo "against a field peer through the same upstream (redsocks: kernel TCP on both legs, no TUN):"
    echo
    print_table socks-only redsocks sockstun
  fi
  first=""
  for x in "${EXTRA[@]}"; do
    [ -n "${ARGS[$x]:-}" ] || continue
    echo
    if [ "${XKIND[$x]}" = peer ]; then
      echo "against peer $x (sh -c '$(cat "$WORK/$x.cmd")'; ratios are sockstun to it):"
      echo
      print_table socks-only "$x" sockstun
    else
      echo "variant $x: sockstun tun ${XSPEC[$x]} (ratios are $x to each)"
      echo
      print_table socks-only sockstun "$x"
      if [ -n "$first" ]; then
        echo
        echo "variant $x against variant $first (ratios are $x to each)"
        echo
        print_table sockstun "$first" "$x"
      fi
      first=${first:-$x}
    fi
  done
  if [ -n "${ARGS[hop]:-}" ]; then
    echo
    echo "against hop (the direct path plus one relay process with no protocol: the floor of any relay):"
    echo
    print_table direct hop sockstun
  fi
  [ -z "$DLSTATS" ] || { echo; echo "wan: delay line ${WAN_MS} ms each way; $DLSTATS"; }
  [ -z "$COMPARE" ] || compare_table socks-only sockstun
else
  run_server
  echo
  echo "sockstun server bench, $(date -u +%FT%TZ): $(nproc) cores, kernel $(uname -r), ${SECS} s per run;"
  echo "a SOCKS5 client through each server; CPU and memory are the server's (with its child processes)"
  [ -n "${R[sockstun-server|na]:-}" ] && echo "(sockstun server is not available in this build: its column is empty)"
  echo
  print_table dante microsocks sockstun-server
  if [ -n "${ARGS[hop]:-}" ]; then
    echo
    echo "against hop (a relay with no protocol, no handshake on either side: the floor of any server):"
    echo
    print_table microsocks hop sockstun-server
  fi
  if [ -n "${ARGS[hop-socks]:-}" ]; then
    echo
    echo "against hop-socks (the least a SOCKS5 server can do: blocking threads, one read per message, no checks):"
    echo
    print_table microsocks hop-socks sockstun-server
  fi
  [ -z "$COMPARE" ] || compare_table dante sockstun-server
fi
[ -z "$SAVE" ] || save_results
echo
echo "($(( $(date +%s) - START )) s; failed measurements: $ERRORS; load average at the end $(cut -d' ' -f1-3 /proc/loadavg))"
[ "$ERRORS" = 0 ]
