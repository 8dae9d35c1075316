# Shell helpers for test scripts that drive a node through its REST API (source this file):
#   free_port / free_udp   a free loopback TCP / UDP port
#   api METHOD PATH [TOKEN] [JSON]   a request to $URL/api/v10, failing on an HTTP error
#   js EXPR                          a Python expression over the JSON on stdin, as `d`
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api() { curl -fsS -X "$1" "$URL/api/v10$2" -H 'Content-Type: application/json' ${3:+-H "Authorization: $3"} ${4:+-d "$4"}; }
js() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
