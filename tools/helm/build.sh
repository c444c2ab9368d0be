#!/usr/bin/env bash
# Builds the helm CLI (the helm.sh/helm/v3 version in this folder's go.mod)
# from the Go module proxy into a cache folder outside the checkout, once
# per machine:
#
#   ${SIGIL_HELM:-${SIGIL_CACHE:-$HOME/.cache/sigil}/helm/<version>/helm}
#
# It prints the binary's path and does nothing else when it is present.
# Cold, the build takes 3-12 min on 2 shared cores (~400 MB of modules).
# .ci/run calls it; the chart test (internal/controller/chart) finds the
# binary the same way.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v/ { print $2; exit }' "$here/go.mod")
[ -n "$version" ] || { echo "build.sh: no helm.sh/helm/v3 version in $here/go.mod" >&2; exit 1; }
bin=${SIGIL_HELM:-${SIGIL_CACHE:-$HOME/.cache/sigil}/helm/$version/helm}
if [ ! -x "$bin" ]; then
  echo "build.sh: building helm $version into $bin" >&2
  mkdir -p "$(dirname "$bin")"
  tmp="$bin.$$"
  trap 'rm -f "$tmp"' EXIT
  (cd "$here" && nice -n 10 go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
    -o "$tmp" helm.sh/helm/v3/cmd/helm)
  mv "$tmp" "$bin"
  trap - EXIT
fi
echo "$bin"
