#!/usr/bin/env bash
# Tear down the fake cluster of up.sh: kill what runs in its namespaces, delete them.
# Safe to run any number of times, also when nothing is up.
prefix=${HVAMS_NETNS_PREFIX:-hvams}
state=${HVAMS_NETNS_STATE:-/tmp/$prefix-netns}
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$prefix-(sw|h[0-9]+)$"); do
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  rm -rf "/etc/netns/$ns"
done
rm -rf "$state"
exit 0
