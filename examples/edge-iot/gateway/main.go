// Command gateway is the edge-iot example's edge gateway. Sensors post
// readings to it over mTLS; it authorizes them by SPIFFE ID path prefix,
// appends each reading to a write-ahead log on disk (fsynced before it
// answers 200), and forwards batches to the cloud ingest service over mTLS
// whenever the cloud is reachable, advancing its acknowledged offset only
// after the cloud has stored a batch. Readings survive a partition from
// the cloud and a gateway crash; a batch re-sent after a crash is
// recognized by the cloud through the reading IDs.
//
//	gateway -listen 127.0.0.1:8443 -data /var/lib/gateway \
//	    -cloud https://cloud.example:9443 -cloudID spiffe://example.org/cloud/ingest
package main

import (
	"bytes"
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
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-spiffe/sigil/examples/edge-iot/internal/edge"
	"github.com/sigil-spiffe/sigil/examples/edge-iot/internal/wal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

type gateway struct {
	log       *slog.Logger
	wal       *wal.WAL
	src       *workloadapi.X509Source
	prefix    string
	cloudURL  string
	cloudID   spiffeid.ID
	batchSize int
	retryMax  time.Duration
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8443", "address sensors connect to")
	dataDir := fs.String("data", "./gateway-data", "directory of the reading buffer")
	prefix := fs.String("sensorPrefix", "/sensor/", "SPIFFE ID path prefix a client must have to post readings (same trust domain as the gateway)")
	cloudURL := fs.String("cloud", "https://127.0.0.1:9443", "cloud ingest base URL")
	cloudID := fs.String("cloudID", "", "SPIFFE ID the cloud must present (required)")
	batch := fs.Int("batch", 100, "readings per batch to the cloud")
	retryMax := fs.Duration("retryMax", 2*time.Second, "longest wait between attempts to reach the cloud")
	socket := fs.String("socket", "", "Workload API address (default: $SPIFFE_ENDPOINT_SOCKET)")
	self := fs.String("spiffeID", "", "which of this process's SVIDs to use, if it has several")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cid, err := spiffeid.FromString(*cloudID)
	if err != nil {
		return fmt.Errorf("-cloudID: %w", err)
	}
	if !strings.HasPrefix(*prefix, "/") || *batch < 1 || *batch > edge.MaxBatch {
		return fmt.Errorf("-sensorPrefix must start with / and -batch be 1..%d", edge.MaxBatch)
	}
	log := edge.Logger("gateway")
	w, err := wal.Open(*dataDir)
	if err != nil {
		return err
	}
	defer w.Close()
	src, err := edge.Source(ctx, *socket, *self)
	if err != nil {
		return err
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		return err
	}
	g := &gateway{log: log, wal: w, src: src, prefix: *prefix, cloudURL: strings.TrimSuffix(*cloudURL, "/"), cloudID: cid, batchSize: *batch, retryMax: *retryMax}

	// Sensors must be in our trust domain, under the sensor prefix.
	td := svid.ID.TrustDomain()
	authorize := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.TrustDomain() != td || !strings.HasPrefix(id.Path(), g.prefix) {
			return fmt.Errorf("%s is not a sensor of %s", id, td)
		}
		return nil
	})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /readings", g.handleReading)
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         tlsconfig.MTLSServerConfig(src, src, authorize),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
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
	go g.forward(ctx)
	log.Info("Gateway listening", "addr", ln.Addr().String(), "spiffe_id", svid.ID.String(), "backlog_bytes", w.Backlog())
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (g *gateway) handleReading(w http.ResponseWriter, r *http.Request) {
	from, err := edge.PeerID(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var rd edge.Reading
	dec := json.NewDecoder(io.LimitReader(r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rd); err != nil {
		http.Error(w, "invalid JSON reading", http.StatusBadRequest)
		return
	}
	if err := rd.Validate(); err != nil {
		http.Error(w, "invalid reading: "+err.Error(), http.StatusBadRequest)
		return
	}
	// A sensor speaks only for itself: spiffe://td/sensor/<name> may send
	// only readings of sensor <name>, with IDs <name>-..., so one sensor
	// cannot shadow another's readings at the cloud.
	if rd.Sensor != path.Base(from.Path()) || !strings.HasPrefix(rd.ID, rd.Sensor+"-") {
		http.Error(w, "reading does not belong to "+from.String(), http.StatusForbidden)
		return
	}
	rd.From = from.String()
	rd.Gateway = time.Now().UTC()
	rec, err := json.Marshal(rd)
	if err == nil {
		err = g.wal.Append(rec)
	}
	if err != nil {
		g.log.Error("Could not buffer a reading", "id", rd.ID, "error", err)
		http.Error(w, "could not store the reading", http.StatusServiceUnavailable)
		return
	}
	edge.WriteJSON(w, http.StatusOK, map[string]string{"status": "buffered", "id": rd.ID})
}

// forward sends pending readings to the cloud until ctx ends.
func (g *gateway) forward(ctx context.Context) {
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(g.src, g.src, tlsconfig.AuthorizeID(g.cloudID))},
	}
	delay := time.Duration(0)
	for {
		if delay > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
		}
		recs, next, err := g.wal.Pending(g.batchSize)
		if err != nil {
			g.log.Error("Cannot read the buffer", "error", err)
			delay = g.retryMax
			continue
		}
		if len(recs) == 0 {
			delay = 0
			select {
			case <-ctx.Done():
				return
			case <-g.wal.Notify():
			case <-time.After(time.Second):
			}
			continue
		}
		res, err := g.sendBatch(ctx, client, recs)
		if err != nil {
			delay = min(max(2*delay, 100*time.Millisecond), g.retryMax)
			g.log.Warn("Cloud unreachable; keeping readings buffered", "pending_bytes", g.wal.Backlog(), "retry_in", delay, "error", err)
			continue
		}
		if err := g.wal.Ack(next); err != nil {
			g.log.Error("Cannot record forwarded readings", "error", err)
			delay = g.retryMax
			continue
		}
		delay = 0
		g.log.Info("Forwarded batch", "readings", len(recs), "stored", res.Stored, "duplicates", res.Duplicates, "pending_bytes", g.wal.Backlog())
	}
}

func (g *gateway) sendBatch(ctx context.Context, client *http.Client, recs [][]byte) (edge.BatchResult, error) {
	var res edge.BatchResult
	b := edge.Batch{Gateway: ""}
	if svid, err := g.src.GetX509SVID(); err == nil {
		b.Gateway = svid.ID.String()
	}
	for _, rec := range recs {
		var rd edge.Reading
		if err := json.Unmarshal(rec, &rd); err != nil {
			return res, fmt.Errorf("buffered record is not a reading: %w", err)
		}
		b.Readings = append(b.Readings, rd)
	}
	body, err := json.Marshal(b)
	if err != nil {
		return res, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.cloudURL+"/batches", bytes.NewReader(body))
	if err != nil {
		return res, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return res, fmt.Errorf("cloud answered %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&res); err != nil {
		return res, fmt.Errorf("cloud answer: %w", err)
	}
	return res, nil
}
