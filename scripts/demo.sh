#!/usr/bin/env bash
# sockstun demo: fetch a web page through `sockstun tun` and `sockstun server`,
# in throwaway network namespaces. Needs root; touches nothing outside the
# namespaces it creates, and removes them on exit, whatever happens.
#
#   client (curl; TUN + sockstun tun) --veth-- proxy (sockstun server) --veth-- target (web server)
#    198.51.100.2                              198.51.100.1  203.0.113.1          203.0.113.2
#    2001:db8:1::2                             2001:db8:1::1 2001:db8:2::1        2001:db8:2::2
#
# The client has no route to the target except its default route into the TUN;
# the proxy namespace does not forward. So the page can only arrive through
# sockstun: TUN -> smoltcp -> SOCKS5 CONNECT -> sockstun server -> target.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: needs root (network namespaces, a TUN device): sudo $0" >&2
  exit 2
fi
missing=""
for t in ip curl python3; do
  command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
done
if [ -n "$missing" ]; then
  echo "demo.sh: missing:$missing (Debian: apt-get install iproute2 curl python3)" >&2
  exit 2
fi

BIN="$ROOT/target/release/sockstun"
if [ ! -x "$BIN" ]; then
  echo "== building sockstun (cargo build --release)"
  cargo build --release --locked --bin sockstun
fi

ID=$$
C="sdemo-c-$ID"; P="sdemo-p-$ID"; T="sdemo-t-$ID"
WORK=$(mktemp -d /tmp/sockstun-demo.XXXXXX)
PIDS=()

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  for ns in "$C" "$P" "$T"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say() { printf '\n== %s\n' "$*"; }

# Wait for a condition (a shell command) for up to 10 s.
wait_for() {
  for _ in $(seq 100); do
    if eval "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "demo.sh: timed out waiting for: $1" >&2
  return 1
}

say "namespaces $C, $P, $T"
for ns in "$C" "$P" "$T"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
done
ip link add c0 netns "$C" type veth peer name p0 netns "$P"
ip link add p1 netns "$P" type veth peer name t0 netns "$T"
ip -n "$C" addr add 198.51.100.2/24 dev c0; ip -n "$C" addr add 2001:db8:1::2/64 dev c0 nodad
ip -n "$P" addr add 198.51.100.1/24 dev p0; ip -n "$P" addr add 2001:db8:1::1/64 dev p0 nodad
ip -n "$P" addr add 203.0.113.1/24 dev p1;  ip -n "$P" addr add 2001:db8:2::1/64 dev p1 nodad
ip -n "$T" addr add 203.0.113.2/24 dev t0;  ip -n "$T" addr add 2001:db8:2::2/64 dev t0 nodad
for l in "$C c0" "$P p0" "$P p1" "$T t0"; do set -- $l; ip -n "$1" link set "$2" up; done
ip netns exec "$P" sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0

say "web server in the target namespace (203.0.113.2:8080, [2001:db8:2::2]:8080)"
mkdir -p "$WORK/www"
echo "<h1>Hello from the target namespace, through sockstun.</h1>" > "$WORK/www/index.html"
ip netns exec "$T" python3 -m http.server 8080 --bind :: --directory "$WORK/www" \
  >"$WORK/http.log" 2>&1 &
PIDS+=($!)

say "sockstun server in the proxy namespace (198.51.100.1:1080)"
ip netns exec "$P" "$BIN" server --listen 198.51.100.1:1080 --allow-client 198.51.100.0/24 \
  >"$WORK/server.log" 2>&1 &
PIDS+=($!)

say "sockstun tun in the client namespace (device demotun0, upstream socks5://198.51.100.1:1080)"
ip netns exec "$C" "$BIN" tun --proxy socks5://198.51.100.1:1080 --device demotun0 \
  --ipv4 198.18.0.1/15 --ipv6 2001:db8:ff::1/64 >"$WORK/tun.log" 2>&1 &
PIDS+=($!)
wait_for "ip -n $C link show demotun0 up | grep -q UP"
wait_for "grep -q 'TUN device up' $WORK/tun.log"
ip -n "$C" route replace default dev demotun0
ip -n "$C" -6 route replace default dev demotun0
wait_for "ip netns exec $T python3 -c 'import socket; socket.create_connection((\"203.0.113.2\", 8080), 1)'"

say "client routes (everything goes into the TUN)"
ip -n "$C" route; ip -n "$C" -6 route | grep -v '^fe80'

for url in "http://203.0.113.2:8080/" "http://[2001:db8:2::2]:8080/"; do
  say "curl $url (in the client namespace)"
  ip netns exec "$C" curl -sS --max-time 10 "$url"
done

sleep 0.3 # let the flows' log lines land (they are written when the flows close)
say "what sockstun tun logged"
sed 's/\x1b\[[0-9;]*m//g' "$WORK/tun.log"
say "what sockstun server logged"
sed 's/\x1b\[[0-9;]*m//g' "$WORK/server.log"
say "done; removing the namespaces"
