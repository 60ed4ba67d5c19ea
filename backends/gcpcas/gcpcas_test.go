package gcpcas

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/googleapis/gax-go/v2/apierror"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/backends"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "ids", cfg: Config{Project: "p", Location: "l", CaPool: "pool"}, check: func(t *testing.T, c Config) {
			if c.parent() != "projects/p/locations/l/caPools/pool" || c.Timeout.Duration != 30*time.Second {
				t.Errorf("got %s, %v", c.parent(), c.Timeout)
			}
		}},
		{name: "full pool name", cfg: Config{CaPool: "projects/p/locations/l/caPools/pool"}, check: func(t *testing.T, c Config) {
			if c.parent() != "projects/p/locations/l/caPools/pool" {
				t.Errorf("parent %s", c.parent())
			}
		}},
		{name: "template id expands", cfg: Config{Project: "p", Location: "l", CaPool: "pool", CertificateTemplate: "mesh"}, check: func(t *testing.T, c Config) {
			if c.CertificateTemplate != "projects/p/locations/l/certificateTemplates/mesh" {
				t.Errorf("template %s", c.CertificateTemplate)
			}
		}},
		{name: "contradicting project", cfg: Config{Project: "q", CaPool: "projects/p/locations/l/caPools/pool"}, wantErr: "contradicts"},
		{name: "missing pool", cfg: Config{Project: "p", Location: "l"}, wantErr: "caPool is required"},
		{name: "path as id", cfg: Config{Project: "p", Location: "l", CaPool: "a/b"}, wantErr: "must be an ID"},
		{name: "bad ca id", cfg: Config{Project: "p", Location: "l", CaPool: "pool", CaID: "a b"}, wantErr: "caId"},
		{name: "insecure off loopback", cfg: Config{Project: "p", Location: "l", CaPool: "pool", Insecure: true, Endpoint: "privateca.googleapis.com:443"}, wantErr: "loopback"},
		{name: "insecure loopback", cfg: Config{Project: "p", Location: "l", CaPool: "pool", Insecure: true, Endpoint: "127.0.0.1:9999"}},
		{name: "insecure with credentials", cfg: Config{Project: "p", Location: "l", CaPool: "pool", Insecure: true, Endpoint: "127.0.0.1:1", CredentialsFile: "x"}, wantErr: "no credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg
			err := c.validate()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestCredentialsFileType(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"sa.json":    `{"type":"service_account"}`,
		"ext.json":   `{"type":"external_account"}`,
		"weird.json": `{"type":"gdch_service_account"}`,
		"bad.json":   `not json`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name, ok := range map[string]bool{"sa.json": true, "ext.json": true, "weird.json": false, "bad.json": false, "missing.json": false} {
		_, err := credentialsOption(filepath.Join(dir, name))
		if (err == nil) != ok {
			t.Errorf("%s: err = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		code codes.Code
		want error
	}{
		{codes.ResourceExhausted, backends.ErrThrottled},
		{codes.Unavailable, backends.ErrUnavailable},
		{codes.DeadlineExceeded, backends.ErrUnavailable},
		{codes.Aborted, backends.ErrUnavailable},
		{codes.Internal, backends.ErrUnavailable},
		{codes.InvalidArgument, backends.ErrRefused},
		{codes.FailedPrecondition, backends.ErrRefused},
		{codes.PermissionDenied, backends.ErrRefused},
		{codes.NotFound, backends.ErrRefused},
		{codes.AlreadyExists, backends.ErrRefused},
		{codes.Unauthenticated, backends.ErrRefused},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			st := status.New(tt.code, "google says "+tt.code.String())
			// The client hands back gax's APIError wrapping the status.
			apiErr, ok := apierror.FromError(st.Err())
			if !ok {
				t.Fatal("not an APIError")
			}
			for _, in := range []error{st.Err(), apiErr, fmt.Errorf("wrapped: %w", apiErr)} {
				err := classify("creating", in)
				if !errors.Is(err, tt.want) {
					t.Errorf("classify(%T) = %v, want %v", in, err, tt.want)
				}
				if !strings.Contains(err.Error(), "google says") {
					t.Errorf("%q lost Google's message", err)
				}
			}
		})
	}
	if err := classify("creating", context.DeadlineExceeded); !errors.Is(err, backends.ErrUnavailable) {
		t.Errorf("context deadline: %v", err)
	}
}
