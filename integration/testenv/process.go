package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ToolsDir returns the directory holding the component binaries:
// $MESHCA_TOOLS/bin, MESHCA_TOOLS defaulting to $HOME/.cache/meshca-tools
// (the cache scripts/install-tools.sh fills).
func ToolsDir() string {
	root := os.Getenv("MESHCA_TOOLS")
	if root == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		root = filepath.Join(home, ".cache", "meshca-tools")
	}
	return filepath.Join(root, "bin")
}

// Required reports whether the integration suite must run in full
// (MESHCA_INTEGRATION=1): missing tools or capabilities then fail the test
// instead of skipping it.
func Required() bool { return os.Getenv("MESHCA_INTEGRATION") == "1" }

// Unavailable skips the test (or fails it when Required) because something
// the test environment needs is missing.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s (MESHCA_INTEGRATION=1, so this is fatal)", msg)
	}
	t.Skipf("%s (set MESHCA_INTEGRATION=1 to make this fatal)", msg)
}

// Tool returns the path of the named binary in ToolsDir. Tests that need a
// real component run only when MESHCA_INTEGRATION is set, so that a plain
// `go test ./...` stays a fast unit-test run: with MESHCA_INTEGRATION=1 a
// missing binary fails the test, with any other value (e.g. "auto") it is
// skipped with a hint to run scripts/install-tools.sh.
func Tool(t testing.TB, name string) string {
	t.Helper()
	if os.Getenv("MESHCA_INTEGRATION") == "" {
		t.Skipf("needs the real %s: set MESHCA_INTEGRATION=1 (scripts/test.sh does) or =auto", name)
	}
	p := filepath.Join(ToolsDir(), name)
	if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		Unavailable(t, "testenv: %s not found in %s: run scripts/install-tools.sh %s", name, ToolsDir(), name)
	}
	return p
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1. The port is
// released before it is returned; starters retry on "address already in use".
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// process is one started server binary with its log file.
type process struct {
	t       testing.TB
	name    string
	bin     string
	args    []string
	env     []string
	dir     string
	logPath string

	// stopGrace is how long stop waits after SIGTERM before SIGKILL (default 10s).
	stopGrace time.Duration

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	paused  bool
}

// newProcess prepares a process whose output goes to <tempdir>/<name>.log;
// its log tail is dumped when the test fails, and it is stopped by t.Cleanup.
func newProcess(t testing.TB, name, bin string, args, env []string, dir string) *process {
	t.Helper()
	p := &process{t: t, name: name, bin: bin, args: args, env: env, dir: dir,
		logPath: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("testenv: last lines of %s log (%s):\n%s", name, p.logPath, p.tail(60))
		}
	})
	return p
}

// The children get Pdeathsig=SIGKILL so no server outlives a killed test
// binary. Linux sends it when the *thread* that forked the child exits, and
// Go ends a thread whenever a goroutine exits while locked to it (as the
// pilot-agent starter does) — so all servers are forked from one dedicated
// thread that never exits.
var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the process
			for r := range spawnCh {
				r.done <- r.cmd.Start()
			}
		}()
	})
	r := spawnReq{cmd: cmd, done: make(chan error, 1)}
	spawnCh <- r
	return <-r.done
}

// start starts the process from the spawner thread.
func (p *process) start() error { return p.startWith(spawn) }

// startHere starts the process from the calling goroutine's thread, which
// must be locked and stay alive while the process runs.
func (p *process) startHere() error { return p.startWith((*exec.Cmd).Start) }

func (p *process) startWith(startCmd func(*exec.Cmd) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s already running", p.name)
		}
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "==== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own process group (signals reach children too); killed if the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := startCmd(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.paused = cmd, done, false
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// exited returns a channel closed when the current run ends.
func (p *process) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.done
}

func (p *process) running() bool {
	select {
	case <-p.exited():
		return false
	default:
		return true
	}
}

func (p *process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil || !p.running() {
		return fmt.Errorf("%s is not running", p.name)
	}
	return syscall.Kill(-cmd.Process.Pid, sig)
}

// stop ends the process: SIGTERM, then SIGKILL after stopGrace. Safe to call twice.
func (p *process) stop() {
	p.mu.Lock()
	cmd, done, paused := p.cmd, p.done, p.paused
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	grace := p.stopGrace
	if grace == 0 {
		grace = 10 * time.Second
	}
	pg := -cmd.Process.Pid
	_ = syscall.Kill(pg, syscall.SIGTERM)
	if paused {
		_ = syscall.Kill(pg, syscall.SIGCONT)
	}
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(pg, syscall.SIGKILL)
		<-done
	}
	// No group-wide kill after the leader is reaped: its PID (the group id)
	// may already belong to someone else.
}

func (p *process) pause() error {
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	p.mu.Lock()
	p.paused = true
	pid := p.cmd.Process.Pid
	p.mu.Unlock()
	// SIGSTOP takes effect asynchronously, thread by thread: wait until every
	// thread is stopped so no request slips through right after pause returns.
	deadline := time.Now().Add(5 * time.Second)
	for !allThreadsStopped(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not all threads stopped 5s after SIGSTOP", p.name)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// allThreadsStopped reports whether every thread of pid is in state T
// (stopped), per /proc/<pid>/task/*/stat. Without /proc it reports true.
func allThreadsStopped(pid int) bool {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		return true
	}
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // thread gone
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			continue
		}
		if st := b[i+2]; st != 'T' && st != 't' {
			return false
		}
	}
	return true
}

func (p *process) resume() error {
	if err := p.signal(syscall.SIGCONT); err != nil {
		return err
	}
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
	return nil
}

func (p *process) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func (p *process) tail(n int) string {
	return tailLines(p.log(), n)
}

func tailLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// errExited is returned by waitReady when the process ended before being ready.
var errExited = errors.New("process exited before it was ready")

// waitReady polls check until it succeeds, the process exits or timeout passes.
func (p *process) waitReady(timeout time.Duration, check func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.exited():
			p.mu.Lock()
			werr := p.waitErr
			p.mu.Unlock()
			return fmt.Errorf("%s: %w (%v); log tail:\n%s", p.name, errExited, werr, p.tail(30))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %v: %v; log tail:\n%s", p.name, timeout, last, p.tail(30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// addrInUse reports whether the process's log shows a port clash (the port
// from FreePort was taken in between), in which case the starter retries.
func (p *process) addrInUse() bool {
	return bytes.Contains(bytes.ToLower([]byte(p.tail(40))), []byte("address already in use"))
}

func itoa(i int) string { return strconv.Itoa(i) }

// pid is the process ID of the current run (0 when never started).
func (p *process) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Process is a server binary started by StartProcess.
type Process struct{ p *process }

// StartProcess starts bin with args (env added to this environment) in dir,
// as the starters here do: its output in <tempdir>/<name>.log, in its own
// process group, killed if the test binary dies, stopped (SIGTERM, then
// SIGKILL) when the test ends, its log tail printed if the test failed.
func StartProcess(t testing.TB, name, bin string, args, env []string, dir string) *Process {
	t.Helper()
	p := newProcess(t, name, bin, args, env, dir)
	if err := p.start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return &Process{p: p}
}

// PID is the process ID (e.g. for CPU accounting from /proc/<pid>/stat).
func (p *Process) PID() int { return p.p.pid() }

// Log returns the process's output so far.
func (p *Process) Log() string { return p.p.log() }

// Exited is closed when the process has ended.
func (p *Process) Exited() <-chan struct{} { return p.p.exited() }

// Stop ends the process (also done when the test ends).
func (p *Process) Stop() { p.p.stop() }
