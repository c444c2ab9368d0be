// Command sensor is the edge-iot example's IoT sensor: it takes readings
// and posts each one to the edge gateway over mTLS with its SPIFFE
// identity, retrying until the gateway acknowledges it (the gateway
// acknowledges only after the reading is fsynced to its buffer).
//
//	sensor -name sensor-1 -gateway https://127.0.0.1:8443 \
//	    -gatewayID spiffe://example.org/edge/gateway -count 100
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/signal"
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
		fmt.Fprintln(os.Stderr, "sensor:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sensor", flag.ContinueOnError)
	name := fs.String("name", "sensor-1", "sensor name; reading IDs are <name>-<seq>")
	gateway := fs.String("gateway", "https://127.0.0.1:8443", "gateway base URL")
	gatewayID := fs.String("gatewayID", "", "SPIFFE ID the gateway must present (required)")
	count := fs.Uint64("count", 10, "readings to send (0: until stopped)")
	first := fs.Uint64("first", 1, "sequence number of the first reading")
	interval := fs.Duration("interval", time.Second, "time between readings")
	socket := fs.String("socket", "", "Workload API address (default: $SPIFFE_ENDPOINT_SOCKET)")
	self := fs.String("spiffeID", "", "which of this process's SVIDs to use, if it has several")
	if err := fs.Parse(args); err != nil {
		return err
	}
	gwID, err := spiffeid.FromString(*gatewayID)
	if err != nil {
		return fmt.Errorf("-gatewayID: %w", err)
	}
	log := edge.Logger("sensor").With("sensor", *name)

	src, err := edge.Source(ctx, *socket, *self)
	if err != nil {
		return err
	}
	defer src.Close()
	if svid, err := src.GetX509SVID(); err == nil {
		log.Info("Sensor has its identity", "spiffe_id", svid.ID.String())
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(gwID))},
	}

	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for seq := *first; *count == 0 || seq < *first+*count; seq++ {
		r := edge.Reading{
			ID:     fmt.Sprintf("%s-%08d", *name, seq),
			Sensor: *name,
			Seq:    seq,
			Value:  20 + 5*math.Sin(float64(seq)/10),
			Unit:   "C",
			Time:   time.Now().UTC(),
		}
		if err := send(ctx, client, *gateway, r, log); err != nil {
			return err
		}
		log.Info("Reading acknowledged", "id", r.ID)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	log.Info("All readings acknowledged", "count", *count)
	return nil
}

// send posts r until the gateway acknowledges it, backing off up to 2s.
func send(ctx context.Context, client *http.Client, gateway string, r edge.Reading, log *slog.Logger) error {
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	delay := 100 * time.Millisecond
	for {
		err := post(ctx, client, gateway+"/readings", body)
		if err == nil {
			return nil
		}
		log.Warn("Gateway did not acknowledge the reading; retrying", "id", r.ID, "retry_in", delay, "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 2*time.Second)
	}
}

func post(ctx context.Context, client *http.Client, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("gateway answered %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
