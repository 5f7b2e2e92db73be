#!/usr/bin/env bash
# The whole product on one machine (Pebble, HAProxy, control service, sample app): `edgectl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec python3 -m control demo "$@"
