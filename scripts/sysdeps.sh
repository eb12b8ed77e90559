#!/usr/bin/env bash
# Install the system programs the test suite drives for real (idempotent).
#
#   prometheus, promtool  <- Debian package `prometheus`
#   docker-compose        <- Debian package `docker-compose` (v1; `config` validates offline)
#   redis-server          <- Debian package `redis-server`
#
# As root: runs `apt-get update -qq` once and installs only the packages whose command is
# missing. Otherwise: prints what is missing and exits 0, so `make test` still runs (the
# tests that need a missing program skip with a reason naming its package).
set -uo pipefail

declare -A PACKAGE_OF=(
    [prometheus]=prometheus
    [promtool]=prometheus
    [docker-compose]=docker-compose
    [redis-server]=redis-server
)

missing_packages() {
    local cmd pkgs=()
    for cmd in "${!PACKAGE_OF[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || pkgs+=("${PACKAGE_OF[$cmd]}")
    done
    # unique, stable order
    printf '%s\n' "${pkgs[@]}" | sed '/^$/d' | sort -u
}

mapfile -t missing < <(missing_packages)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "sysdeps: prometheus, promtool, docker-compose, redis-server present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "sysdeps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        mapfile -t still < <(missing_packages)
        if [ "${#still[@]}" -gt 0 ]; then
            echo "sysdeps: still missing after install: ${still[*]}" >&2
        fi
    else
        echo "sysdeps: apt-get failed; tests needing ${missing[*]} will skip" >&2
    fi
else
    echo "sysdeps: missing packages: ${missing[*]} (not root or no apt-get: install them to run every test;"
    echo "         the tests that need them skip with a reason naming the package)"
fi
exit 0
