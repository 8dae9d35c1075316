# Shell helpers for test scripts that drive a node through its REST API (source this file):
#   free_port / free_udp / free_media   from ports.sh (sourced here)
#   api METHOD PATH [TOKEN] [JSON]   a request to $URL/api/v10, failing on an HTTP error
#   js EXPR                          a Python expression over the JSON on stdin, as `d`
#   wait_ready                       wait (10 s at most) until $URL/readyz answers, else fail
#   guild_with_member OWNER MEMBER NAME   OWNER's token creates guild NAME and an invite, which
#                                    MEMBER's token accepts; sets GID, TEXT, VOICE and INVITE
# shellcheck source=ports.sh
. "$(dirname "${BASH_SOURCE[0]}")/ports.sh"
api() { curl -fsS -X "$1" "$URL/api/v10$2" -H 'Content-Type: application/json' ${3:+-H "Authorization: $3"} ${4:+-d "$4"}; }
js() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
wait_ready() {
  for _ in $(seq 1 100); do curl -fs "$URL/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "$URL/readyz" >/dev/null
}
guild_with_member() {
  local g
  g=$(api POST /guilds "$1" "{\"name\":\"$3\"}")
  GID=$(js 'd["id"]' <<<"$g")
  TEXT=$(js '[c["id"] for c in d["channels"] if c["type"]==0][0]' <<<"$g")
  VOICE=$(js '[c["id"] for c in d["channels"] if c["type"]==2][0]' <<<"$g")
  INVITE=$(api POST "/channels/$TEXT/invites" "$1" '{"max_age":3600}' | js 'd["code"]')
  api POST "/invites/$INVITE" "$2" >/dev/null
}
