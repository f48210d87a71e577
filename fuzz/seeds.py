#!/usr/bin/env python3
"""Write the seed corpus, fuzz/corpus/<target>/<name>: the messages of the unit
tests (src/socks/codec.rs, src/socks/client.rs, src/upstream/http.rs, src/dns/,
src/tun/vnet.rs, src/stack/tests.rs) in each target's input format (see the
comment at the top of each fuzz_targets/*.rs). Run from anywhere: python3 fuzz/seeds.py"""
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


def v4(a):
    return bytes(int(x) for x in a.split("."))


def v6(a):
    import ipaddress
    return ipaddress.IPv6Address(a).packed


def be16(n):
    return struct.pack(">H", n)


# --- SOCKS ------------------------------------------------------------------

def socks5_request(cmd, atyp_addr):
    return bytes([5, cmd, 0]) + atyp_addr


def addr4(ip, port):
    return bytes([1]) + v4(ip) + be16(port)


def addr6(ip, port):
    return bytes([4]) + v6(ip) + be16(port)


def addr_name(name, port):
    return bytes([3, len(name)]) + name.encode() + be16(port)


def auth(user, pw):
    return bytes([1, len(user)]) + user.encode() + bytes([len(pw)]) + pw.encode()


def socks4(cmd, port, ip, uid=b"", host=None):
    m = bytes([4, cmd]) + be16(port) + v4(ip) + uid + b"\0"
    if host is not None:
        m += host.encode() + b"\0"
    return m


def socks_seeds():
    codec = {
        "greeting": [5, 2, 0, 2],
        "greeting_pipelined": [5, 1, 0, 5, 1],
        "method_choice": [5, 2],
        "auth_request": auth("alice", "s3cret"),
        "auth_empty_password": [1, 1, ord("u"), 0],
        "auth_reply": [1, 0],
        "connect_v4": socks5_request(1, addr4("203.0.113.2", 80)),
        "udp_v6": socks5_request(3, addr6("2001:db8::1", 443)),
        "bind_name": socks5_request(2, addr_name("example.test", 8080)),
        "connect_with_data": socks5_request(1, addr4("203.0.113.2", 80)) + b"GET /",
        "reply_v4": bytes([5, 0, 0]) + addr4("198.51.100.1", 1080),
        "reply_name_and_data": bytes([5, 0, 0]) + addr_name("abc", 1) + b"HI",
        "failure": bytes([5, 5, 0]) + addr4("0.0.0.0", 0),
        "socks4_connect": socks4(1, 80, "203.0.113.2", b"id"),
        "socks4a_connect": socks4(1, 80, "0.0.0.1", b"", "example.org"),
        "socks4_reply": [0, 0x5A, 0, 0, 0, 0, 0, 0],
        "pipelined_auth": [5, 1, 2] + list(auth("alice", "pw")) + list(socks5_request(1, addr4("203.0.113.2", 80))),
    }
    for name, m in codec.items():
        put("socks_codec", name, m)

    reply4 = bytes([5, 0, 0]) + addr4("198.51.100.1", 1024)
    reply6 = bytes([5, 0, 0]) + addr6("2001:db8::1", 1080)
    # (config byte, piece size, what the proxy says). Config: bits 0-1 dialect
    # (socks5, socks5h, socks4, socks4a), bit 2 credentials, bit 3 pipelining,
    # bits 4-5 destination (v4, v6, name, 0.0.0.0:0), bits 6-7 command.
    client = {
        "socks5": (0x00, 0, bytes([5, 0]) + reply4 + b"later"),
        "socks5_auth_name": (0x24, 1, bytes([5, 2, 1, 0]) + reply6),
        "socks5_name_reply": (0x20, 3, bytes([5, 0, 5, 0, 0]) + addr_name("abc", 1) + b"HI"),
        "socks5_pipelined": (0x08, 6, bytes([5, 0]) + reply4 + b"HI"),
        "socks5_pipelined_auth": (0x0C, 0, bytes([5, 2, 1, 0]) + reply4),
        "socks5_refused": (0x00, 0, bytes([5, 0, 5, 5, 0]) + addr4("0.0.0.0", 0)),
        "socks5_cut_failure": (0x00, 0, bytes([5, 0, 5, 5])),
        "socks5_no_method": (0x00, 0, bytes([5, 0xFF])),
        "socks5_udp_associate": (0xB0, 0, bytes([5, 0]) + reply4),
        "socks4_granted": (0x02, 1, bytes([0, 0x5A, 4, 0]) + v4("198.51.100.1") + b"later"),
        "socks4_rejected": (0x06, 0, bytes([0, 0x5B, 0, 0, 0, 0, 0, 0])),
        "socks4a_name": (0x23, 0, bytes([0, 0x5A, 0, 0, 0, 0, 0, 0])),
        "socks4_bind": (0x42, 0, bytes([0, 0x5A, 4, 0]) + v4("198.51.100.1") + bytes([0, 0x5A, 4, 1]) + v4("203.0.113.9")),
    }
    for name, (cfg, piece, script) in client.items():
        put("socks_client", name, bytes([cfg, piece]) + script)

    udp = {
        "v4_dns": bytes([0, 0, 0]) + addr4("203.0.113.2", 53) + b"payload",
        "v6": bytes([0, 0, 0]) + addr6("2001:db8::2", 7) + b"x" * 20,
        "name": bytes([0, 0, 0]) + addr_name("example.org", 443) + b"quic",
        "fragment": bytes([0, 0, 1]) + addr4("203.0.113.2", 53) + b"part",
        "empty_payload": bytes([0, 0, 0]) + addr4("198.51.100.1", 4000),
    }
    for name, m in udp.items():
        put("udp_header", name, m)

    urls = [
        "socks5://198.51.100.1:1080",
        "socks5h://us%40er:p%3Aa%20ss@[2001:db8::1]:9050/",
        "SOCKS4a://proxy.test",
        "socks4://u@h:1",
        "socks5://alice:s3cret",
        "socks5://alice:s3c:ret",
        "socks5://[alice:s3cret]:1",
        "socks5://[::1]:s3cret",
        "socks5://a:b@h:port",
        "socks5://u:%zz@h:1",
        "socks5://h:1/path",
        "socks5://alice:s\u00e9cret",
        "socks5://alice:s\u00e9cret@proxy.example:1080",
        "socks5://[2001:db8::1:1080",
        "http://h:1",
    ]
    for i, u in enumerate(urls):
        put("proxy_url", "url%02d" % i, u.encode())


