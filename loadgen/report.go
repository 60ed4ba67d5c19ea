package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is the outcome of one workload's request.
type Result struct {
	// Latency from the request's start (in steady mode: its scheduled start)
	// to the CA's final answer, connection setup and retries included,
	// verification excluded.
	Latency time.Duration
	// Attempts is the number of CreateCertificate calls made.
	Attempts int
	// Code is "" for a certificate received and verified, else the failure:
	// a gRPC code name, "VerifyFailed", "ClientError" or "NotStarted".
	Code string
	// Err describes the failure.
	Err error
}

// CPU is the CPU time a process spent during a run.
type CPU struct {
	// PID is the process measured (0: not measured).
	PID int
	// Seconds of user+system time between the run's start and end.
	Seconds float64
	// Err is why it could not be measured.
	Err error
}

// PerCert is the CPU time per issued certificate (0 when nothing was issued
// or nothing measured).
func (c CPU) PerCert(issued int) time.Duration {
	if c.PID == 0 || c.Err != nil || issued == 0 {
		return 0
	}
	return time.Duration(c.Seconds / float64(issued) * float64(time.Second))
}

// Report is what one run measured.
type Report struct {
	Target      string
	Mode        Mode
	Workloads   int
	Concurrency int
	// Rate is the steady mode's target (certificates started per second).
	Rate float64
	// Connections is "fresh" (a TLS connection per workload) or "shared/<n>".
	Connections string
	KeyType     KeyType

	Succeeded int
	// Failed counts failures by code; Examples holds the first error of each.
	Failed   map[string]int
	Examples map[string]string
	Attempts int

	// Duration is the wall time from the first request to the last answer.
	Duration    time.Duration
	CertsPerSec float64
	P50         time.Duration
	P90         time.Duration
	P99         time.Duration
	Max         time.Duration

	// CA and APIServer are the processes named by Options; Self is the load
	// generator (it shares the machine).
	CA, APIServer, Self CPU
	// HostBusy is the fraction of all CPUs busy during the run (from /proc/stat).
	HostBusy float64
	// HostSteal is the fraction of all CPUs' time the hypervisor gave to
	// other machines during the run (part of HostBusy): a run with much
	// of it measured a slower machine.
	HostSteal float64
	CPUs      int
}

// FailedTotal is the number of workloads that got no verified certificate.
func (r *Report) FailedTotal() int {
	n := 0
	for _, c := range r.Failed {
		n += c
	}
	return n
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted durations: the smallest value at least p% of the values are at or
// below. It returns 0 for no values.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = max(1, min(rank, n))
	return sorted[rank-1]
}

// Summarize computes the counts, rate and latency percentiles of a run that
// took wall time: latencies are those of the successful results only, and
// the rate is verified certificates per second of wall time.
func Summarize(results []Result, wall time.Duration) Report {
	r := Report{Workloads: len(results), Failed: map[string]int{}, Examples: map[string]string{}, Duration: wall}
	lat := make([]time.Duration, 0, len(results))
	for _, res := range results {
		r.Attempts += res.Attempts
		if res.Code == "" {
			r.Succeeded++
			lat = append(lat, res.Latency)
			continue
		}
		r.Failed[res.Code]++
		if _, ok := r.Examples[res.Code]; !ok && res.Err != nil {
			r.Examples[res.Code] = res.Err.Error()
		}
	}
	slices.Sort(lat)
	r.P50, r.P90, r.P99 = Percentile(lat, 50), Percentile(lat, 90), Percentile(lat, 99)
	if len(lat) > 0 {
		r.Max = lat[len(lat)-1]
	}
	if wall > 0 {
		r.CertsPerSec = float64(r.Succeeded) / wall.Seconds()
	}
	return r
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

// ProcessCPU returns the user+system CPU time process pid has used so far,
// from /proc/<pid>/stat (pid 0: this process).
func ProcessCPU(pid int) (time.Duration, error) {
	p := "/proc/self/stat"
	if pid != 0 {
		p = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return parseProcStat(b)
}

// parseProcStat reads utime+stime (fields 14 and 15) of a /proc/<pid>/stat
// line. The command name (field 2) is in parentheses and may contain spaces
// and parentheses, so fields are counted after its last ')'.
func parseProcStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat: no ')'")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime is field 14 = f[11], stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc stat: %d fields after the name", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("malformed /proc stat: %w", err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// hostStat is the jiffies of all CPUs from /proc/stat.
type hostStat struct{ busy, steal, total uint64 }

func hostCPU() (hostStat, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostStat{}, err
	}
	return parseHostStat(b)
}

// parseHostStat reads the aggregate "cpu" line of /proc/stat: user nice
// system idle iowait irq softirq steal (guest time is already in user).
// Idle and iowait are not busy; steal is.
func parseHostStat(b []byte) (hostStat, error) {
	var h hostStat
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return h, errors.New("malformed /proc/stat")
	}
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return h, fmt.Errorf("malformed /proc/stat: %w", err)
		}
		h.total += v
		if i != 3 && i != 4 { // idle, iowait
			h.busy += v
		}
		if i == 7 {
			h.steal = v
		}
	}
	return h, nil
}

