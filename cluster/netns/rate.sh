#!/usr/bin/env bash
# Set every fake host's link limit (both directions) on a running cluster of up.sh.
#   cluster/netns/rate.sh RATE      RATE: e.g. 1gbit, 100mbit; none = no limit
set -euo pipefail
rate=${1:?rate or none}
prefix=${HVAMS_NETNS_PREFIX:-hvams}
state=${HVAMS_NETNS_STATE:-/tmp/$prefix-netns}
n=$(cat "$state/size" 2>/dev/null) || { echo "no fake cluster: run cluster/netns/up.sh N first" >&2; exit 2; }
for i in $(seq 1 "$n"); do
  for end in "$prefix-h$i eth0" "$prefix-sw p$i"; do
    set -- $end
    ip netns exec "$1" tc qdisc del dev "$2" root 2>/dev/null || true
    if [ "$rate" != none ]; then
      ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$rate" burst 256kb latency 100ms
    fi
  done
done
echo "$rate" > "$state/rate"