# --- IP packets ---------------------------------------------------------------

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(">%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ip4(src, dst, proto, payload):
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, v4(src), v4(dst))
    h = h[:10] + be16(csum(h)) + h[12:]
    return h + payload


def ip6(src, dst, proto, payload):
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), proto, 64, v6(src), v6(dst)) + payload


def pseudo(src, dst, proto, length):
    if ":" in src:
        return v6(src) + v6(dst) + struct.pack(">IxxxB", length, proto)
    return v4(src) + v4(dst) + struct.pack(">xBH", proto, length)


SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04


def tcp(src, dst, sport, dport, flags, seq, ack, payload=b"", syn_opts=False):
    opts = b""
    if syn_opts:
        opts = bytes([2, 4]) + be16(1460) + bytes([1, 3, 3, 7])
    off = (20 + len(opts)) // 4
    h = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 65535, 0, 0) + opts
    seg = h + payload
    c = csum(pseudo(src, dst, 6, len(seg)) + seg)
    seg = seg[:16] + be16(c) + seg[18:]
    wrap = ip6 if ":" in src else ip4
    return wrap(src, dst, 6, seg)


def udp(src, dst, sport, dport, payload):
    seg = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = csum(pseudo(src, dst, 17, len(seg)) + seg) or 0xFFFF
    seg = seg[:6] + be16(c) + seg[8:]
    wrap = ip6 if ":" in src else ip4
    return wrap(src, dst, 17, seg)


def dns_query(qid, name, qtype, edns=True):
    m = be16(qid) + bytes([0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1 if edns else 0])
    for label in name.split("."):
        if label:
            m += bytes([len(label)]) + label.encode()
    m += b"\0" + be16(qtype) + be16(1)
    if edns:
        m += bytes([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0])
    return m


def framed(msgs):
    return b"".join(be16(len(m)) + m for m in msgs)


