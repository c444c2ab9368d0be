package servingcert_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/servingcert"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// TestReload: the files are served over real TLS; a certificate replaced
// on disk is served after the next sync; a broken file keeps the previous
// one; files that do not load fail Load, naming them.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	ca := testca.New(t)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	write := func(cn string) *x509.Certificate {
		leaf, key := ca.Leaf(t, testca.Subject(cn), testca.DNSNames("localhost"), testca.ExtKeyUsage(x509.ExtKeyUsageServerAuth))
		testca.WriteCertsPEM(t, certPath, leaf)
		testca.WriteKeyPEM(t, keyPath, key)
		return leaf
	}
	first := write("first")
	clk := clock.NewFake(time.Now())
	c, err := servingcert.Load(certPath, keyPath, time.Minute, clk, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", c.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	served := func() *x509.Certificate {
		t.Helper()
		roots := x509.NewCertPool()
		roots.AddCert(ca.Cert)
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	if !served().Equal(first) {
		t.Fatal("the loaded certificate is not served")
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	sync := func() {
		t.Helper()
		for clk.Waiters() == 0 {
			time.Sleep(time.Millisecond)
		}
		clk.Add(time.Minute)
		for clk.Waiters() == 0 { // the reload is done once Run waits again
			time.Sleep(time.Millisecond)
		}
	}

	second := write("second")
	sync()
	if !served().Equal(second) {
		t.Fatal("the certificate replaced on disk is not served after a sync")
	}
	if err := os.WriteFile(certPath, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	sync()
	if !served().Equal(second) || !c.Leaf().Equal(second) {
		t.Fatal("a broken file replaced the served certificate")
	}

	if _, err := servingcert.Load(certPath, keyPath, time.Minute, nil, nil); err == nil || !strings.Contains(err.Error(), certPath) {
		t.Fatalf("Load of a broken file: %v, want an error naming %s", err, certPath)
	}
}
