package endpoints_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sigil-spiffe/sigil/internal/agent/endpoints"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// countingAttestor gives every caller its uid selector and counts calls.
type countingAttestor struct {
	calls atomic.Int32
	fail  bool
}

func (a *countingAttestor) Attest(_ context.Context, pid int32) ([]selector.Selector, error) {
	a.calls.Add(1)
	if a.fail {
		return nil, errors.New(`workload attestation failed: WorkloadAttestor "k8s" failed`)
	}
	if pid != int32(os.Getpid()) {
		return nil, errors.New("unexpected pid " + strconv.Itoa(int(pid)))
	}
	return []selector.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())}}, nil
}

// testService is a hand-written gRPC service: Whoami attests (three times,
// to show it costs one attestation) and answers the caller's selectors;
// Panic panics; Watch is a stream that attests twice and sends one answer.
type testService struct{}

const serviceName = "sigil.test.Endpoints"

func (testService) Register(r grpc.ServiceRegistrar) {
	r.RegisterService(&grpc.ServiceDesc{
		ServiceName: serviceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Whoami", Handler: unaryHandler("Whoami", func(ctx context.Context) (string, error) {
				var c endpoints.Caller
				for range 3 {
					var err error
					if c, err = endpoints.Attest(ctx); err != nil {
						return "", err
					}
				}
				return describe(c), nil
			})},
			{MethodName: "Panic", Handler: unaryHandler("Panic", func(context.Context) (string, error) {
				panic("handler bug")
			})},
		},
		Streams: []grpc.StreamDesc{{StreamName: "Watch", ServerStreams: true, Handler: func(_ any, ss grpc.ServerStream) error {
			in := new(wrapperspb.StringValue)
			if err := ss.RecvMsg(in); err != nil {
				return err
			}
			if _, err := endpoints.Attest(ss.Context()); err != nil {
				return err
			}
			c, err := endpoints.Attest(ss.Context())
			if err != nil {
				return err
			}
			return ss.SendMsg(wrapperspb.String(describe(c)))
		}}},
	}, testService{})
}

func describe(c endpoints.Caller) string {
	var sels []string
	for s := range c.Selectors {
		sels = append(sels, s.Type+":"+s.Value)
	}
	return strconv.Itoa(int(c.Cred.PID)) + " " + strings.Join(sels, ",")
}

func unaryHandler(name string, f func(context.Context) (string, error)) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	return func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		in := new(wrapperspb.StringValue)
		if err := dec(in); err != nil {
			return nil, err
		}
		h := func(ctx context.Context, _ any) (any, error) {
			s, err := f(ctx)
			if err != nil {
				return nil, err
			}
			return wrapperspb.String(s), nil
		}
		if icpt == nil {
			return h(ctx, in)
		}
		return icpt(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/" + serviceName + "/" + name}, h)
	}
}

type observed struct {
	method string
	code   codes.Code
}

type observer struct {
	mu    sync.Mutex
	calls []observed
}

func (o *observer) CallDone(method string, code codes.Code, elapsed time.Duration) {
	if elapsed < 0 {
		panic("negative duration")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, observed{method, code})
}

func (o *observer) get() []observed {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]observed(nil), o.calls...)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	socket string
	conn   *grpc.ClientConn
	logs   *syncBuffer
}

// start runs endpoints serving testService on a fresh socket until cleanup.
func start(t *testing.T, cfg endpoints.Config) *env {
	t.Helper()
	logs := &syncBuffer{}
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(testutil.ShortTempDir(t), "agent.sock")
	}
	if cfg.Attestor == nil {
		cfg.Attestor = &countingAttestor{}
	}
	cfg.Services = append(cfg.Services, testService{})
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	stop := run(t, cfg)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+cfg.SocketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &env{socket: cfg.SocketPath, conn: conn, logs: logs}
}

// run starts endpoints and waits until they serve; stop ends them.
func run(t *testing.T, cfg endpoints.Config) (stop func() error) {
	t.Helper()
	ep, err := endpoints.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ep.Run(ctx) }()
	select {
	case <-ep.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("run: %v", err)
	}
	return func() error { cancel(); return <-done }
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) whoami(ctx context.Context) (string, error) {
	out := new(wrapperspb.StringValue)
	err := e.conn.Invoke(ctx, "/"+serviceName+"/Whoami", wrapperspb.String(""), out)
	return out.GetValue(), err
}

func (e *env) watch(ctx context.Context) (string, error) {
	st, err := e.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/"+serviceName+"/Watch")
	if err != nil {
		return "", err
	}
	if err := st.SendMsg(wrapperspb.String("")); err != nil {
		return "", err
	}
	if err := st.CloseSend(); err != nil {
		return "", err
	}
	out := new(wrapperspb.StringValue)
	err = st.RecvMsg(out)
	return out.GetValue(), err
}

