// Package istiodcert keeps istiod's serving certificate when istiod's own
// CA is off: the Secret istiod mounts at /var/run/secrets/istiod/tls
// (tls.crt, tls.key, and ca.crt = the mesh's trust bundle), for istiod's
// DNS names, issued by the broker's backend like the broker's own serving
// certificate, renewed at two thirds of its lifetime, and rewritten when
// the trust bundle changes. Only the elected leader writes it.
package istiodcert

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/servingcert"
	"github.com/meshca/broker/trust"
)

// Config says which Secret and names.
type Config struct {
	Client    kubernetes.Interface
	Namespace string // istiod's namespace
	Name      string // the Secret
	// Revision adds istiod-<revision>.<namespace>.svc.
	Revision string
	// ExtraDNSNames are added to istiod's own names.
	ExtraDNSNames []string
	TTL           time.Duration
	// Reconcile is how often the Secret is checked against what it should
	// hold (default 30s), so a deleted or edited Secret is restored.
	Reconcile time.Duration
	Log       *slog.Logger
}

// DNSNames are the names istiod is reached by: istiod.<ns>.svc (and
// istiod-<revision>.<ns>.svc), plus the extra ones.
func (c Config) DNSNames() []string {
	names := []string{"istiod." + c.Namespace + ".svc"}
	if c.Revision != "" && c.Revision != "default" {
		names = append(names, "istiod-"+c.Revision+"."+c.Namespace+".svc")
	}
	for _, n := range c.ExtraDNSNames {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// Keeper keeps the Secret.
type Keeper struct {
	cfg    Config
	bundle *trust.Bundle
	rot    *servingcert.Rotator
	log    *slog.Logger
}

// New returns a keeper.
func New(cfg Config, signer backends.Signer, bundle *trust.Bundle) (*Keeper, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Name == "" {
		return nil, errors.New("istiodcert: client, namespace and secret name are required")
	}
	if cfg.Reconcile <= 0 {
		cfg.Reconcile = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	k := &Keeper{cfg: cfg, bundle: bundle, log: cfg.Log.With("secret", cfg.Namespace+"/"+cfg.Name)}
	rot, err := servingcert.New(servingcert.Config{
		DNSNames: cfg.DNSNames(), TTL: cfg.TTL, Name: "istiod",
		OnIssued: func(ctx context.Context, cert *tls.Certificate) error { return k.write(ctx, cert) },
	}, signer, bundle, cfg.Log)
	if err != nil {
		return nil, err
	}
	k.rot = rot
	return k, nil
}

// NeedLeaderElection: only the leader writes the Secret.
func (k *Keeper) NeedLeaderElection() bool { return true }

// Run keeps the Secret until ctx ends (leadership lost or broker stopping).
func (k *Keeper) Run(ctx context.Context) error {
	// Adopt a certificate a previous leader left, if it is still good, so
	// a leader change does not reissue.
	if cert, err := k.read(ctx); err == nil && cert != nil {
		k.rot.Adopt(cert)
		k.log.Info("istiod certificate adopted from its Secret", "notAfter", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	} else if err := k.rot.Issue(ctx); err != nil {
		k.log.Error("issuing istiod's certificate failed; will retry", "error", err)
	}
	go k.rot.Run(ctx)
	changed := k.bundle.Subscribe()
	t := time.NewTicker(k.cfg.Reconcile)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-t.C:
		}
		if cur := k.rot.Current(); cur != nil {
			if err := k.write(ctx, cur); err != nil {
				k.log.Error("keeping istiod's Secret", "error", err)
			}
		}
	}
}

// read returns the Secret's certificate when it is usable as is: for
// every wanted name, chained to the current bundle, before two thirds of
// its lifetime.
func (k *Keeper) read(ctx context.Context) (*tls.Certificate, error) {
	s, err := k.cfg.Client.CoreV1().Secrets(k.cfg.Namespace).Get(ctx, k.cfg.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	cert.Leaf = leaf
	for _, n := range k.cfg.DNSNames() {
		if !slices.Contains(leaf.DNSNames, n) {
			return nil, fmt.Errorf("the certificate lacks %s", n)
		}
	}
	pool, err := k.bundle.Pool(ctx)
	if err != nil {
		return nil, err
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, err
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if time.Now().After(leaf.NotBefore.Add(life * 2 / 3)) {
		return nil, errors.New("past two thirds of its lifetime")
	}
	return &cert, nil
}

// write stores cert and the current bundle, unless the Secret already
// holds exactly that.
func (k *Keeper) write(ctx context.Context, cert *tls.Certificate) error {
	snap := k.bundle.Current()
	if snap == nil {
		return errors.New("trust bundle not loaded")
	}
	var crt bytes.Buffer
	for _, der := range cert.Certificate {
		_ = pem.Encode(&crt, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	data := map[string][]byte{
		corev1.TLSCertKey:       crt.Bytes(),
		corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"ca.crt":                snap.PEM,
	}
	secrets := k.cfg.Client.CoreV1().Secrets(k.cfg.Namespace)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cur, err := secrets.Get(ctx, k.cfg.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: k.cfg.Name, Namespace: k.cfg.Namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "meshca-broker"}},
			Type:       corev1.SecretTypeTLS,
			Data:       data,
		}, metav1.CreateOptions{})
		if err == nil {
			k.log.Info("istiod's Secret created", "dnsNames", k.cfg.DNSNames(), "bundleGeneration", snap.Generation)
		}
		return err
	case err != nil:
		return err
	}
	// The key is compared too: a renewal changes both.
	same := bytes.Equal(cur.Data[corev1.TLSCertKey], data[corev1.TLSCertKey]) && bytes.Equal(cur.Data["ca.crt"], data["ca.crt"])
	if same {
		return nil
	}
	if bytes.Equal(cur.Data[corev1.TLSCertKey], data[corev1.TLSCertKey]) {
		// Only the bundle changed: keep the key the Secret has.
		data[corev1.TLSPrivateKeyKey] = cur.Data[corev1.TLSPrivateKeyKey]
	}
	next := cur.DeepCopy()
	if next.Data == nil {
		next.Data = map[string][]byte{}
	}
	for key, v := range data {
		next.Data[key] = v
	}
	_, err = secrets.Update(ctx, next, metav1.UpdateOptions{})
	if err == nil {
		k.log.Info("istiod's Secret updated", "notAfter", cert.Leaf.NotAfter.UTC().Format(time.RFC3339), "bundleGeneration", snap.Generation)
	}
	return err
}
