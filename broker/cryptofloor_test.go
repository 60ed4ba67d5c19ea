package broker

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"testing"
)

// BenchmarkCryptoFloor prices, on the machine at hand, the public-key
// operations one certificate costs the broker whatever else it does, so
// that its CPU per certificate can be read against them:
//
//	TLS 1.3 handshake (Go's default X25519MLKEM768): an X25519 key pair, an
//	  X25519 agreement, an ML-KEM-768 encapsulation, an ECDSA P-256
//	  signature (the serving key);
//	the service-account token: an RS256 verification (RSA-2048, the usual
//	  Kubernetes key; ES256 is a P-256 verification);
//	the CSR's proof of possession: a P-256 verification;
//	signing (local CA, P-256): a signature, and Go's own check of it;
//	verification of what was issued: a P-256 verification.
func BenchmarkCryptoFloor(b *testing.B) {
	digest := sha256.Sum256([]byte("to be signed"))
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sig, _ := ecdsa.SignASN1(rand.Reader, p256, digest[:])
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaSig, _ := rsa.SignPKCS1v15(rand.Reader, rsaKey, crypto.SHA256, digest[:])
	peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	dk, _ := mlkem.GenerateKey768()
	ek := dk.EncapsulationKey()

	b.Run("P256-sign", func(b *testing.B) {
		for b.Loop() {
			if _, err := ecdsa.SignASN1(rand.Reader, p256, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("P256-verify", func(b *testing.B) {
		for b.Loop() {
			if !ecdsa.VerifyASN1(&p256.PublicKey, digest[:], sig) {
				b.Fatal("verify")
			}
		}
	})
	b.Run("RSA2048-verify", func(b *testing.B) {
		for b.Loop() {
			if err := rsa.VerifyPKCS1v15(&rsaKey.PublicKey, crypto.SHA256, digest[:], rsaSig); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("X25519-keypair-and-agreement", func(b *testing.B) {
		for b.Loop() {
			k, err := ecdh.X25519().GenerateKey(rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := k.ECDH(peer.PublicKey()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("MLKEM768-encapsulate", func(b *testing.B) {
		for b.Loop() {
			ek.Encapsulate()
		}
	})
}
