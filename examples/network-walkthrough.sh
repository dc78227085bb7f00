#!/usr/bin/env bash
# The capture behind docs/guide.md "pybuild's bridge, seen on the wire": a request from a
# client container to `web` by name, and one from the host to a published port, with the
# kernel's view of each (addresses, forwarding table, packets, NAT rules, conntrack).
#
# Everything runs inside a network namespace made for it (`pbguide`) and deleted at the
# end, so no bridge, rule or packet touches the machine's own network. Needs root, the
# django-app image in the store (`make demo` builds it; PYBUILD_ROOT selects the store),
# tcpdump and conntrack (both in the Makefile's APT_PACKAGES).
set -euo pipefail

ns=pbguide
if [[ ${1:-} != inner ]]; then
    [[ $EUID -eq 0 ]] || { echo "network-walkthrough.sh: run as root" >&2; exit 1; }
    ip netns add "$ns"
    trap 'ip netns delete "$ns"' EXIT
    ip -n "$ns" link set lo up
    status=0
    nsenter --net="/run/netns/$ns" bash "$0" inner || status=$?
    exit "$status"  # never fall through: the rest runs only inside the namespace
fi
[[ $(readlink /proc/self/ns/net) != $(readlink /proc/1/ns/net) ]] || {
    echo "network-walkthrough.sh: refusing to run in the host's network namespace" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if ! command -v pybuild >/dev/null 2>&1; then
    pybuild() { PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" python3 -m pybuild "$@"; }
fi
show() { printf '$ %s\n' "$*"; eval "$@" 2>&1; }
tmp=$(mktemp -d)
# on a failure too: the container and network go before the namespace does
trap 'pybuild rm -f web >/dev/null 2>&1 || true; pybuild network rm appnet >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

show pybuild network create appnet
show pybuild run -d --name web --network appnet -p 127.0.0.1:8000:8000 \
    -e DJANGO_ALLOWED_HOSTS=web,localhost,127.0.0.1 django-app
for _ in $(seq 60); do
    curl -fs --max-time 2 http://127.0.0.1:8000/healthz >/dev/null && break
    sleep 1
done
show pybuild ps
nid=$(pybuild network inspect appnet | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Id"])')
cid=$(pybuild inspect web | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Id"])')
br=pb-${nid:0:12}
show ip addr show "$br"
show ip -br link
show ip netns list
show ip netns exec "pybuild-${cid:0:12}" ip addr
show ip netns exec "pybuild-${cid:0:12}" ip route
show bridge fdb show br "$br" '|' grep -v permanent

echo '--- container to container, by name'
tcpdump -i "$br" -nn -t -l -A 'arp or udp port 53 or tcp port 8000' >"$tmp/client.txt" 2>/dev/null &
dump=$!
sleep 1
show pybuild run --rm --network appnet --entrypoint python django-app -c \
    "\"import urllib.request as u; print(u.urlopen('http://web:8000/healthz').read())\""
sleep 1
kill "$dump"; wait "$dump" 2>/dev/null || true
echo "$ tcpdump -i $br -nn -t -l -A 'arp or udp port 53 or tcp port 8000'   # packets, then the HTTP lines"
grep -E '^(ARP|IP)[ ,]|GET /|HTTP/1\.1 [0-9]' "$tmp/client.txt" |
    sed -E 's/^.*(GET \/[^ ]* HTTP\/1\.1|HTTP\/1\.1 [0-9]{3} .*)$/    \1/'
show bridge fdb show br "$br" '|' grep -v permanent

echo '--- host to the published port'
tcpdump -i "$br" -nn -t -l 'tcp port 8000' >"$tmp/host.txt" 2>/dev/null &
dump=$!
sleep 1
show curl -s http://127.0.0.1:8000/healthz
echo
sleep 1
kill "$dump"; wait "$dump" 2>/dev/null || true
echo "$ tcpdump -i $br -nn -t -l 'tcp port 8000'"
cat "$tmp/host.txt"
show iptables-save -t nat '|' grep -v '^#'
show conntrack -L -p tcp --orig-port-dst 8000

echo '--- cleanup'
show pybuild rm -f web
show pybuild network rm appnet
show ip -br link
show iptables-save -t nat '|' grep -E "'DNAT|10\\.89'" '||' true
show ip netns list
