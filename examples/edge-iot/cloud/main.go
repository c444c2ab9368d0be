// Command cloud is the edge-iot example's cloud ingest service. Gateways
// post batches of readings over mTLS; it accepts only the configured
// gateway SPIFFE IDs (exact IDs or a path prefix), stores each reading
// once (keyed by its ID, so a batch re-sent after a gateway crash or a
// lost answer adds nothing), fsyncs, and only then answers 200.
//
//	cloud -listen 127.0.0.1:9443 -data ./cloud-data -gatewayPrefix /edge/gateway
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/sigil-spiffe/sigil/examples/edge-iot/internal/edge"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cloud:", err)
		os.Exit(1)
	}
}

// store is an append-only JSON-lines file of readings plus the set of
// stored IDs.
type store struct {
	mu   sync.Mutex
	f    *os.File
	seen map[string]bool
}

// openStore loads the IDs already stored, cutting off a torn last line.
func openStore(path string) (*store, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := &store{f: f, seen: map[string]bool{}}
	r := bufio.NewReader(f)
	var good int64
	for {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read store: %w", err)
		}
		var rd edge.Reading
		if json.Unmarshal(line, &rd) != nil || rd.ID == "" {
			break
		}
		s.seen[rd.ID] = true
		good += int64(len(line))
	}
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// add stores the readings not stored yet, fsynced.
func (s *store) add(rs []edge.Reading) (edge.BatchResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var res edge.BatchResult
	var buf []byte
	fresh := map[string]bool{}
	for _, r := range rs {
		if s.seen[r.ID] || fresh[r.ID] {
			res.Duplicates++
			continue
		}
		line, err := json.Marshal(r)
		if err != nil {
			return res, err
		}
		buf = append(append(buf, line...), '\n')
		fresh[r.ID] = true
		res.Stored++
	}
	if len(buf) == 0 {
		return res, nil
	}
	if _, err := s.f.Write(buf); err != nil {
		return edge.BatchResult{}, fmt.Errorf("write store: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return edge.BatchResult{}, fmt.Errorf("fsync store: %w", err)
	}
	for id := range fresh {
		s.seen[id] = true
	}
	return res, nil
}

func (s *store) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cloud", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9443", "address gateways connect to")
	dataDir := fs.String("data", "./cloud-data", "directory of the readings store")
	gwPrefix := fs.String("gatewayPrefix", "/edge/gateway", "SPIFFE ID path (or path prefix ending in /) a gateway must have (same trust domain)")
	socket := fs.String("socket", "", "Workload API address (default: $SPIFFE_ENDPOINT_SOCKET)")
	self := fs.String("spiffeID", "", "which of this process's SVIDs to use, if it has several")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := edge.Logger("cloud")
	if err := os.MkdirAll(*dataDir, 0o700); err != nil {
		return err
	}
	st, err := openStore(filepath.Join(*dataDir, "readings.jsonl"))
	if err != nil {
		return err
	}
	defer st.f.Close()
	src, err := edge.Source(ctx, *socket, *self)
	if err != nil {
		return err
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		return err
	}
	td := svid.ID.TrustDomain()
	authorize := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		p := *gwPrefix
		ok := id.Path() == p || (strings.HasSuffix(p, "/") && strings.HasPrefix(id.Path(), p))
		if id.TrustDomain() != td || !ok {
			return fmt.Errorf("%s is not an authorized gateway", id)
		}
		return nil
	})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /batches", func(w http.ResponseWriter, r *http.Request) {
		from, err := edge.PeerID(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		var b edge.Batch
		if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&b); err != nil {
			http.Error(w, "invalid JSON batch", http.StatusBadRequest)
			return
		}
		if len(b.Readings) == 0 || len(b.Readings) > edge.MaxBatch {
			http.Error(w, fmt.Sprintf("a batch holds 1..%d readings", edge.MaxBatch), http.StatusBadRequest)
			return
		}
		for i := range b.Readings {
			if err := b.Readings[i].Validate(); err != nil {
				http.Error(w, fmt.Sprintf("reading %d: %v", i, err), http.StatusBadRequest)
				return
			}
		}
		res, err := st.add(b.Readings)
		if err != nil {
			log.Error("Could not store a batch", "error", err)
			http.Error(w, "could not store the batch", http.StatusServiceUnavailable)
			return
		}
		log.Info("Stored batch", "gateway", from.String(), "stored", res.Stored, "duplicates", res.Duplicates, "total", st.count())
		edge.WriteJSON(w, http.StatusOK, res)
	})
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         tlsconfig.MTLSServerConfig(src, src, authorize),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("Cloud ingest listening", "addr", ln.Addr().String(), "spiffe_id", svid.ID.String(), "stored", st.count())
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
