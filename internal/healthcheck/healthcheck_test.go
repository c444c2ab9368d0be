package healthcheck

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var ready atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, Config{
			Addr: addr, LivePath: "/live", ReadyPath: "/ready",
			Ready: func() (bool, string) {
				if ready.Load() {
					return true, "ok"
				}
				return false, "not ready: starting"
			},
			Handlers: map[string]http.Handler{"/extra": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "extra") })},
		})
	}()
	get := func(path string) (int, string) {
		t.Helper()
		for {
			resp, err := http.Get("http://" + addr + path)
			if err != nil {
				select {
				case err := <-done:
					t.Fatalf("server stopped: %v", err)
				default:
				}
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, strings.TrimSpace(string(b))
		}
	}
	if code, body := get("/live"); code != 200 || body != "ok" {
		t.Errorf("/live = %d %q", code, body)
	}
	if code, body := get("/ready"); code != 503 || body != "not ready: starting" {
		t.Errorf("/ready before = %d %q", code, body)
	}
	ready.Store(true)
	if code, _ := get("/ready"); code != 200 {
		t.Errorf("/ready after = %d", code)
	}
	if code, body := get("/extra"); code != 200 || body != "extra" {
		t.Errorf("/extra = %d %q", code, body)
	}
	if code, _ := get("/nope"); code != 404 {
		t.Errorf("/nope = %d", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
