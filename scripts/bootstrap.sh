#!/usr/bin/env bash
# Installs what the product and its tests need, only when missing: Debian packages (pebble,
# haproxy, node/npm; with --test also testssl.sh, wrk, knot, unbound, chromium, tinyproxy and
# prometheus, for promtool), the npm packages of package.json (dynalite for the DynamoDB tests,
# axe-core for the accessibility checks in Chromium) and this Python package.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v pebble >/dev/null || missing+=(pebble)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v curl >/dev/null || missing+=(curl)
if [ "${1:-}" = "--test" ]; then
    command -v testssl >/dev/null || missing+=(testssl.sh)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v knotd >/dev/null || [ -x /usr/sbin/knotd ] || missing+=(knot)
    # Not started by the package here (no systemd); the tests run their own on loopback.
    command -v unbound >/dev/null || [ -x /usr/sbin/unbound ] || missing+=(unbound)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v promtool >/dev/null || missing+=(prometheus)
    # systemd-analyze verifies deploy/systemd's units, ip netns runs the production topology.
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v ip >/dev/null || missing+=(iproute2)
    # An operator's HTTP proxy, for the store client's proxy tests.
    command -v tinyproxy >/dev/null || missing+=(tinyproxy)
fi
if ((${#missing[@]})); then
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Every devDependency of package.json, at the versions package-lock.json pins: installed again
# when any is missing (a package added since the last bootstrap).
npm_missing() {
    node -e 'const deps = Object.keys(require("./package.json").devDependencies || {});
      process.exit(deps.some((d) => { try { require.resolve(d + "/package.json"); return false; }
                                      catch (e) { return true; } }) ? 0 : 1);'
}
if [ "${1:-}" = "--test" ] && npm_missing; then
    echo "bootstrap: installing npm packages"
    npm ci --no-audit --no-fund --loglevel=error
fi

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
if ! python3 -c "import edgectl, publisher, dnsops, control, kit, devtools, store, waitress, pythonjsonlogger" 2>/dev/null || [ -n "$extras" ]; then
    python3 -m pip install -q --disable-pip-version-check -e ".${extras}" 2>&1 | grep -v '^WARNING' || true
fi
command -v pyenv >/dev/null && pyenv rehash || true