// cpuMeter samples the processes of a run before and after it.
type cpuMeter struct {
	pids    [3]int // CA, API server, self (0)
	before  [3]time.Duration
	errs    [3]error
	host    hostStat
	hostErr error
}

func startCPU(caPID, apiPID int) *cpuMeter {
	m := &cpuMeter{pids: [3]int{caPID, apiPID, 0}}
	for i, pid := range m.pids {
		if i < 2 && pid == 0 {
			continue
		}
		m.before[i], m.errs[i] = ProcessCPU(pid)
	}
	m.host, m.hostErr = hostCPU()
	return m
}

func (m *cpuMeter) stop(r *Report) {
	out := [3]*CPU{&r.CA, &r.APIServer, &r.Self}
	for i, pid := range m.pids {
		if i < 2 && pid == 0 {
			continue
		}
		c := out[i]
		c.PID = pid
		if i == 2 {
			c.PID = os.Getpid()
		}
		if m.errs[i] != nil {
			c.Err = m.errs[i]
			continue
		}
		after, err := ProcessCPU(pid)
		if err != nil {
			c.Err = err
			continue
		}
		c.Seconds = (after - m.before[i]).Seconds()
	}
	r.CPUs = runtime.NumCPU()
	if m.hostErr == nil {
		h, err := hostCPU()
		if tot := float64(h.total - m.host.total); err == nil && h.total > m.host.total {
			r.HostBusy = float64(h.busy-m.host.busy) / tot
			r.HostSteal = float64(h.steal-m.host.steal) / tot
		}
	}
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }

func msPerCert(c CPU, issued int) string {
	switch {
	case c.PID == 0:
		return "-"
	case c.Err != nil:
		return "error"
	case issued == 0:
		return "n/a"
	}
	return strconv.FormatFloat(c.Seconds*1000/float64(issued), 'f', 2, 64)
}

