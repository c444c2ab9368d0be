#!/usr/bin/env bash
# Renders the Helm chart deploy/helm/sigil into the plain manifests
# deploy/manifests/sigil.yaml (CRDs included, namespace spire-system created,
# Kubernetes 1.37), with the helm that tools/helm/build.sh builds. The chart
# test (internal/controller/chart) fails when the file is not what this
# script writes.
set -euo pipefail
cd "$(dirname "$0")/.."
helm=$(bash tools/helm/build.sh)
{
  echo "# Rendered from deploy/helm/sigil by deploy/render.sh: do not edit."
  "$helm" template sigil deploy/helm/sigil --namespace spire-system --kube-version 1.37.2 --include-crds --set namespace.create=true
} > deploy/manifests/sigil.yaml
echo "deploy/manifests/sigil.yaml"
