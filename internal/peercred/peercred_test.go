package peercred_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sigil-spiffe/sigil/internal/peercred"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

func socketPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(testutil.ShortTempDir(t), "s.sock")
}

func TestFromConn(t *testing.T) {
	path := socketPath(t)
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	defer server.Close()

	cred, err := peercred.FromConn(server)
	if err != nil {
		t.Fatal(err)
	}
	if cred.PID != int32(os.Getpid()) || cred.UID != uint32(os.Getuid()) || cred.GID != uint32(os.Getgid()) {
		t.Fatalf("got %v, want pid=%d uid=%d gid=%d", cred, os.Getpid(), os.Getuid(), os.Getgid())
	}
	want, err := peercred.StartTime(int32(os.Getpid()))
	if err != nil || cred.StartTime != want || want == 0 {
		t.Fatalf("start time %d, want %d (%v)", cred.StartTime, want, err)
	}
	if err := cred.StillAlive(); err != nil {
		t.Fatalf("StillAlive for ourselves: %v", err)
	}
}

func TestFromConnRejectsTCP(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		if c, err := lis.Accept(); err == nil {
			defer c.Close()
			if _, err := peercred.FromConn(c); err == nil {
				t.Error("FromConn accepted a TCP connection")
			}
		}
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	c.Read(buf) // returns once the server side closes
	c.Close()
}

func TestStillAliveDetectsExitAndReuse(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	pid := int32(cmd.Process.Pid)
	start, err := peercred.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	cred := peercred.Cred{PID: pid, StartTime: start}
	if err := cred.StillAlive(); err != nil {
		t.Fatalf("running process: %v", err)
	}
	// Same PID, other start time: what a recycled PID looks like.
	reused := peercred.Cred{PID: pid, StartTime: start + 1}
	if err := reused.StillAlive(); !errors.Is(err, peercred.ErrProcessChanged) {
		t.Fatalf("changed start time: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := cred.StillAlive(); !errors.Is(err, peercred.ErrProcessChanged) {
		t.Fatalf("exited process: %v, want ErrProcessChanged", err)
	}
}

func TestGRPCCredentials(t *testing.T) {
	path := socketPath(t)
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan peercred.Cred, 1)
	srv := grpc.NewServer(grpc.Creds(peercred.NewCredentials()),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			c, ok := peercred.FromContext(ctx)
			if !ok {
				t.Errorf("no credentials in context: %v", peercred.ErrorFromContext(ctx))
			}
			got <- c
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()

	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	c := <-got
	if c.PID != int32(os.Getpid()) || c.UID != uint32(os.Getuid()) {
		t.Fatalf("handler saw %v", c)
	}
	if _, ok := peercred.FromContext(context.Background()); ok {
		t.Fatal("FromContext found credentials in a bare context")
	}
}
