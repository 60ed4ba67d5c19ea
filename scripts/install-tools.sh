#!/usr/bin/env bash
# Installs the real components the integration tests run against into a cache outside the repo:
#   ${MESHCA_TOOLS:-$HOME/.cache/meshca-tools}/bin
#
# Usage: scripts/install-tools.sh [component...]     (default: all, in this order)
#        scripts/install-tools.sh --bin-dir           (print the bin dir and exit)
#        scripts/install-tools.sh --list              (print the component names)
# Components: etcd kube-apiserver pilot-agent istio-ca step-ca step vault
#
# A component is skipped when its binary exists and its stamp file records the same recipe hash
# (version + build recipe + wrapper go.mod), so a rerun takes seconds. Builds are serialised per
# component with flock, so concurrent runs (several sessions, CI) do not clobber each other.
# Prints one line per component: "<name>: built|cached (<N>s)". Exits non-zero if a build fails;
# the build log is in $MESHCA_TOOLS/logs/<name>.log and its tail is printed.
#
# Env: MESHCA_TOOLS (cache dir), MESHCA_ETCD_FROM_SOURCE=1 (build etcd instead of apt),
#      MESHCA_TOOLS_NICE (nice level for builds, default 10).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RECIPES="$SCRIPT_DIR/tools"
MESHCA_TOOLS=${MESHCA_TOOLS:-$HOME/.cache/meshca-tools}
BIN="$MESHCA_TOOLS/bin"
BUILD="$MESHCA_TOOLS/build"
STAMPS="$MESHCA_TOOLS/stamps"
LOGS="$MESHCA_TOOLS/logs"
LOCKS="$MESHCA_TOOLS/locks"
NICE=${MESHCA_TOOLS_NICE:-10}

ALL=(etcd kube-apiserver pilot-agent istio-ca step-ca step vault)

KUBE_VERSION=v1.36.3
ETCD_VERSION=v3.6.16 # source fallback only; apt gives Debian's etcd-server (3.4.x)
ISTIO_VERSION=v0.0.0-20260827124520-eed52ebb66ad
STEPCA_VERSION=v0.30.2
STEPCLI_VERSION=v0.29.0
VAULT_VERSION=v1.21.1

case "${1:-}" in
--bin-dir)
	echo "$BIN"
	exit 0
	;;
--list)
	printf '%s\n' "${ALL[@]}"
	exit 0
	;;
-h | --help)
	sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
esac

mkdir -p "$BIN" "$BUILD" "$STAMPS" "$LOGS" "$LOCKS"

export CGO_ENABLED=${CGO_ENABLED:-0}
export GOFLAGS="-buildvcs=false -trimpath"
export GOTOOLCHAIN=local

gobuild() { nice -n "$NICE" go "$@"; }

# prepare_wrapper NAME: copy the committed wrapper go.mod into a build dir, resolve go.sum there.
prepare_wrapper() {
	local name=$1 dir="$BUILD/$1"
	mkdir -p "$dir"
	if ! cmp -s "$RECIPES/$name/go.mod" "$dir/go.mod.recipe"; then
		rm -f "$dir/go.sum"
		cp "$RECIPES/$name/go.mod" "$dir/go.mod"
		cp "$RECIPES/$name/go.mod" "$dir/go.mod.recipe"
	fi
	(cd "$dir" && gobuild mod tidy)
}

build_etcd() {
	if [[ "${MESHCA_ETCD_FROM_SOURCE:-}" != 1 ]]; then
		if [[ -x /usr/bin/etcd ]] || {
			command -v apt-get >/dev/null &&
				{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server ||
					{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server; }; }
		}; then
			if [[ -x /usr/bin/etcd ]]; then
				ln -sf /usr/bin/etcd "$BIN/etcd"
				return 0
			fi
		fi
		echo "apt etcd-server failed; building etcd $ETCD_VERSION from source"
	fi
	prepare_wrapper etcd
	(cd "$BUILD/etcd" && gobuild build -ldflags "-s -w" -o "$BIN/etcd.new" go.etcd.io/etcd/server/v3)
	mv -f "$BIN/etcd.new" "$BIN/etcd"
}
etcd_recipe() {
	if [[ "${MESHCA_ETCD_FROM_SOURCE:-}" == 1 ]]; then
		echo "source $ETCD_VERSION"
		cat "$RECIPES/etcd/go.mod"
	else
		# re-link when the Debian package changes (or disappears)
		echo "apt $(dpkg-query -W -f='${Version}' etcd-server 2>/dev/null || echo none)"
	fi
}

