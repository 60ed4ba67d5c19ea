#!/usr/bin/env bash
# Side-by-side load benchmark: the broker against Istio's own CA server code, on the same
# identities and the same real kube-apiserver (integration/loadbench_test.go, issue 7).
#
# Usage: scripts/bench-vs-istio.sh [extra go test flags]
#
# Creates N workloads (a ServiceAccount, a Pending pod and a pod-bound TokenRequest token each),
# then, per concurrency, runs a burst of one certificate per workload (fresh TLS connection per
# workload, the agent's retries, every chain verified) against each target in turn, pausing 11s
# between runs (kube-apiserver caches TokenReviews for 10s), and prints a table with ratios to
# Istio's CA: certificates/s, p50/p90/p99, CPU ms per certificate of the CA and the API server.
# Targets: broker-local (local token verification, the default), broker-tokenreview,
# broker-jwks, istio-ca (security/pkg/server/ca + kubeauth with istiod's kube client limits,
# QPS/burst 80/160, which cap it near 80 TokenReviews/s) and istio-ca-qps1000 (the same with the
# broker's limits, 1000/2000, to compare the servers' own costs). A broker target may run another
# build or environment: broker-local@/tmp/broker-old, broker-local+GOGC=100.
#
# Env (defaults in brackets): N [5000], CONCURRENCY [16,64], RUNS [2, per target and
# concurrency], TARGETS [broker-local,broker-tokenreview,istio-ca,istio-ca-qps1000,broker-jwks],
# KEY [ECDSA-P256 | RSA-2048], SHARED [0 = fresh TLS per workload], NAMESPACES [10],
# PAUSE [11s], BROKER_CA_KEY [ECDSA-P256, the broker's default; RSA-2048 is Istio's],
# PERF_DIR [unset; set to record `perf` profiles of the broker runs and Go CPU profiles of the load generator], OUT [${TMPDIR:-/tmp}/bench-vs-istio.txt:
# the tables], TIMEOUT [90m].
#
# The machine is shared by the load generator, the CAs and the API server: numbers are for one
# host; noise between runs can reach 25%, so compare ratios and use RUNS>1 for medians.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-tools.sh etcd kube-apiserver istio-ca

export MESHCA_LOADBENCH=1 MESHCA_INTEGRATION=1
export MESHCA_LOADBENCH_N=${N:-5000}
export MESHCA_LOADBENCH_CONCURRENCY=${CONCURRENCY:-16,64}
export MESHCA_LOADBENCH_RUNS=${RUNS:-2}
export MESHCA_LOADBENCH_TARGETS=${TARGETS:-broker-local,broker-tokenreview,istio-ca,istio-ca-qps1000,broker-jwks}
export MESHCA_LOADBENCH_KEY=${KEY:-ECDSA-P256}
export MESHCA_LOADBENCH_SHARED=${SHARED:-0}
export MESHCA_LOADBENCH_NAMESPACES=${NAMESPACES:-10}
export MESHCA_LOADBENCH_PAUSE=${PAUSE:-11s}
export MESHCA_LOADBENCH_BROKER_CA_KEY=${BROKER_CA_KEY:-ECDSA-P256}
export MESHCA_LOADBENCH_OUT=${OUT:-${TMPDIR:-/tmp}/bench-vs-istio.txt}
if [[ -n "${PERF_DIR:-}" ]]; then
	export MESHCA_LOADBENCH_PERF_DIR=$PERF_DIR
fi

go test ./integration/ -run '^(TestLoadBenchVsIstioCA|TestBrokerLoadCommand)$' -count=1 -v -timeout "${TIMEOUT:-90m}" "$@"
echo "tables: $MESHCA_LOADBENCH_OUT"
