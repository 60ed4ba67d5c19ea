package jwks

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/meshca/broker/authn"
)

// FuzzVerifyToken: whatever bytes arrive as a token, VerifyToken never
// panics, refuses with ErrDenied or ErrUnavailable, and accepts only a
// token our key signed, returning exactly what that token says.
func FuzzVerifyToken(f *testing.F) {
	keys(f)
	good := signWith(f, jose.RS256, rsaKey, "k1")(claims("shop", "cart"))
	f.Add(good)
	f.Add(signWith(f, jose.RS256, rsaKey2, "k1")(claims("shop", "cart")))
	f.Add(signWith(f, jose.ES256, ecKey, "k1")(claims("shop", "cart")))
	std, _ := claims("shop", "cart")
	f.Add(unsignedToken(f, std))
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	file := writeFile(f, "jwks.json", jwksJSON(f, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "k1", Use: "sig"}))
	a := newAuth(f, Config{File: file})
	f.Fuzz(func(t *testing.T, token string) {
		c, err := a.VerifyToken(context.Background(), token)
		if err != nil {
			if !errors.Is(err, authn.ErrDenied) && !errors.Is(err, authn.ErrUnavailable) {
				t.Fatalf("error of no known kind: %v", err)
			}
			return
		}
		// The only claims our key signed are the seed's; anything else
		// accepted would be a forgery.
		if c.Namespace != "shop" || c.ServiceAccount != "cart" || c.PodName != "web-0" || !c.Bound {
			t.Fatalf("claims %+v", c)
		}
	})
}
