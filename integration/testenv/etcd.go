package testenv

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Etcd is a single-member etcd listening on 127.0.0.1. One Etcd can back
// several API servers (each StartKube uses its own --etcd-prefix).
type Etcd struct {
	// Endpoint is the client URL, http://127.0.0.1:PORT.
	Endpoint string
	DataDir  string
	proc     *process
}

// StartEtcd starts etcd (binary "etcd" from ToolsDir) with its data in a
// temporary directory; it is stopped when the test ends.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	bin := Tool(t, "etcd")
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		dataDir := filepath.Join(t.TempDir(), "etcd-data")
		client, peer := FreePort(t), FreePort(t)
		cu := fmt.Sprintf("http://127.0.0.1:%d", client)
		pu := fmt.Sprintf("http://127.0.0.1:%d", peer)
		args := []string{
			"--name=default",
			"--data-dir=" + dataDir,
			"--listen-client-urls=" + cu,
			"--advertise-client-urls=" + cu,
			"--listen-peer-urls=" + pu,
			"--initial-advertise-peer-urls=" + pu,
			"--initial-cluster=default=" + pu,
			"--initial-cluster-state=new",
			"--logger=zap",
			"--log-level=warn",
			"--quota-backend-bytes=1073741824",
		}
		p := newProcess(t, fmt.Sprintf("etcd-%d", attempt), bin, args, nil, "")
		if err := p.start(); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		e := &Etcd{Endpoint: cu, DataDir: dataDir, proc: p}
		err := p.waitReady(30*time.Second, e.health)
		if err == nil {
			return e
		}
		lastErr = err
		p.stop()
		if !p.addrInUse() {
			break
		}
	}
	t.Fatalf("testenv: etcd: %v", lastErr)
	return nil
}

func (e *Etcd) health(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.Endpoint+"/health", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"true"`) {
		return fmt.Errorf("etcd health: %d %s", resp.StatusCode, b)
	}
	return nil
}

// Stop stops etcd (also done automatically at the end of the test).
func (e *Etcd) Stop() { e.proc.stop() }

// Log returns etcd's output so far.
func (e *Etcd) Log() string { return e.proc.log() }