build_kube-apiserver() {
	prepare_wrapper kube-apiserver
	local v=$KUBE_VERSION major minor ld=""
	major=${v#v}
	major=${major%%.*}
	minor=$(echo "$v" | cut -d. -f2)
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	(cd "$BUILD/kube-apiserver" && gobuild build -ldflags "-s -w$ld" -o "$BIN/kube-apiserver.new" k8s.io/kubernetes/cmd/kube-apiserver)
	mv -f "$BIN/kube-apiserver.new" "$BIN/kube-apiserver"
	"$BIN/kube-apiserver" --version | grep -q "$v" || {
		echo "kube-apiserver reports $("$BIN/kube-apiserver" --version), want $v"
		return 1
	}
}
kube-apiserver_recipe() { echo "$KUBE_VERSION ldflags-v1"; cat "$RECIPES/kube-apiserver/go.mod"; }

build_pilot-agent() {
	prepare_wrapper pilot-agent
	(cd "$BUILD/pilot-agent" && gobuild build -ldflags "-s -w" -o "$BIN/pilot-agent.new" istio.io/istio/pilot/cmd/pilot-agent)
	mv -f "$BIN/pilot-agent.new" "$BIN/pilot-agent"
}
pilot-agent_recipe() { echo "$ISTIO_VERSION"; cat "$RECIPES/pilot-agent/go.mod"; }

# istio-ca: Istio's own CA server code (security/pkg/server/ca with its Kubernetes authenticator),
# the broker's benchmark peer (scripts/bench-vs-istio.sh). Its main.go lives next to its go.mod and
# is copied before tidying, so tidy sees its imports.
build_istio-ca() {
	mkdir -p "$BUILD/istio-ca"
	cp "$RECIPES/istio-ca/main.go" "$BUILD/istio-ca/main.go"
	prepare_wrapper istio-ca
	(cd "$BUILD/istio-ca" && gobuild build -ldflags "-s -w" -o "$BIN/istio-ca.new" .)
	mv -f "$BIN/istio-ca.new" "$BIN/istio-ca"
}
istio-ca_recipe() { echo "$ISTIO_VERSION"; cat "$RECIPES/istio-ca/go.mod" "$RECIPES/istio-ca/main.go"; }

build_step-ca() {
	local tmp="$BUILD/step-ca-bin"
	mkdir -p "$tmp"
	GOBIN="$tmp" gobuild install -ldflags "-s -w -X main.Version=${STEPCA_VERSION#v}" \
		"github.com/smallstep/certificates/cmd/step-ca@$STEPCA_VERSION"
	mv -f "$tmp/step-ca" "$BIN/step-ca"
}
step-ca_recipe() { echo "$STEPCA_VERSION cgo0"; }

build_step() {
	local tmp="$BUILD/step-bin"
	mkdir -p "$tmp"
	GOBIN="$tmp" gobuild install -ldflags "-s -w -X main.Version=${STEPCLI_VERSION#v}" \
		"github.com/smallstep/cli/cmd/step@$STEPCLI_VERSION"
	mv -f "$tmp/step" "$BIN/step"
}
step_recipe() { echo "$STEPCLI_VERSION cgo0"; }

build_vault() {
	prepare_wrapper vault
	(cd "$BUILD/vault" && gobuild build -ldflags "-s -w" -o "$BIN/vault.new" github.com/hashicorp/vault)
	mv -f "$BIN/vault.new" "$BIN/vault"
}
vault_recipe() { echo "$VAULT_VERSION"; cat "$RECIPES/vault/go.mod"; }

recipe_hash() {
	{
		"$1_recipe"
		declare -f "build_$1"
	} | sha256sum | cut -c1-16
}

install_one() {
	local name=$1 hash start log rc
	hash=$(recipe_hash "$name")
	start=$(date +%s)
	log="$LOGS/$name.log"
	exec {lockfd}>"$LOCKS/$name.lock"
	flock "$lockfd"
	if [[ -x "$BIN/$name" && "$(cat "$STAMPS/$name" 2>/dev/null)" == "$hash" ]]; then
		echo "$name: cached ($(($(date +%s) - start))s)"
		exec {lockfd}>&-
		return 0
	fi
	rm -f "$STAMPS/$name"
	set +e
	(
		set -e
		"build_$name"
	) >"$log" 2>&1
	rc=$?
	set -e
	if [[ $rc -ne 0 || ! -x "$BIN/$name" ]]; then
		echo "$name: FAILED after $(($(date +%s) - start))s (log: $log)" >&2
		tail -n 30 "$log" >&2
		exec {lockfd}>&-
		return 1
	fi
	# Recomputed: a recipe may depend on what the build installed (etcd's apt package version).
	recipe_hash "$name" >"$STAMPS/$name"
	echo "$name: built ($(($(date +%s) - start))s)"
	exec {lockfd}>&-
}

components=("$@")
[[ ${#components[@]} -eq 0 ]] && components=("${ALL[@]}")
for c in "${components[@]}"; do
	if ! declare -F "build_$c" >/dev/null; then
		echo "unknown component: $c (known: ${ALL[*]})" >&2
		exit 2
	fi
done
failed=0
for c in "${components[@]}"; do
	install_one "$c" || failed=1
done
exit $failed
