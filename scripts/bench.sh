#!/usr/bin/env bash
# sockstun benchmark: one machine, throwaway network namespaces, one table.
#
#   client (netbench, TUN + sockstun tun) --veth-- proxy (SOCKS upstream) --veth-- target (netbench server)
#    198.51.100.2/24                               198.51.100.1/24 203.0.113.1/24      203.0.113.2/24
#
# Rows (TUN mode, the default):
#   direct      the client routes to the target through the proxy namespace by plain
#               kernel forwarding: no TUN, no SOCKS (the ceiling of the path)
#   socks-only  the client speaks SOCKS5 to the upstream itself: no TUN
#   sockstun    `sockstun tun` in the client namespace, default route into its TUN
# With --server the rows are SOCKS servers as the upstream of a SOCKS-speaking client:
# sockstun server, dante-server, microsocks.
#
# Needs root. Installs nothing: says what is missing. Every process it starts and every
# namespace it creates is removed on exit, whatever happens. Traffic stays inside the
# namespaces. See docs/performance.md for what each figure means and what limits it.
#
# Usage: scripts/bench.sh [--server] [--quick] [--only S1,S2] [--rows R1,R2]
#                         [--upstream auto|dante|sockstun|microsocks] [--secs N]
#                         [--idle-secs N] [--no-build] [--keep-logs]
#   scenarios: tcp-up-1 tcp-up-10 tcp-down-1 tcp-down-10 rr crr udp memory idle hold
#   (cpu is taken during tcp-up-1.)  --quick: 1 s runs, 200 held connections, 3 s idle:
#   a smoke run that checks the whole pipeline in well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=tun
QUICK=0
ONLY=""
ROWS=""
UPSTREAM=auto
SECS=5
IDLE_SECS=20
BUILD=1
KEEP_LOGS=0
UDP_PPS=50000
MEM_CONNS=1000
HOLD_CONNS=10000

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --server) MODE=server ;;
    --quick) QUICK=1 ;;
    --only) ONLY="$2"; shift ;;
    --rows) ROWS="$2"; shift ;;
    --upstream) UPSTREAM="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --idle-secs) IDLE_SECS="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --keep-logs) KEEP_LOGS=1 ;;
    -h|--help) usage 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  SECS=1; IDLE_SECS=3; MEM_CONNS=200; HOLD_CONNS=500; UDP_PPS=20000
fi

# ------------------------------------------------------------------ requirements
missing=()
[ "$(id -u)" = 0 ] || { echo "bench.sh: needs root (network namespaces, TUN)" >&2; exit 2; }
for t in ip ss timeout awk sed cargo; do command -v "$t" >/dev/null || missing+=("$t"); done
[ -c /dev/net/tun ] || missing+=("/dev/net/tun")
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench.sh: missing: ${missing[*]} (install them; this script installs nothing)" >&2
  exit 2
fi
have() { command -v "$1" >/dev/null; }
have danted || echo "note: danted (Debian: dante-server) not found: no dante upstream" >&2
have microsocks || echo "note: microsocks not found: no microsocks upstream" >&2

if [ "$BUILD" = 1 ]; then
  cargo build --release --locked --bins --example netbench >&2
fi
SOCKSTUN=$ROOT/target/release/sockstun
NB=$ROOT/target/release/examples/netbench
for b in "$SOCKSTUN" "$NB"; do
  [ -x "$b" ] || { echo "bench.sh: $b not built (run without --no-build)" >&2; exit 2; }
done

# Holding 10,000 connections through a proxy needs ~2 descriptors each, per process.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------------------ namespaces
TAG="bn$$"
NSC="${TAG}c"; NSP="${TAG}p"; NST="${TAG}t"
WORK=$(mktemp -d "/tmp/sockstun-bench.XXXXXX")
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for ns in "$NSC" "$NSP" "$NST"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  for ns in "$NSC" "$NSP" "$NST"; do ip netns del "$ns" 2>/dev/null; done
  if [ "$KEEP_LOGS" = 1 ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
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
for x in "$NSC c0" "$NSP p0" "$NSP p1" "$NST t0"; do set -- $x; ip -n "$1" link set "$2" up; done
inns "$NSP" sysctl -qw net.ipv4.ip_forward=0

TARGET=203.0.113.2:9000
PROXY=198.51.100.1:1080

# start_bg NS LOG CMD...: start a process in a namespace, PID in $BGPID.
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

start_bg "$NST" "$WORK/target.log" "$NB" server --listen 0.0.0.0:9000
wait_listen "$NST" 9000 || { echo "netbench server did not start" >&2; cat "$WORK/target.log" >&2; exit 1; }

# ------------------------------------------------------------------ upstreams
cat >"$WORK/danted.conf" <<EOF
logoutput: $WORK/danted.log
internal: 198.51.100.1 port = 1080
external: 203.0.113.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }
socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect udpassociate udpreply bind bindreply }
EOF

