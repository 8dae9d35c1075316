# Free loopback ports for test scripts (source this file). Each takes an optional address
# (default 127.0.0.1) and prints a port the kernel just handed out:
#   free_port [IP]    a TCP port (HTTP listeners)
#   free_udp [IP]     a UDP port (QUIC trunks, relays)
#   free_media [IP] [COUNT]
#                     the first of COUNT consecutive ports, each free for UDP *and* a TCP
#                     listener: a node's media port carries ICE-TCP on the same number (a
#                     UDP-only pick can land on a port an outgoing TCP connection is using; the
#                     cluster step once failed so), and media worker i listens on port + i.
#                     COUNT defaults to this machine's cores, as a node's media workers do.
# A port can still be taken between the pick and the node's bind; the pick only makes that rare.
_free() {
  python3 - "$1" "${2:-127.0.0.1}" "${3:-}" <<'PY'
import os, socket, sys
kind, ip = sys.argv[1], sys.argv[2]
count = max(1, int(sys.argv[3])) if sys.argv[3] else min(os.cpu_count() or 1, 64)

def both_free(port):
    """Whether `port` can be bound for UDP and for a TCP listener right now."""
    socks = []
    try:
        for t in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, t)
            socks.append(s)
            s.bind((ip, port))
            if t == socket.SOCK_STREAM:
                s.listen(1)
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()

for _ in range(50):
    first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind != "tcp" else socket.SOCK_STREAM)
    first.bind((ip, 0))
    port = first.getsockname()[1]
    first.close()
    if kind != "media":
        print(port); sys.exit(0)
    if port + count - 1 <= 65535 and all(both_free(p) for p in range(port, port + count)):
        print(port); sys.exit(0)
sys.exit(f"no {count} consecutive ports free for both UDP and TCP on {ip} after 50 tries")
PY
}
free_port() { _free tcp "${1:-}"; }
free_udp() { _free udp "${1:-}"; }
free_media() { _free media "${1:-}" "${2:-}"; }