def packet_seeds():
    c, s = "198.18.0.1", "203.0.113.2"
    c6, s6 = "fd00::1", "2001:db8:2::2"
    # Config byte of stack_ingress: bit 0 fix checksums, bits 1-2 dial
    # verdict, bit 3 offload, bit 4 small rings, bit 5 two flows, bit 6 no UDP
    # ASSOCIATE, bit 7 ACK numbers relative to the stack's ISN.
    flow = [
        tcp(c, s, 40000, 80, SYN, 1000, 0, syn_opts=True),
        tcp(c, s, 40000, 80, ACK, 1001, 1),
        tcp(c, s, 40000, 80, PSH | ACK, 1001, 1, b"hello"),
        tcp(c, s, 40000, 80, ACK, 1006, 15),
        tcp(c, s, 40000, 80, FIN | ACK, 1006, 15),
        tcp(c, s, 40000, 80, ACK, 1007, 16),
    ]
    flow6 = [
        tcp(c6, s6, 40000, 80, SYN, 1000, 0, syn_opts=True),
        tcp(c6, s6, 40000, 80, ACK, 1001, 1),
        tcp(c6, s6, 40000, 80, PSH | ACK, 1001, 1, b"hello"),
        tcp(c6, s6, 40000, 80, RST, 1006, 0),
    ]
    ping = bytearray(tcp(c, s, 40000, 80, ACK, 7, 99, b"x"))
    ping[9] = 1
    stack = {
        "flow_v4": (0x80, flow),
        "flow_v6": (0x80, flow6),
        "flow_v4_offload": (0x88, flow),
        "flow_v4_fixed": (0x81, flow),
        "refused": (0x02, [flow[0]]),
        "unreachable_v4": (0x04, [flow[0]]),
        "prohibited_v6": (0x06, [flow6[0]]),
        "two_flows_max": (0xA0, [flow[0], tcp(c, s, 40001, 80, SYN, 5, 0), tcp(c, s, 40002, 80, SYN, 5, 0)]),
        "stray_and_ping": (0x00, [tcp(c, s, 40000, 80, ACK, 7, 99, b"x"), bytes(ping), bytes([0x45, 0, 0])]),
        "dns_v4": (0x00, [udp(c, "198.18.0.2", 5353, 53, dns_query(0x1234, "www.example.test", 1))]),
        "dns_v6": (0x00, [udp(c6, "fd00::2", 5353, 53, dns_query(0x1235, "www.example.test", 28))]),
        "udp_other": (0x40, [udp(c, s, 40000, 7, b"echo me")]),
    }
    for name, (cfg, pkts) in stack.items():
        put("stack_ingress", name, bytes([cfg]) + framed(pkts))

    # vnet: MSS (2 bytes), mode (bit 0: set up a UDP checksum as the kernel
    # does), the 10-byte header (host byte order), the packet.
    def hdr(flags=0, gso=0, hdr_len=0, gso_size=0, start=0, off=0):
        return struct.pack("<BBHHHH", flags, gso, hdr_len, gso_size, start, off)

    big = tcp(c, s, 40000, 80, PSH | ACK, 1, 1, bytes(range(256)) * 12)
    vnet = {
        "udp_partial": be16(1460) + bytes([1]) + hdr(1, 0, 0, 0, 20, 6) + udp(c, s, 5353, 53, b"query"),
        "udp6_partial": be16(1460) + bytes([1]) + hdr(1, 0, 0, 0, 40, 6) + udp(c6, s6, 5353, 53, b"query"),
        "tcp_tso_v4": be16(1460) + bytes([0]) + hdr(1, 1, 40, 1448, 20, 16) + big,
        "tcp_v6": be16(1220) + bytes([0]) + hdr(0, 0) + tcp(c6, s6, 40000, 80, PSH | ACK, 1, 1, b"x" * 3000),
        "syn": be16(536) + bytes([0]) + hdr(2) + tcp(c, s, 40000, 80, SYN, 1000, 0, syn_opts=True),
        "bad_offsets": be16(1460) + bytes([0]) + hdr(1, 0, 0, 0, 60000, 6) + udp(c, s, 1, 2, b""),
        "udp_gso": be16(1460) + bytes([0]) + hdr(0, 5) + udp(c, s, 1, 2, b"x"),
    }
    for name, m in vnet.items():
        put("vnet", name, m)


