#!/usr/bin/env bash
# Checks the example alert rules with Prometheus's promtool (syntax and the
# unit tests in examples/prometheus/alerts_test.yml). promtool comes from
# Debian's prometheus package, unpacked without installing it (installing
# would start a Prometheus server on this machine).
set -euo pipefail
cd "$(dirname "$0")/.."
promtool="${PROMTOOL:-}"
if [ -z "$promtool" ]; then
  promtool="$(command -v promtool || true)"
fi
if [ -z "$promtool" ]; then
  dir=/var/cache/synbak-ci/promtool
  promtool="$dir/usr/bin/promtool"
  if [ ! -x "$promtool" ]; then
    echo "ci: fetching promtool (Debian's prometheus package, unpacked only)"
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || { apt-get update >/dev/null && (cd "$tmp" && apt-get download prometheus); }
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$dir"
    rm -rf "$tmp"
  fi
fi
"$promtool" check rules examples/prometheus/alerts.yml
(cd examples/prometheus && "$promtool" test rules alerts_test.yml)