// TestCallerAttestedOncePerCall: a handler asking for its caller several
// times costs one attestation per call, unary and streaming, and gets the
// peer's PID and the attestors' selectors.
func TestCallerAttestedOncePerCall(t *testing.T) {
	a := &countingAttestor{}
	e := start(t, endpoints.Config{Attestor: a})
	ctx := ctxT(t)
	want := strconv.Itoa(os.Getpid()) + " unix:uid:" + strconv.Itoa(os.Getuid())
	for i := range 2 {
		got, err := e.whoami(ctx)
		if err != nil || got != want {
			t.Fatalf("Whoami: %q, %v; want %q", got, err, want)
		}
		if n := a.calls.Load(); n != int32(i+1) {
			t.Fatalf("after %d calls: %d attestations", i+1, n)
		}
	}
	got, err := e.watch(ctx)
	if err != nil || got != want {
		t.Fatalf("Watch: %q, %v; want %q", got, err, want)
	}
	if n := a.calls.Load(); n != 3 {
		t.Fatalf("after a stream that asked twice: %d attestations, want 3", n)
	}
}

// TestAttestationFailureIsUnavailable: when the attestors fail, the call
// fails with Unavailable and their message (which names the plugins).
func TestAttestationFailureIsUnavailable(t *testing.T) {
	e := start(t, endpoints.Config{Attestor: &countingAttestor{fail: true}})
	_, err := e.whoami(ctxT(t))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), `WorkloadAttestor "k8s" failed`) {
		t.Fatalf("Whoami: %v, want Unavailable naming the plugin", err)
	}
}

// TestAttestOutsideEndpoints: a handler served without the endpoints'
// middleware gets Internal, not a caller.
func TestAttestOutsideEndpoints(t *testing.T) {
	if _, err := endpoints.Attest(context.Background()); status.Code(err) != codes.Internal {
		t.Fatalf("Attest: %v, want Internal", err)
	}
}

// TestPanicFailsTheCallOnly: a handler's panic fails its call with
// Internal, is logged, and the agent keeps serving.
func TestPanicFailsTheCallOnly(t *testing.T) {
	obs := &observer{}
	e := start(t, endpoints.Config{Observer: obs})
	ctx := ctxT(t)
	err := e.conn.Invoke(ctx, "/"+serviceName+"/Panic", wrapperspb.String(""), new(wrapperspb.StringValue))
	if status.Code(err) != codes.Internal {
		t.Fatalf("Panic: %v, want Internal", err)
	}
	if _, err := e.whoami(ctx); err != nil {
		t.Fatalf("after a panic: %v", err)
	}
	if l := e.logs.String(); !strings.Contains(l, "Call handler panicked") || !strings.Contains(l, "handler bug") {
		t.Errorf("panic not logged:\n%s", l)
	}
	got := obs.get()
	want := []observed{{"/" + serviceName + "/Panic", codes.Internal}, {"/" + serviceName + "/Whoami", codes.OK}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("observed %v, want %v", got, want)
	}
}

// TestHealthReportsEachService: health answers SERVING overall and for
// every registered service, and NotFound for others.
func TestHealthReportsEachService(t *testing.T) {
	e := start(t, endpoints.Config{})
	ctx := ctxT(t)
	hc := healthpb.NewHealthClient(e.conn)
	for _, name := range []string{"", serviceName} {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q: %v, %v", name, r, err)
		}
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
		t.Fatalf("health of an unknown service: %v, want NotFound", err)
	}
}

func TestSocketLifecycle(t *testing.T) {
	socket := filepath.Join(testutil.ShortTempDir(t), "nested", "api.sock")
	cfg := endpoints.Config{SocketPath: socket, Attestor: &countingAttestor{}, Services: []endpoints.Service{testService{}}}
	stop := run(t, cfg)
	fi, err := os.Stat(socket)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o777 {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}
	di, err := os.Stat(filepath.Dir(socket))
	if err != nil || di.Mode().Perm() != 0o755 {
		t.Fatalf("socket dir mode %v, %v", di.Mode().Perm(), err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket not removed on shutdown: %v", err)
	}

	// A stale socket (left by a crash) is replaced.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Net: "unix", Name: socket})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	stop = run(t, cfg)
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// A regular file at the path is not deleted.
	if err := os.WriteFile(socket, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	ep, err := endpoints.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Run(context.Background()); err == nil {
		t.Fatal("Run replaced a regular file")
	}
	if data, _ := os.ReadFile(socket); string(data) != "precious" {
		t.Fatal("regular file was modified")
	}
}

// A second agent on a socket another one serves is refused; the first
// keeps its socket (same file) and keeps serving, also after the second
// has returned, and removes it on its own stop.
func TestSocketNotTakenOver(t *testing.T) {
	socket := filepath.Join(testutil.ShortTempDir(t), "api.sock")
	cfg := endpoints.Config{SocketPath: socket, Attestor: &countingAttestor{}}
	stop := run(t, cfg)
	before, err := os.Lstat(socket)
	if err != nil {
		t.Fatal(err)
	}

	second, err := endpoints.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := make(chan error, 1)
	go func() { done2 <- second.Run(ctx2) }()
	select {
	case err := <-done2:
		if err == nil || !strings.Contains(err.Error(), "in use by another process") {
			t.Fatalf("second agent on a live socket: %v", err)
		}
	case <-second.Ready():
		cancel2()
		<-done2
		t.Fatal("second agent took over the first one's socket")
	}
	after, err := os.Lstat(socket)
	if err != nil {
		t.Fatalf("first agent's socket gone after the second returned: %v", err)
	}
	if !os.SameFile(before, after) {
		t.Fatal("first agent's socket was replaced")
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(ctxT(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("first agent no longer serves: %v", err)
	}

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket not removed on the first agent's stop: %v", err)
	}
}
