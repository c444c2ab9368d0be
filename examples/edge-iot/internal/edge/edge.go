// Package edge holds what the edge-iot example's sensor, gateway and cloud
// share: the reading format and its validation, and the go-spiffe setup.
package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"regexp"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Reading is one sensor measurement. ID is unique per reading (sensor name
// and sequence number): a retried reading keeps its ID, which is how the
// cloud stores each reading exactly once.
type Reading struct {
	ID     string    `json:"id"`
	Sensor string    `json:"sensor"`
	Seq    uint64    `json:"seq"`
	Value  float64   `json:"value"`
	Unit   string    `json:"unit"`
	Time   time.Time `json:"time"`
	// Set by the gateway: the SPIFFE ID that sent the reading.
	From    string    `json:"from,omitempty"`
	Gateway time.Time `json:"gateway_time,omitzero"`
}

var token = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// Validate checks a reading received from the network.
func (r *Reading) Validate() error {
	switch {
	case !token.MatchString(r.ID):
		return errors.New("id must be 1-128 of [A-Za-z0-9._:-]")
	case !token.MatchString(r.Sensor):
		return errors.New("sensor must be 1-128 of [A-Za-z0-9._:-]")
	case len(r.Unit) > 16:
		return errors.New("unit too long")
	case math.IsNaN(r.Value) || math.IsInf(r.Value, 0):
		return errors.New("value must be finite")
	case r.Time.IsZero():
		return errors.New("time is required")
	}
	return nil
}

// Batch is what the gateway posts to the cloud.
type Batch struct {
	Gateway  string    `json:"gateway"`
	Readings []Reading `json:"readings"`
}

// BatchResult is the cloud's answer.
type BatchResult struct {
	Stored     int `json:"stored"`
	Duplicates int `json:"duplicates"`
}

// MaxBatch bounds the readings in one batch.
const MaxBatch = 500

// Source connects to the Workload API (SPIFFE_ENDPOINT_SOCKET, or socket
// if set) and waits up to a minute for an X509-SVID. When the Workload API
// hands this process several SVIDs, want (if set) picks one.
func Source(ctx context.Context, socket, want string) (*workloadapi.X509Source, error) {
	var opts []workloadapi.X509SourceOption
	if socket != "" {
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(socket)))
	}
	if want != "" {
		id, err := spiffeid.FromString(want)
		if err != nil {
			return nil, fmt.Errorf("-spiffeID: %w", err)
		}
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(s []*x509svid.SVID) *x509svid.SVID {
			for _, sv := range s {
				if sv.ID == id {
					return sv
				}
			}
			return s[0]
		}))
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("get an X509-SVID from the Workload API: %w", err)
	}
	return src, nil
}

// Logger is a text slog logger on stderr.
func Logger(name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("service", name)
}

// PeerID is the SPIFFE ID of the mTLS peer of r (already authorized by
// the TLS config).
func PeerID(r *http.Request) (spiffeid.ID, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || len(r.TLS.PeerCertificates[0].URIs) != 1 {
		return spiffeid.ID{}, errors.New("no SPIFFE client certificate")
	}
	return spiffeid.FromURI(r.TLS.PeerCertificates[0].URIs[0])
}

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
