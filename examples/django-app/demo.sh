#!/usr/bin/env bash
# `make demo`: build this Django example with pybuild and run it on http://127.0.0.1:8000/:
# on the default `pybuild` bridge, its port 8000 published on the host's 127.0.0.1:8000.
# Run from the repository root, as root, once the dependencies are installed (make deps).
# Idempotent: a second run rebuilds (from cache) and restarts the container.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
base_ref=localhost/debian-python:bookworm
cache_dir=${PYBUILD_DEMO_CACHE:-/var/cache/pybuild-demo}
base_tar=$cache_dir/debian-python-bookworm.tar
name=django-app
url=http://127.0.0.1:8000/
ca_bundle=/etc/ssl/certs/ca-certificates.crt

# The console script when pip installed it, else (or with PYBUILD_DEMO_CHECKOUT=1, as the
# tests do) the package straight from this checkout.
if [[ -z ${PYBUILD_DEMO_CHECKOUT:-} ]] && command -v pybuild >/dev/null 2>&1; then
    pb=(pybuild)
else
    pb=(env "PYTHONPATH=$here/../..${PYTHONPATH:+:$PYTHONPATH}" python3 -m pybuild)
fi

step() { printf '\n==> %s\n' "$*"; }

if [[ $EUID -ne 0 ]]; then
    echo "demo.sh: run as root (building runs steps in overlay mounts through runc)" >&2
    exit 1
fi

# 1. The base image: Debian bookworm + Python, made once from the Debian mirror (no Docker Hub).
if [[ ! -s $base_tar ]]; then
    step "making the base image tarball $base_tar (about a minute, once)"
    mkdir -p "$cache_dir"
    "$here/base-image.sh" "$base_tar"
fi
if "${pb[@]}" images | awk -v r="${base_ref%:*}" -v t="${base_ref##*:}" \
        '$1 == r && $2 == t { found = 1 } END { exit !found }'; then
    step "$base_ref already imported"
else
    step "importing $base_tar as $base_ref"
    "${pb[@]}" import "$base_tar" "$base_ref"
fi

# 2. Build. The host's CA bundle goes in as a build secret so pip inside the build trusts
#    the same (possibly TLS-intercepting) network the host does; it never enters a layer.
secret=()
if [[ -s $ca_bundle ]]; then
    secret=(--secret "id=pip-ca,src=$ca_bundle")
fi
step "pybuild build -t $name ${secret[*]} $here"
"${pb[@]}" build -t "$name" "${secret[@]}" "$here"

# 3. Run, replacing a container left by an earlier run.
step "starting container $name"
"${pb[@]}" rm -f "$name" >/dev/null 2>&1 || true
if (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null; then
    echo "demo.sh: something else already listens on 127.0.0.1:8000; stop it and retry" >&2
    exit 1
fi
"${pb[@]}" run -d --name "$name" -p 127.0.0.1:8000:8000 "$name"

# 4. Wait for gunicorn (migrations run first), then show the page.
step "waiting for $url"
for _ in $(seq 60); do
    if page=$(curl -fsS --max-time 2 "$url" 2>/dev/null); then
        printf '%s\n' "$page" | head -n 15
        "${pb[@]}" ps
        step "the Django site built by pybuild is up at $url (stop it: ${pb[*]} rm -f $name)"
        exit 0
    fi
    sleep 1
done
echo "demo.sh: $url did not answer within 60 s" >&2
exit 1