UPPID=""
# start_upstream NAME: start a SOCKS server on $PROXY in the proxy namespace.
start_upstream() {
  case "$1" in
    dante) start_bg "$NSP" "$WORK/up-dante.log" danted -f "$WORK/danted.conf" ;;
    microsocks) start_bg "$NSP" "$WORK/up-microsocks.log" microsocks -i 198.51.100.1 -p 1080 ;;
    sockstun) start_bg "$NSP" "$WORK/up-sockstun.log" "$SOCKSTUN" --log warn server \
        --listen "$PROXY" --allow-client 198.51.100.0/24 --max-clients 100000 ;;
    *) echo "unknown upstream $1" >&2; return 1 ;;
  esac
  UPPID=$BGPID
  if ! wait_listen "$NSP" 1080; then
    stop_bg "$UPPID"; UPPID=""
    return 1
  fi
}
stop_upstream() {
  [ -n "$UPPID" ] && stop_bg "$UPPID"
  UPPID=""
  # dante forks helpers; none may survive into the next row.
  for p in $(ip netns pids "$NSP" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    [ -z "$(inns "$NSP" ss -Hltn "sport = :1080" 2>/dev/null)" ] && break; sleep 0.1
  done
}
upstream_available() {
  case "$1" in
    dante) have danted ;;
    microsocks) have microsocks ;;
    sockstun) start_upstream sockstun 2>/dev/null && { stop_upstream; return 0; }; return 1 ;;
  esac
}

# ------------------------------------------------------------------ measurement helpers
declare -A R   # R[row|key] = value
ERRORS=0
kv() { sed -n "s/.*[ ]$2=\([^ ]*\).*/\1/p" <<<"$1" | head -1; }
# nb NS ARGS...: run a netbench client, bounded in time; prints its RESULT line.
nb() {
  local ns=$1; shift
  local out
  out=$(timeout $((SECS * 3 + 60)) ip netns exec "$ns" "$NB" "$@" 2>>"$WORK/netbench.err") || true
  grep '^RESULT' <<<"$out" | head -1
}
ticks() { # ticks PID|ns:NAME: user+system CPU ticks of a process (all threads) or a namespace
  local p s=0
  if [[ "$1" == ns:* ]]; then
    for p in $(ip netns pids "${1#ns:}"); do s=$((s + $(ticks "$p" 2>/dev/null || echo 0))); done
    echo "$s"
  else
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
  fi
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
rss_ns_kb() { local s=0 p; for p in $(ip netns pids "$1"); do s=$((s + $(rss_kb "$p" 2>/dev/null || echo 0))); done; echo "$s"; }
wakeups() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
fail() { R["$1|$2"]=ERR; ERRORS=$((ERRORS + 1)); echo "  $1 $2: FAILED (see netbench errors)" >&2; }
say() { echo "$*" >&2; }

# run_traffic ROW SOCKSARGS...: the traffic scenarios for one row. Sets CPU_PID
# (if any) to account CPU during tcp-up-1.
run_traffic() {
  local row=$1; shift
  local s r t0 t1 dir n
  for dir in up down; do
    for n in 1 10; do
      s="tcp-$dir-$n"
      want "$s" || { [ "$s" = tcp-up-1 ] && want cpu; } || continue
      [ -n "${CPU_PID:-}" ] && t0=$(ticks "$CPU_PID")
      r=$(nb "$NSC" "$dir" --target "$TARGET" "$@" --secs "$SECS" --streams "$n")
      [ -n "$r" ] || { fail "$row" "$s"; continue; }
      R["$row|$s"]=$(kv "$r" gbps)
      if [ "$s" = tcp-up-1 ] && [ -n "${CPU_PID:-}" ]; then
        t1=$(ticks "$CPU_PID")
        R["$row|cpu"]=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v b="$(kv "$r" bytes)" \
          'BEGIN {printf "%.2f", (t / hz) / (b / 1e9)}')
      fi
      say "  $row $s: ${R[$row|$s]} Gbit/s"
    done
  done
  if want rr; then
    r=$(nb "$NSC" rr --target "$TARGET" "$@" --secs "$SECS")
    if [ -n "$r" ]; then
      R["$row|rr"]=$(kv "$r" tps); R["$row|rr-p50"]=$(kv "$r" p50_us); R["$row|rr-p99"]=$(kv "$r" p99_us)
      say "  $row rr: ${R[$row|rr]} tps p50 ${R[$row|rr-p50]} us p99 ${R[$row|rr-p99]} us"
    else fail "$row" rr; fi
  fi
  if want crr; then
    r=$(nb "$NSC" crr --target "$TARGET" "$@" --secs "$SECS")
    if [ -n "$r" ] && [ "$(kv "$r" ok)" -gt 0 ]; then
      R["$row|crr"]=$(kv "$r" cps)
      [ "$(kv "$r" errors)" = 0 ] || R["$row|crr"]="${R[$row|crr]}($(kv "$r" errors)err)"
      say "  $row crr: ${R[$row|crr]} /s"
    else fail "$row" crr; fi
  fi
  if want udp; then
    r=$(nb "$NSC" udp --target "$TARGET" "$@" --secs "$SECS" --pps "$UDP_PPS")
    if [ -n "$r" ]; then
      R["$row|udp-offered"]=$(kv "$r" offered_pps)
      R["$row|udp"]=$(kv "$r" answered_pps); R["$row|udp-loss"]=$(kv "$r" loss_pct)
      say "  $row udp: offered ${R[$row|udp-offered]} answered ${R[$row|udp]} pps loss ${R[$row|udp-loss]} %"
    else fail "$row" udp; fi
  fi
}

