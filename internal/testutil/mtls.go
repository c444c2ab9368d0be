package testutil

import (
	"crypto/tls"
	"io"
	"net"
	"time"
)

// MTLSExchange runs one TLS exchange on loopback: a server with serverCfg
// accepts one connection, completes the handshake and writes "hello"; a
// client with clientCfg reads it. Each side's I/O is bounded by timeout.
// It returns the first error of either side (nil when the client read
// "hello").
func MTLSExchange(serverCfg, clientCfg *tls.Config, timeout time.Duration) error {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverCfg)
	if err != nil {
		return err
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if err := c.(*tls.Conn).Handshake(); err != nil {
			srvErr <- err
			return
		}
		_, err = io.WriteString(c, "hello")
		srvErr <- err
	}()
	d := net.Dialer{Timeout: timeout}
	conn, err := tls.DialWithDialer(&d, "tcp", ln.Addr().String(), clientCfg)
	if err != nil {
		_ = ln.Close()
		<-srvErr
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	got, rerr := io.ReadAll(conn)
	if err := <-srvErr; err != nil {
		return err
	}
	if rerr != nil {
		return rerr
	}
	if string(got) != "hello" {
		return io.ErrUnexpectedEOF
	}
	return nil
}
