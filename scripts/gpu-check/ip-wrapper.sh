#!/bin/sh
# `ip` for a machine without iproute2: runs Debian's ip with its two libraries beside it,
# and keeps LD_LIBRARY_PATH away from what `ip netns exec` starts (vLLM, Ray, daemons).
here=$(dirname "$(readlink -f "$0")")
IPW_ORIG_LDLP=${LD_LIBRARY_PATH-__unset__}
export IPW_ORIG_LDLP
LD_LIBRARY_PATH=$here/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
if [ "$1" = netns ] && [ "$2" = exec ]; then
  ns=$3
  shift 3
  exec "$here/ip.real" netns exec "$ns" "$here/netns-restore-env" "$@"
fi
exec "$here/ip.real" "$@"