// Write prints the report for a person.
func (r *Report) Write(w io.Writer) {
	mode := string(r.Mode)
	if r.Mode == Steady {
		mode += fmt.Sprintf(" at %.0f/s", r.Rate)
	}
	fmt.Fprintf(w, "target %s: %d workloads, %s, %d concurrent, %s connections, %s keys\n",
		r.Target, r.Workloads, mode, r.Concurrency, r.Connections, r.KeyType)
	fmt.Fprintf(w, "  issued and verified %d, failed %d, CreateCertificate calls %d, in %.2fs: %.1f certificates/s\n",
		r.Succeeded, r.FailedTotal(), r.Attempts, r.Duration.Seconds(), r.CertsPerSec)
	fmt.Fprintf(w, "  latency ms: p50 %s  p90 %s  p99 %s  max %s\n", ms(r.P50), ms(r.P90), ms(r.P99), ms(r.Max))
	codes := make([]string, 0, len(r.Failed))
	for c := range r.Failed {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	for _, c := range codes {
		fmt.Fprintf(w, "  failed %s: %d (first: %s)\n", c, r.Failed[c], r.Examples[c])
	}
	cpu := func(name string, c CPU) {
		switch {
		case c.PID == 0:
		case c.Err != nil:
			fmt.Fprintf(w, "  CPU %s (pid %d): not measured: %v\n", name, c.PID, c.Err)
		default:
			fmt.Fprintf(w, "  CPU %s (pid %d): %.2fs, %s ms per certificate\n", name, c.PID, c.Seconds, msPerCert(c, r.Succeeded))
		}
	}
	cpu("CA", r.CA)
	cpu("API server", r.APIServer)
	cpu("load generator", r.Self)
	fmt.Fprintf(w, "  host: %.0f%% of %d CPUs busy during the run, %.1f%% stolen by the hypervisor\n", r.HostBusy*100, r.CPUs, r.HostSteal*100)
}

// Column is one target in a side-by-side table: its runs (several when
// runs were repeated; the table shows the median of each metric).
type Column struct {
	Name    string
	Reports []*Report
}

// Metric is one row of a side-by-side table.
type Metric struct {
	Name string
	// Value extracts the metric from a report (ok false: not measured).
	Value func(*Report) (v float64, ok bool)
	// Format prints it.
	Format string
	// NoRatio: the ratio of two runs says nothing (host load, failures).
	NoRatio bool
}

// Metrics are the rows WriteTable prints.
var Metrics = []Metric{
	{"cert/s", func(r *Report) (float64, bool) { return r.CertsPerSec, true }, "%.1f", false},
	{"p50 ms", func(r *Report) (float64, bool) { return float64(r.P50) / 1e6, r.Succeeded > 0 }, "%.1f", false},
	{"p90 ms", func(r *Report) (float64, bool) { return float64(r.P90) / 1e6, r.Succeeded > 0 }, "%.1f", false},
	{"p99 ms", func(r *Report) (float64, bool) { return float64(r.P99) / 1e6, r.Succeeded > 0 }, "%.1f", false},
	{"CA CPU ms/cert", func(r *Report) (float64, bool) { return cpuMS(r.CA, r.Succeeded) }, "%.2f", false},
	{"apiserver CPU ms/cert", func(r *Report) (float64, bool) { return cpuMS(r.APIServer, r.Succeeded) }, "%.2f", false},
	{"loadgen CPU ms/cert", func(r *Report) (float64, bool) { return cpuMS(r.Self, r.Succeeded) }, "%.2f", false},
	{"host busy %", func(r *Report) (float64, bool) { return r.HostBusy * 100, r.CPUs > 0 }, "%.0f", true},
	{"steal %", func(r *Report) (float64, bool) { return r.HostSteal * 100, r.CPUs > 0 }, "%.1f", true},
	{"failed", func(r *Report) (float64, bool) { return float64(r.FailedTotal()), true }, "%.0f", true},
}

func cpuMS(c CPU, issued int) (float64, bool) {
	if c.PID == 0 || c.Err != nil || issued == 0 {
		return 0, false
	}
	return c.Seconds * 1000 / float64(issued), true
}

// Median returns the median of a metric over reports (the mean of the two
// middle values for an even count); ok is false if no report measured it.
func Median(reports []*Report, m Metric) (float64, bool) {
	var vs []float64
	for _, r := range reports {
		if v, ok := m.Value(r); ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return 0, false
	}
	slices.Sort(vs)
	n := len(vs)
	if n%2 == 1 {
		return vs[n/2], true
	}
	return (vs[n/2-1] + vs[n/2]) / 2, true
}

// Ratio is a/b formatted as "1.23x", or "-" when either is missing or b is 0.
func Ratio(a float64, aok bool, b float64, bok bool) string {
	if !aok || !bok || b == 0 {
		return "-"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64) + "x"
}

// WriteTable prints one row per column (target) with the median of each
// metric over its runs, then, for every reference column index in refs, the
// ratio of every other column to it (e.g. broker / Istio), metric by metric.
func WriteTable(w io.Writer, title string, cols []Column, refs ...int) {
	if title != "" {
		fmt.Fprintln(w, title)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := []string{"target", "runs"}
	for _, m := range Metrics {
		head = append(head, m.Name)
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	vals := make([][]float64, len(cols))
	oks := make([][]bool, len(cols))
	for i, c := range cols {
		row := []string{c.Name, strconv.Itoa(len(c.Reports))}
		vals[i], oks[i] = make([]float64, len(Metrics)), make([]bool, len(Metrics))
		for j, m := range Metrics {
			vals[i][j], oks[i][j] = Median(c.Reports, m)
			if oks[i][j] {
				row = append(row, fmt.Sprintf(m.Format, vals[i][j]))
			} else {
				row = append(row, "-")
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	for _, ref := range refs {
		if ref < 0 || ref >= len(cols) {
			continue
		}
		for i, c := range cols {
			if i == ref || (i < ref && slices.Contains(refs, i)) {
				continue // itself, or a reference already compared with this one
			}
			row := []string{c.Name + " / " + cols[ref].Name, ""}
			for j, m := range Metrics {
				if m.NoRatio {
					row = append(row, "")
					continue
				}
				row = append(row, Ratio(vals[i][j], oks[i][j], vals[ref][j], oks[ref][j]))
			}
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
	}
	tw.Flush()
}