def dns_seeds():
    # Config: bits 0-1 mode (virtual, virtual + upstream, tcp, virtual
    # without IPv6 pool), bits 2-3 UDP limit (none, 1472, 548, 65507), bits
    # 4-5 upstream (answers, answers, refuses, silent), bit 6 also serve the
    # queries as DNS-over-TCP. Then the query count, the framed queries, and
    # the upstream's framed answer.
    a = dns_query(0x1234, "www.example.test", 1)
    aaaa = dns_query(0x1235, "www.example.test", 28)
    mx = dns_query(0x2222, "example.org", 15)
    plain = dns_query(0x3333, "host.test", 1, edns=False)
    upstream_answer = bytearray(mx)
    upstream_answer[0:2] = b"\xaa\xaa"
    upstream_answer[2] |= 0x80
    up = framed([bytes(upstream_answer)])
    compressed = bytes(a[:12]) + bytes([0xC0, 12, 0, 1, 0, 1])
    notimp = bytearray(a)
    notimp[2] |= 0x10
    seeds = {
        "a_aaaa": (0x40, [a, aaaa, a], b""),
        "a_udp": (0x04, [a, plain], b""),
        "no_v6": (0x03, [aaaa], b""),
        "mx_forwarded": (0x41, [mx, a], up),
        "tcp_mode": (0x46, [mx, aaaa], up),
        "tcp_refused": (0x22, [mx], up),
        "tcp_silent": (0x32, [mx], b""),
        "malformed": (0x40, [a[:11], compressed, bytes(notimp), a[:20]], b""),
        "odd_ids_pin": (0x00, [dns_query(0x0001 + 2 * i, "h%d.test" % i, 1) for i in range(7)], b""),
    }
    for name, (cfg, qs, script) in seeds.items():
        put("dns_answer", name, bytes([cfg, len(qs) - 1]) + framed(qs) + script)


# --- HTTP CONNECT ---------------------------------------------------------------

def http_seeds():
    # (config byte, piece size, what the proxy says). Config: bit 0
    # credentials, bits 1-2 destination (v4, v6, name). The answers of the
    # unit tests of src/upstream/http.rs and what tinyproxy sends.
    tinyproxy_ok = b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n"
    seeds = {
        "ok_early_bytes": (0x00, 0, tinyproxy_ok + b"220 banner\r\n"),
        "ok_auth_name": (0x05, 3, b"HTTP/1.1 200 OK\r\nVia: 1.1 proxy\r\n\r\nHI"),
        "ok_v6_lf_only": (0x02, 1, b"HTTP/1.1 200 OK\nX: y\n\nlater"),
        "interim_then_ok": (0x00, 7, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
        "auth_required": (0x00, 0, b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"tinyproxy\"\r\nContent-Length: 5\r\n\r\n<p/>\n"),
        "unauthorized": (0x01, 0, b"HTTP/1.0 401 Unauthorized\r\nServer: tinyproxy/1.11.1\r\n\r\n"),
        "forbidden": (0x00, 0, b"HTTP/1.1 403 Forbidden\r\n\r\n"),
        "unable_to_connect": (0x04, 0, b"HTTP/1.0 500 Unable to connect\r\nServer: tinyproxy/1.11.1\r\nContent-Type: text/html\r\n\r\n<html>"),
        "bad_gateway": (0x00, 2, b"HTTP/1.1 502 Bad Gateway\r\n\r\n"),
        "gateway_timeout": (0x02, 0, b"HTTP/1.1 504 Gateway Timeout\r\n\r\n"),
        "cut_mid_head": (0x00, 0, b"HTTP/1.1 200 OK\r\nVia: x\r\n"),
        "not_http": (0x00, 0, bytes([5, 0, 5, 0, 0, 1]) + b"\r\n\r\n"),
    }
    for name, (cfg, piece, script) in seeds.items():
        put("http_connect", name, bytes([cfg, piece]) + script)


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    socks_seeds()
    http_seeds()
    packet_seeds()
    dns_seeds()
    for t in sorted(os.listdir(OUT)):
        print(t, len(os.listdir(os.path.join(OUT, t))))
