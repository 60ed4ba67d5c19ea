package authn

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

type fixed struct {
	name string
	id   *Identity
	err  error
}

func (f fixed) Name() string { return f.name }
func (f fixed) Authenticate(context.Context, *Request) (*Identity, error) {
	return f.id, f.err
}

func TestChain(t *testing.T) {
	cart := &Identity{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/cart")}
	none := fixed{"none", nil, fmt.Errorf("%w: no token", ErrNoCredential)}
	denied := fixed{"denied", nil, fmt.Errorf("%w: bad signature", ErrDenied)}
	down := fixed{"down", nil, fmt.Errorf("%w: connection refused", ErrUnavailable)}
	ok := fixed{"ok", cart, nil}
	cases := []struct {
		name    string
		chain   Chain
		want    error
		method  string
		mention string
	}{
		{"first acceptance wins", Chain{none, ok, denied}, nil, "ok", ""},
		{"a refusal stops the chain: no later authenticator re-accepts", Chain{denied, ok}, ErrDenied, "", "bad signature"},
		{"unavailable stops the chain: the token is judged by one verifier only", Chain{down, ok}, ErrUnavailable, "", "connection refused"},
		{"nothing presented", Chain{none, none}, ErrDenied, "", "no credential presented"},
		{"refused", Chain{none, denied}, ErrDenied, "", "denied: authentication failed: bad signature"},
		{"only unavailable: retry may help", Chain{down, none}, ErrUnavailable, "", "connection refused"},
		{"unavailable first decides, later refusal not asked", Chain{down, denied}, ErrUnavailable, "", "connection refused"},
		{"nil identity without error fails closed", Chain{fixed{"broken", nil, nil}, ok}, ErrDenied, "", "no identity"},
		{"empty chain fails closed", Chain{}, ErrDenied, "", "no credential"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.chain.Authenticate(context.Background(), &Request{})
			if tc.want == nil {
				if err != nil || id.Method != tc.method {
					t.Fatalf("got %v, %v; want method %s", id, err, tc.method)
				}
				return
			}
			if id != nil || !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("got %v, %v; want %v mentioning %q", id, err, tc.want, tc.mention)
			}
		})
	}
}

// A token nobody claims (every authenticator passed it on) is refused,
// with each authenticator's reason, never reported as "no credential".
func TestChainUnclaimedToken(t *testing.T) {
	notMine := fixed{"kube", nil, fmt.Errorf("%w: unknown cluster \"west\"", ErrNoCredential)}
	_, err := Chain{notMine, notMine}.Authenticate(context.Background(), &Request{BearerToken: "t", ClusterID: "west"})
	if !errors.Is(err, ErrDenied) || errors.Is(err, ErrNoCredential) || !strings.Contains(err.Error(), `unknown cluster "west"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestWorkloadNames(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	for _, tc := range []struct {
		ns, sa string
		ok     bool
	}{
		{"shop", "cart", true},
		{"shop", "cart.v2", true},
		{"Shop", "cart", false},
		{"shop", "../admin", false},
		{"shop/sa/admin", "x", false},
		{"", "cart", false},
		{"shop", "", false},
		{"shop", "cart%2fadmin", false},
		{strings.Repeat("a", 64), "cart", false},
	} {
		id, err := WorkloadID(td, tc.ns, tc.sa)
		if (err == nil) != tc.ok {
			t.Errorf("WorkloadID(%q, %q) = %v, %v", tc.ns, tc.sa, id, err)
			continue
		}
		if tc.ok {
			ns, sa, err := ParseWorkloadID(id)
			if err != nil || ns != tc.ns || sa != tc.sa {
				t.Errorf("ParseWorkloadID(%s) = %s %s %v", id, ns, sa, err)
			}
		}
	}
	for _, tc := range []struct {
		user   string
		ns, sa string
	}{
		{"system:serviceaccount:shop:cart", "shop", "cart"},
		{"system:serviceaccount:shop", "", ""},
		{"system:serviceaccount:shop:cart:extra", "", ""},
		{"system:node:worker-1", "", ""},
		{"admin", "", ""},
	} {
		ns, sa, err := ParseServiceAccountUsername(tc.user)
		if ns != tc.ns || sa != tc.sa || (err == nil) != (tc.ns != "") {
			t.Errorf("ParseServiceAccountUsername(%q) = %q %q %v", tc.user, ns, sa, err)
		}
	}
	for _, s := range []string{"spiffe://cluster.local/ns/shop", "spiffe://cluster.local/ns/shop/sa/cart/x", "spiffe://cluster.local/namespace/shop/sa/cart"} {
		if _, _, err := ParseWorkloadID(spiffeid.RequireFromString(s)); err == nil {
			t.Errorf("ParseWorkloadID(%s) accepted", s)
		}
	}
}
