# Three network namespaces joined by a router, for suites that firewall a browser from the node
# (sourced by tests/turn/run.sh and tests/ice-tcp/run.sh; needs root):
#
#   B (browser) 10.X.0.2 ── b0 | rb 10.X.0.1 ── R (router, forwards) ── 10.X.1.1 rn | n0 ── 10.X.1.2 N (node)
#
# `netns_three NAME X` sets B, R and N (names carrying NAME and this shell's pid, so parallel
# runs and leftovers of killed runs never collide), removes namespaces of NAME whose run is gone,
# builds the topology, and installs an EXIT trap that kills every pid in PIDS and whatever still
# runs in the namespaces (Chromium helpers), then deletes them.

netns_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in "$B" "$R" "$N"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

netns_three() {
  local name=$1 x=$2 ns l
  B="lodge-$name-b-$$"; R="lodge-$name-r-$$"; N="lodge-$name-n-$$"
  PIDS=()
  # Namespaces left by a run that was killed with -9 (its pid is gone) are removed first.
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^lodge-$name-[a-z]-[0-9]+\$" || true); do
    kill -0 "${ns##*-}" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
  done
  trap netns_cleanup EXIT
  for ns in "$B" "$R" "$N"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
  ip link add rb netns "$R" type veth peer name b0 netns "$B"
  ip link add rn netns "$R" type veth peer name n0 netns "$N"
  ip -n "$R" addr add "10.$x.0.1/24" dev rb
  ip -n "$R" addr add "10.$x.1.1/24" dev rn
  ip -n "$B" addr add "10.$x.0.2/24" dev b0
  ip -n "$N" addr add "10.$x.1.2/24" dev n0
  for l in "$R rb" "$R rn" "$B b0" "$N n0"; do set -- $l; ip -n "$1" link set "$2" up; done
  ip -n "$B" route add default via "10.$x.0.1"
  ip -n "$N" route add default via "10.$x.1.1"
  ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
}