# hold_conns ROW N KEY MEMPID|-: hold N connections; with a pid (or ns:NAME), sample RSS
# while they are held: R[row|KEY-rss] (kB) and per-connection bytes.
hold_conns() {
  local row=$1 n=$2 key=$3 who=$4; shift 4
  local log="$WORK/hold-$row-$key.out" before=0 after=0 hp
  local rssf=rss_kb; [[ "$who" == ns:* ]] && { rssf=rss_ns_kb; who=${who#ns:}; }
  [ "$who" != - ] && before=$($rssf "$who")
  local hold_secs=$((n >= 5000 ? 3 : 2))
  ip netns exec "$NSC" timeout 180 "$NB" hold --target "$TARGET" "$@" --conns "$n" --workers 16 \
    --secs "$hold_secs" >"$log" 2>>"$WORK/netbench.err" &
  hp=$!
  for _ in $(seq 1500); do
    grep -q '^ESTABLISHED' "$log" 2>/dev/null && break
    kill -0 "$hp" 2>/dev/null || break
    sleep 0.1
  done
  [ "$who" != - ] && after=$($rssf "$who")
  wait "$hp" || true
  local r; r=$(grep '^RESULT' "$log" | head -1)
  if [ -z "$r" ]; then fail "$row" "$key"; return; fi
  R["$row|$key"]="$(kv "$r" alive_after_hold)/$n"
  [ "$(kv "$r" errors)" = 0 ] || R["$row|$key"]="${R[$row|$key]}($(kv "$r" errors)err)"
  if [ "$who" != - ]; then
    R["$row|$key-rss"]=$((after / 1024))
    R["$row|$key-per"]=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.1f", (a - b) * 1.024 / n}')
  fi
  say "  $row hold $n: ${R[$row|$key]} $(grep '^ESTABLISHED' "$log" | head -1) rss ${before}->${after} kB"
}

# ------------------------------------------------------------------ rows
pick_upstream() {
  local cands=() u best="" bestv=0 r v
  if [ "$UPSTREAM" != auto ]; then echo "$UPSTREAM"; return; fi
  for u in sockstun dante microsocks; do upstream_available "$u" && cands+=("$u"); done
  [ ${#cands[@]} -gt 0 ] || { echo none; return; }
  if [ ${#cands[@]} = 1 ]; then echo "${cands[0]}"; return; fi
  for u in "${cands[@]}"; do
    start_upstream "$u" || continue
    r=$(nb "$NSC" up --target "$TARGET" --socks "$PROXY" --secs 2)
    stop_upstream
    v=$(kv "$r" gbps); v=${v:-0}
    say "  upstream probe $u: tcp-up-1 ${v} Gbit/s"
    if awk -v a="$v" -v b="$bestv" 'BEGIN {exit !(a > b)}'; then best=$u; bestv=$v; fi
  done
  echo "${best:-${cands[0]}}"
}

row_direct() {
  say "== direct: kernel forwarding through the proxy namespace"
  inns "$NSP" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$NSC" route add 203.0.113.0/24 via 198.51.100.1
  ip -n "$NST" route add 198.51.100.0/24 via 203.0.113.1
  CPU_PID="" run_traffic direct
  want hold && hold_conns direct "$HOLD_CONNS" hold -
  ip -n "$NSC" route del 203.0.113.0/24 via 198.51.100.1
  ip -n "$NST" route del 198.51.100.0/24 via 203.0.113.1
  inns "$NSP" sysctl -qw net.ipv4.ip_forward=0
}

row_socks() { # row_socks ROWNAME UPSTREAM
  local row=$1 up=$2
  say "== $row: client speaks SOCKS5 to $up"
  start_upstream "$up" || { say "  $up did not start"; R["$row|tcp-up-1"]=ERR; ERRORS=$((ERRORS + 1)); return; }
  if [ "$MODE" = server ] && want memory; then
    sleep 0.5
    R["$row|rss-idle"]=$(( $(rss_ns_kb "$NSP") / 1024 ))
    say "  $row idle RSS ${R[$row|rss-idle]} MB"
  fi
  CPU_PID=$([ "$MODE" = server ] && echo "ns:$NSP" || true) run_traffic "$row" --socks "$PROXY"
  if want memory && [ "$MODE" = server ]; then hold_conns "$row" "$MEM_CONNS" mem "ns:$NSP" --socks "$PROXY"; fi
  want hold && hold_conns "$row" "$HOLD_CONNS" hold - --socks "$PROXY"
  stop_upstream
}

row_sockstun() {
  local up=$1 dev=bst0
  say "== sockstun: sockstun tun in the client namespace, upstream $up"
  start_upstream "$up" || { say "  $up did not start"; R["sockstun|tcp-up-1"]=ERR; ERRORS=$((ERRORS + 1)); return; }
  start_bg "$NSC" "$WORK/sockstun-tun.log" env SOCKSTUN_LOG=warn "$SOCKSTUN" tun \
    --proxy "socks5://$PROXY" --device "$dev" --ipv4 198.18.0.1/15
  local pid=$BGPID ok=0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    ip -n "$NSC" link show "$dev" 2>/dev/null | grep -q ',UP' && { ok=1; break; }
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    say "  sockstun tun is not available: $(tail -2 "$WORK/sockstun-tun.log" | tr '\n' ' ')"
    R["sockstun|na"]=1
    stop_bg "$pid"; stop_upstream
    return
  fi
  # `ip netns exec` execs the command, so $pid is sockstun itself (env execs too).
  ip -n "$NSC" route replace default dev "$dev"
  sleep 1
  if want memory; then R["sockstun|rss-idle"]=$(awk -v k="$(rss_kb "$pid")" 'BEGIN {printf "%.1f", k / 1024}'); fi
  if want idle; then
    local w0 w1
    w0=$(wakeups "$pid"); sleep "$IDLE_SECS"; w1=$(wakeups "$pid")
    R["sockstun|idle"]=$((w1 - w0))
    say "  sockstun idle: $((w1 - w0)) wake-ups in ${IDLE_SECS} s; RSS ${R[sockstun|rss-idle]:-?} MB"
  fi
  CPU_PID=$pid run_traffic sockstun
  want memory && hold_conns sockstun "$MEM_CONNS" mem "$pid"
  want hold && hold_conns sockstun "$HOLD_CONNS" hold "$pid"
  if ! kill -0 "$pid" 2>/dev/null; then
    say "  sockstun tun died during the run:"; tail -5 "$WORK/sockstun-tun.log" >&2
    ERRORS=$((ERRORS + 1))
  fi
  ip -n "$NSC" route del default dev "$dev" 2>/dev/null || true
  stop_bg "$pid"
  stop_upstream
}

# ------------------------------------------------------------------ table
fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else printf "-" }'; }
print_table() { # print_table ROW1 ROW2 ROW3 (ratios of ROW3 to ROW1 and ROW2)
  local a=$1 b=$2 c=$3 key unit label va vb vc
  printf '\n| %-26s | %12s | %12s | %12s | %8s | %8s |\n' scenario "$a" "$b" "$c" "$c/$a" "$c/$b"
  printf '|%s|%s|%s|%s|%s|%s|\n' "----------------------------" "--------------:" "--------------:" "--------------:" "---------:" "---------:"
  while IFS=';' read -r key label; do
    [ -z "$key" ] && continue
    va=${R[$a|$key]:--}; vb=${R[$b|$key]:--}; vc=${R[$c|$key]:--}
    [ "$va$vb$vc" = "---" ] && continue
    label=${label/ N / $MEM_CONNS }
    printf '| %-26s | %12s | %12s | %12s | %8s | %8s |\n' "$label" "$va" "$vb" "$vc" \
      "$(fmt_ratio "$vc" "$va")" "$(fmt_ratio "$vc" "$vb")"
  done <<'EOF'
tcp-up-1;tcp-up-1 Gbit/s
tcp-up-10;tcp-up-10 Gbit/s
tcp-down-1;tcp-down-1 Gbit/s
tcp-down-10;tcp-down-10 Gbit/s
rr;rr transactions/s
rr-p50;rr p50 us
rr-p99;rr p99 us
crr;crr connections/s
udp-offered;udp offered pps
udp;udp answered pps
udp-loss;udp loss %
rss-idle;RSS idle MB
mem-rss;RSS N held MB
mem-per;KB per held connection
cpu;CPU s per GB (tcp-up-1)
idle;wake-ups in idle window
hold;held connections alive
EOF
}

say "bench: $(nproc) cores, kernel $(uname -r), $("$SOCKSTUN" --version 2>/dev/null)"
START=$(date +%s)
if [ "$MODE" = tun ]; then
  ROWS=${ROWS:-direct,socks-only,sockstun}
  UP=none
  if [[ ",$ROWS," == *",socks-only,"* || ",$ROWS," == *",sockstun,"* ]]; then
    UP=$(pick_upstream)
    say "upstream: $UP"
    [ "$UP" != none ] || { say "no SOCKS upstream available (install dante-server)"; exit 2; }
  fi
  [[ ",$ROWS," == *",direct,"* ]] && row_direct
  [[ ",$ROWS," == *",socks-only,"* ]] && row_socks socks-only "$UP"
  [[ ",$ROWS," == *",sockstun,"* ]] && row_sockstun "$UP"
  [ "$QUICK" = 1 ] && MEMNOTE="$MEM_CONNS" || MEMNOTE=1000
  echo
  echo "sockstun bench ($(date -u +%FT%TZ)): $(nproc) cores, kernel $(uname -r), upstream $UP, ${SECS} s per run,"
  echo "udp offered ${UDP_PPS} pps, memory with $MEMNOTE held connections, idle window ${IDLE_SECS} s, hold $HOLD_CONNS"
  [ -n "${R[sockstun|na]:-}" ] && echo "(sockstun tun mode not available in this build: its column is empty)"
  print_table direct socks-only sockstun
else
  ROWS=${ROWS:-dante,microsocks,sockstun-server}
  for r in ${ROWS//,/ }; do
    case "$r" in
      dante) have danted && row_socks dante dante ;;
      microsocks) have microsocks && row_socks microsocks microsocks ;;
      sockstun-server) row_socks sockstun-server sockstun ;;
    esac
  done
  echo
  echo "sockstun server bench ($(date -u +%FT%TZ)): $(nproc) cores, kernel $(uname -r), ${SECS} s per run;"
  echo "client speaks SOCKS5 to each server; CPU is the server's; memory is the server's (all its processes)"
  print_table dante microsocks sockstun-server
fi
echo
echo "($(( $(date +%s) - START )) s; errors: $ERRORS)"
[ "$ERRORS" = 0 ]
