#!/usr/bin/env bash
# Builds kube-apiserver (the k8s.io/kubernetes version in this folder's go.mod)
# from the Go module proxy and provides etcd, into a cache folder outside the
# checkout, once per machine:
#
#   ${SIGIL_KUBE_ASSETS:-${SIGIL_CACHE:-$HOME/.cache/sigil}/kube/<version>}
#
# It prints that folder (the KUBEBUILDER_ASSETS of envtest: it holds
# kube-apiserver and etcd) and does nothing else when both are present.
# Cold, the build takes ~6.5 min on 2 cores and ~2.8 GB of memory; a relink
# ~10 s. internal/testutil/kubetest finds the folder the same way.
#
# etcd: the etcd on PATH (Debian's etcd-server), installed with apt-get when
# missing and running as root; otherwise built from go.etcd.io/etcd/server/v3
# (./etcd, ~1 min cold).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$here/go.mod")
[ -n "$version" ] || { echo "build.sh: no k8s.io/kubernetes version in $here/go.mod" >&2; exit 1; }
dir=${SIGIL_KUBE_ASSETS:-${SIGIL_CACHE:-$HOME/.cache/sigil}/kube/$version}
mkdir -p "$dir"

if [ ! -x "$dir/kube-apiserver" ]; then
  echo "build.sh: building kube-apiserver $version into $dir (cold: ~6.5 min)" >&2
  minor=${version#v1.}; minor=${minor%%.*}
  tmp="$dir/.kube-apiserver.$$"
  trap 'rm -f "$tmp"' EXIT
  (cd "$here" && nice -n 10 go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$version \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
    -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$tmp" "$dir/kube-apiserver"
  trap - EXIT
fi

if [ ! -x "$dir/etcd" ]; then
  etcd=$(command -v etcd || true)
  if [ -z "$etcd" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "build.sh: apt-get install etcd-server" >&2
    if apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; then
      etcd=$(command -v etcd || true)
    fi
  fi
  if [ -n "$etcd" ]; then
    ln -sfn "$etcd" "$dir/etcd"
  else
    echo "build.sh: building etcd from $here/etcd (cold: ~1 min)" >&2
    tmp="$dir/.etcd.$$"
    trap 'rm -f "$tmp"' EXIT
    (cd "$here/etcd" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$tmp" .)
    mv "$tmp" "$dir/etcd"
    trap - EXIT
  fi
fi
echo "$dir"
