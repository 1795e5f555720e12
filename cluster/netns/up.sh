#!/usr/bin/env bash
# A fake cluster on this machine: N hosts as network namespaces on one bridge.
#   cluster/netns/up.sh N [RATE]      RATE: e.g. 1gbit, 100mbit; none (default) = no limit
# Host i is the namespace PREFIX-hI (hostname PREFIX-hI, address 198.18.0.(10+I)/24 on eth0),
# wired to a bridge in the namespace PREFIX-sw. Addresses are from 198.18.0.0/15 (RFC 2544,
# benchmarking), and no namespace has a default route: traffic stays among these namespaces.
# RATE limits each host's link in both directions (tbf on eth0 and on its bridge port).
# Writes STATE/hostfile (one line per host, SLOTS slots each) and STATE/hosts.
# Env: HVAMS_NETNS_PREFIX (hvams), HVAMS_NETNS_STATE (/tmp/PREFIX-netns), SLOTS (2).
# Tear down with cluster/netns/down.sh (also run first, so a half-built cluster is replaced).
set -euo pipefail
n=${1:?number of hosts}; rate=${2:-none}
prefix=${HVAMS_NETNS_PREFIX:-hvams}
state=${HVAMS_NETNS_STATE:-/tmp/$prefix-netns}
slots=${SLOTS:-2}
here=$(cd "$(dirname "$0")" && pwd)
"$here/down.sh" >/dev/null 2>&1 || true
sw=$prefix-sw
ip netns add "$sw"
ip -n "$sw" link set lo up
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up
mkdir -p "$state"
: > "$state/hostfile"
printf '127.0.0.1 localhost\n' > "$state/hosts"
for i in $(seq 1 "$n"); do
  printf '198.18.0.%d %s-h%d\n' $((10 + i)) "$prefix" "$i" >> "$state/hosts"
done
for i in $(seq 1 "$n"); do
  h=$prefix-h$i
  ip netns add "$h"
  ip -n "$sw" link add "p$i" type veth peer name eth0 netns "$h"
  ip -n "$sw" link set "p$i" master br0 up
  ip -n "$h" link set lo up
  ip -n "$h" addr add "198.18.0.$((10 + i))/24" dev eth0
  ip -n "$h" link set eth0 up
  # `ip netns exec` mounts /etc/netns/NAME/hosts over /etc/hosts: every host finds the others.
  mkdir -p "/etc/netns/$h"
  cp "$state/hosts" "/etc/netns/$h/hosts"
  echo "$h slots=$slots" >> "$state/hostfile"
done
echo "$n" > "$state/size"
# tbf both ways: host -> bridge on eth0, bridge -> host on the bridge port.
"$here/rate.sh" "$rate"
echo "fake cluster: $n hosts ($prefix-h1..$prefix-h$n, 198.18.0.11-$((10 + n))), links: $rate; hostfile $state/hostfile"
