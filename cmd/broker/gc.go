package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// serverGCPercent is the garbage collector's target for `broker serve`
// when GOGC is not set. The broker's live heap is small (informer caches,
// a few hundred bytes a pod) while every certificate makes around a
// hundred kilobytes of short-lived garbage (a TLS handshake, an HTTP/2
// connection, parsing and signing); at Go's default of 100 a mass restart
// spends about 7% of the broker's CPU collecting it. 400 collects a
// quarter as often for a peak heap of five times the live one.
const serverGCPercent = 400

// cgroupMemoryFraction of the container's memory limit becomes the Go
// memory limit when GOMEMLIMIT is not set, so that a larger GC target
// never walks the broker into the OOM killer: near the limit the
// collector runs as often as it must.
const cgroupMemoryFraction = 0.8

// tuneGC applies the defaults above where the environment says nothing
// and returns what it did, for the startup log.
func tuneGC() string {
	var out []string
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serverGCPercent)
		out = append(out, fmt.Sprintf("GOGC=%d", serverGCPercent))
	} else {
		out = append(out, "GOGC="+os.Getenv("GOGC")+" (environment)")
	}
	if os.Getenv("GOMEMLIMIT") != "" {
		out = append(out, "GOMEMLIMIT="+os.Getenv("GOMEMLIMIT")+" (environment)")
	} else if limit, ok := cgroupMemoryLimit(); ok {
		soft := int64(float64(limit) * cgroupMemoryFraction)
		debug.SetMemoryLimit(soft)
		out = append(out, fmt.Sprintf("memory limit %d MiB (%.0f%% of the container's %d MiB)", soft>>20, cgroupMemoryFraction*100, limit>>20))
	} else {
		out = append(out, "no memory limit (no container limit found)")
	}
	return strings.Join(out, ", ")
}

// cgroupMemoryLimit reads the memory limit of the broker's cgroup (v2,
// then v1); "max" or an absurdly large value means none.
func cgroupMemoryLimit() (int64, bool) {
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		if b, err := os.ReadFile(f); err == nil {
			return parseCgroupLimit(b)
		}
	}
	return 0, false
}

func parseCgroupLimit(b []byte) (int64, bool) {
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || v <= 0 || v >= 1<<50 { // "max", or v1's "unlimited" 0x7ffffffffffff000
		return 0, false
	}
	return v, true
}
