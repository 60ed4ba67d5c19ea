package loadgen

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func msList(vs ...int) []time.Duration {
	out := make([]time.Duration, len(vs))
	for i, v := range vs {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func TestPercentileNearestRank(t *testing.T) {
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	cases := []struct {
		vals []time.Duration
		p    float64
		want time.Duration
	}{
		{msList(hundred...), 50, 50 * time.Millisecond},
		{msList(hundred...), 90, 90 * time.Millisecond},
		{msList(hundred...), 99, 99 * time.Millisecond},
		{msList(hundred...), 100, 100 * time.Millisecond},
		{msList(10, 20, 30), 50, 20 * time.Millisecond}, // rank ceil(1.5) = 2
		{msList(10, 20, 30), 90, 30 * time.Millisecond},
		{msList(10, 20, 30), 1, 10 * time.Millisecond},
		{msList(7), 99, 7 * time.Millisecond},
		{nil, 50, 0},
	}
	for _, c := range cases {
		if got := Percentile(c.vals, c.p); got != c.want {
			t.Errorf("Percentile(%d values, %v) = %v, want %v", len(c.vals), c.p, got, c.want)
		}
	}
}

func TestSummarizeCountsRateAndPercentilesOfSuccessesOnly(t *testing.T) {
	var results []Result
	for i := 1; i <= 10; i++ { // successes of 1..10 ms, given out of order
		results = append(results, Result{Latency: time.Duration(11-i) * time.Millisecond, Attempts: 1})
	}
	results[3].Attempts = 3 // retried twice, then succeeded
	results = append(results,
		Result{Latency: time.Hour, Attempts: 6, Code: "Unavailable", Err: errors.New("first")},
		Result{Latency: time.Hour, Attempts: 6, Code: "Unavailable", Err: errors.New("second")},
		Result{Latency: time.Millisecond, Attempts: 1, Code: "VerifyFailed", Err: errors.New("bad chain")},
		Result{Code: "NotStarted"},
	)
	r := Summarize(results, 2*time.Second)
	if r.Workloads != 14 || r.Succeeded != 10 || r.FailedTotal() != 4 {
		t.Fatalf("workloads %d succeeded %d failed %d, want 14/10/4", r.Workloads, r.Succeeded, r.FailedTotal())
	}
	if r.Failed["Unavailable"] != 2 || r.Failed["VerifyFailed"] != 1 || r.Failed["NotStarted"] != 1 {
		t.Errorf("failed by code %v", r.Failed)
	}
	if r.Examples["Unavailable"] != "first" {
		t.Errorf("example %q, want the first error", r.Examples["Unavailable"])
	}
	if r.Attempts != 10+2+12+1 {
		t.Errorf("attempts %d, want 25", r.Attempts)
	}
	if r.CertsPerSec != 5 {
		t.Errorf("rate %v, want 10 certificates / 2s = 5", r.CertsPerSec)
	}
	if r.P50 != 5*time.Millisecond || r.P90 != 9*time.Millisecond || r.P99 != 10*time.Millisecond || r.Max != 10*time.Millisecond {
		t.Errorf("p50 %v p90 %v p99 %v max %v: failures must not count", r.P50, r.P90, r.P99, r.Max)
	}
	if z := Summarize(nil, 0); z.CertsPerSec != 0 || z.P99 != 0 {
		t.Errorf("empty run: %+v", z)
	}
}

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and parentheses; utime 1234, stime 566 ticks.
	line := "4242 (kube) apiserver)) S 1 4242 4242 0 -1 4194560 9876 0 12 0 1234 566 7 8 20 0 12 0 555 1000 200 0\n"
	got, err := parseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if want := 18 * time.Second; got != want { // (1234+566)/100 s
		t.Errorf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 x 4"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	self, err := ProcessCPU(0)
	if err != nil {
		if _, serr := os.Stat("/proc/self/stat"); serr != nil {
			t.Skip("no /proc")
		}
		t.Fatal(err)
	}
	if self < 0 {
		t.Errorf("own CPU %v", self)
	}
}

func TestParseHostStat(t *testing.T) {
	stat := "cpu  100 10 50 800 40 5 5 7 0 0\ncpu0 50 5 25 400 20 2 3 0 0 0\n"
	h, err := parseHostStat([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	if h != (hostStat{busy: 177, steal: 7, total: 1017}) {
		t.Errorf("got %+v, want busy 177 steal 7 total 1017", h)
	}
	if _, err := parseHostStat([]byte("intr 1 2 3\n")); err == nil {
		t.Error("no error for a file without the cpu line")
	}
}

func TestCPUPerCert(t *testing.T) {
	c := CPU{PID: 7, Seconds: 3}
	if got := c.PerCert(1000); got != 3*time.Millisecond {
		t.Errorf("3 s over 1000 certificates = %v, want 3ms", got)
	}
	if (CPU{}).PerCert(1000) != 0 || c.PerCert(0) != 0 || (CPU{PID: 7, Seconds: 3, Err: errors.New("gone")}).PerCert(10) != 0 {
		t.Error("unmeasured or nothing issued must be 0")
	}
}

func TestMedianRatioAndTable(t *testing.T) {
	rep := func(rate float64, caSecs float64, n int) *Report {
		return &Report{Succeeded: n, CertsPerSec: rate, CA: CPU{PID: 1, Seconds: caSecs}, P99: 40 * time.Millisecond}
	}
	rate := Metrics[0]
	if v, ok := Median([]*Report{rep(100, 0, 1), rep(300, 0, 1), rep(200, 0, 1)}, rate); !ok || v != 200 {
		t.Errorf("odd median %v %v", v, ok)
	}
	if v, ok := Median([]*Report{rep(100, 0, 1), rep(300, 0, 1)}, rate); !ok || v != 200 {
		t.Errorf("even median %v %v", v, ok)
	}
	caCPU := Metrics[4]
	if _, ok := Median([]*Report{{Succeeded: 5}}, caCPU); ok {
		t.Error("CPU of an unmeasured process has no median")
	}
	if got := Ratio(300, true, 100, true); got != "3.00x" {
		t.Errorf("ratio %q", got)
	}
	if Ratio(1, true, 0, true) != "-" || Ratio(1, false, 2, true) != "-" {
		t.Error("missing or zero reference must print -")
	}

	var b strings.Builder
	WriteTable(&b, "c=16", []Column{
		{Name: "broker", Reports: []*Report{rep(600, 1.0, 1000), rep(400, 1.0, 1000)}}, // median 500/s, 1 ms
		{Name: "istio", Reports: []*Report{rep(250, 4.0, 1000)}},                       // 4 ms
		{Name: "istio-fast", Reports: []*Report{rep(1000, 2.0, 1000)}},                 // 2 ms
	}, 1, 2)
	out := b.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1+1+3+3 {
		t.Fatalf("want title, header, 3 targets and 3 ratio rows:\n%s", out)
	}
	for i, want := range [][]string{
		{"c=16"},
		{"target", "runs", "cert/s", "p99 ms", "CA CPU ms/cert", "apiserver CPU ms/cert", "failed"},
		{"broker", " 2 ", "500.0", "40.0", "1.00"},
		{"istio", " 1 ", "250.0", "4.00"},
		{"istio-fast", "1000.0", "2.00"},
		{"broker / istio", "2.00x", "0.25x"},
		{"istio-fast / istio", "4.00x", "0.50x"},
		{"broker / istio-fast", "0.50x", "0.50x"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d lacks %q:\n%s", i, w, out)
			}
		}
	}
}

func TestReportWrite(t *testing.T) {
	r := Summarize([]Result{{Latency: time.Millisecond, Attempts: 1}, {Code: "Unauthenticated", Attempts: 1, Err: errors.New("no token")}}, time.Second)
	r.Target, r.Mode, r.Concurrency, r.Connections, r.KeyType = "broker", Burst, 4, "fresh", ECDSAP256
	r.CA = CPU{PID: 99, Seconds: 0.5}
	var b strings.Builder
	r.Write(&b)
	for _, want := range []string{"target broker", "issued and verified 1, failed 1", "1.0 certificates/s", "failed Unauthenticated: 1 (first: no token)", "CPU CA (pid 99): 0.50s, 500.00 ms per certificate"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}
