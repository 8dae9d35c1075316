# Free loopback ports for test scripts (source this file). Each takes an optional address
# (default 127.0.0.1) and prints a port the kernel just handed out:
#   free_port [IP]    a TCP port (HTTP listeners)
#   free_udp [IP]     a UDP port (QUIC trunks, relays)
#   free_media [IP]   a port free for UDP *and* a TCP listener: a node's media port carries
#                     ICE-TCP on the same number, and a UDP-only pick can land on a port an
#                     outgoing TCP connection is using (the cluster step once failed so)
# A port can still be taken between the pick and the node's bind; the pick only makes that rare.
_free() {
  python3 - "$1" "${2:-127.0.0.1}" <<'PY'
import socket, sys
kind, ip = sys.argv[1], sys.argv[2]
for _ in range(50):
    first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind != "tcp" else socket.SOCK_STREAM)
    first.bind((ip, 0))
    port = first.getsockname()[1]
    if kind != "media":
        print(port); sys.exit(0)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        tcp.bind((ip, port)); tcp.listen(1)
    except OSError:
        continue
    finally:
        tcp.close(); first.close()
    print(port); sys.exit(0)
sys.exit("no port free for both UDP and TCP on " + ip + " after 50 tries")
PY
}
free_port() { _free tcp "${1:-}"; }
free_udp() { _free udp "${1:-}"; }
free_media() { _free media "${1:-}"; }
