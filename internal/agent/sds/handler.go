package sds

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/endpoints"
	"github.com/sigil-spiffe/sigil/internal/agent/sds/sdspb"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

var (
	errRevoked  = status.Error(codes.PermissionDenied, "the agent's identity was revoked by its server: it serves no secrets")
	errNoBundle = status.Error(codes.Unavailable, "the agent has no trust bundle yet")
)

// maxDetailLen bounds how much of Envoy's error_detail is logged.
const maxDetailLen = 256

// checkRequest validates what a request asks for and returns its names,
// distinct, in order.
func checkRequest(req *sdspb.DiscoveryRequest) ([]string, error) {
	if t := req.GetTypeUrl(); t != "" && t != SecretTypeURL {
		return nil, status.Errorf(codes.InvalidArgument, "type_url %s is not %s", clip.Quote(t), SecretTypeURL)
	}
	if err := checkNode(req.GetNode()); err != nil {
		return nil, err
	}
	rn := req.GetResourceNames()
	if len(rn) > MaxResourceNames {
		return nil, status.Errorf(codes.InvalidArgument, "%d resource names requested; at most %d", len(rn), MaxResourceNames)
	}
	names := make([]string, 0, len(rn))
	seen := make(map[string]struct{}, len(rn))
	for i, n := range rn {
		switch {
		case n == "":
			return nil, status.Errorf(codes.InvalidArgument, "resource name %d is empty", i)
		case len(n) > MaxNameLen:
			return nil, status.Errorf(codes.InvalidArgument, "resource name %d is longer than %d bytes", i, MaxNameLen)
		}
		if _, dup := seen[n]; !dup {
			seen[n] = struct{}{}
			names = append(names, n)
		}
	}
	return names, nil
}

var errNoNames = status.Error(codes.InvalidArgument, "resource_names is empty: SDS secrets are requested by name")

// FetchSecrets answers one request, with no version or nonce.
func (h *handler) FetchSecrets(ctx context.Context, req *sdspb.DiscoveryRequest) (*sdspb.DiscoveryResponse, error) {
	s := h.s
	names, err := checkRequest(req)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, errNoNames
	}
	caller, err := endpoints.Attest(ctx)
	if err != nil {
		return nil, err
	}
	if s.cfg.Cache.Revoked() {
		return nil, errRevoked
	}
	u := s.cfg.Cache.FetchWorkloadUpdate(caller.Selectors)
	if u.Bundle == nil {
		return nil, errNoBundle
	}
	secrets, err := s.secrets(names, s.useSPIFFEValidator(req.GetNode()), u)
	if err != nil {
		s.log.Warn("Refused SDS fetch", "pid", caller.Cred.PID, "error", err)
		return nil, err
	}
	return &sdspb.DiscoveryResponse{TypeUrl: SecretTypeURL, Resources: secrets}, nil
}

// StreamSecrets serves one state-of-the-world SDS stream (see the package
// documentation).
func (h *handler) StreamSecrets(stream grpc.BidiStreamingServer[sdspb.DiscoveryRequest, sdspb.DiscoveryResponse]) error {
	s := h.s
	ctx := stream.Context()
	caller, err := endpoints.Attest(ctx)
	if err != nil {
		return err
	}
	if s.cfg.Cache.Revoked() {
		return errRevoked
	}
	sub := s.cfg.Cache.Subscribe(caller.Selectors)
	defer sub.Close()
	log := s.log.With("pid", caller.Cred.PID)

	// The receiver ends when the stream does (Recv fails once the handler
	// returned) or, having read a request, when the handler is gone.
	reqs := make(chan *sdspb.DiscoveryRequest)
	recvErr := make(chan error, 1)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-done:
				return
			}
		}
	}()

	st := &streamState{wait: s.clk.After(s.cfg.IdentityWait)}
	for {
		force := false
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		case req := <-reqs:
			log.Debug("Received SDS request", "names", len(req.GetResourceNames()),
				"version", clip.Quote(req.GetVersionInfo()), "nonce", clip.Quote(req.GetResponseNonce()))
			changed, err := st.request(s, log, req)
			if err != nil {
				log.Warn("Refused SDS request", "error", err)
				return err
			}
			if !changed {
				continue
			}
			force = true
		case u := <-sub.Updates():
			if s.cfg.Cache.Revoked() {
				return errRevoked
			}
			st.upd = u
			if !st.ready && complete(u) {
				st.ready, st.wait = true, nil
			}
		case <-st.wait:
			st.ready, st.wait = true, nil
		}
		if !st.subscribed || len(st.names) == 0 || !st.ready {
			continue
		}
		if st.upd == nil || st.upd.Bundle == nil {
			return errNoBundle
		}
		secrets, err := s.secrets(st.names, st.spiffe, st.upd)
		if err != nil {
			log.Warn("Refused SDS request", "error", err)
			return err
		}
		d := digest(secrets)
		if !force && st.sent && d == st.digest {
			continue
		}
		st.version++
		resp := &sdspb.DiscoveryResponse{
			VersionInfo: strconv.FormatUint(st.version, 10),
			Resources:   secrets,
			TypeUrl:     SecretTypeURL,
			Nonce:       rand.Text(),
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		st.nonce, st.digest, st.sent = resp.Nonce, d, true
		log.Debug("Sent SDS secrets", "version", resp.VersionInfo, "secrets", len(secrets))
	}
}

// streamState is one stream's xDS state.
type streamState struct {
	// subscribed is set by the first valid request; names are the
	// subscribed names (empty after an unsubscription).
	subscribed bool
	names      []string
	node       *sdspb.Node
	spiffe     bool

	// upd is the caller's latest state; ready once the first response
	// may be built (complete, or the wait is over).
	upd   *cache.WorkloadUpdate
	ready bool
	wait  <-chan time.Time

	version uint64
	nonce   string // of the last response sent
	digest  [sha256.Size]byte
	sent    bool
}

// complete reports whether a caller's state has everything its first
// response waits for: our trust bundle, an SVID for each of its entries
// and the bundle of each trust domain they federate with (which the agent
// may learn of after the SVIDs).
func complete(u *cache.WorkloadUpdate) bool {
	if u.Bundle == nil || len(u.Identities) != len(u.Entries) {
		return false
	}
	for _, e := range u.Entries {
		for _, td := range e.FederatesWith {
			if _, ok := u.FederatedBundles[td]; !ok && td != u.Bundle.TrustDomain() {
				return false
			}
		}
	}
	return true
}

// request applies a request to the stream's state and reports whether the
// stream must answer it: its first request and any that changes the names
// or how validation contexts are built. Acknowledgements, rejections
// (NACKs) and stale requests are not answered.
func (st *streamState) request(s *Service, log *slog.Logger, req *sdspb.DiscoveryRequest) (bool, error) {
	names, err := checkRequest(req)
	if err != nil {
		return false, err
	}
	if st.sent {
		if req.GetResponseNonce() != st.nonce {
			// A response is in flight that this request has not seen;
			// its answer to that one will follow.
			log.Debug("Ignoring a stale SDS request", "nonce", clip.Quote(req.GetResponseNonce()))
			return false, nil
		}
		if req.GetVersionInfo() != strconv.FormatUint(st.version, 10) || req.GetErrorDetail() != nil {
			log.Warn("Envoy rejected the secrets sent (NACK); keeping its previous version until they change",
				"version", strconv.FormatUint(st.version, 10), "envoy_version", clip.Quote(req.GetVersionInfo()),
				"names", len(st.names), "error_detail", clip.Cut(req.GetErrorDetail().GetMessage(), maxDetailLen))
		}
	}
	if req.GetNode() != nil {
		st.node = req.GetNode()
	}
	if !st.subscribed && len(names) == 0 {
		return false, errNoNames
	}
	spiffe := s.useSPIFFEValidator(st.node)
	if st.subscribed && spiffe == st.spiffe && sameSet(st.names, names) {
		return false, nil
	}
	st.subscribed, st.names, st.spiffe = true, names, spiffe
	return len(names) > 0, nil
}

// sameSet compares two lists of distinct names as sets.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	in := make(map[string]struct{}, len(a))
	for _, n := range a {
		in[n] = struct{}{}
	}
	for _, n := range b {
		if _, ok := in[n]; !ok {
			return false
		}
	}
	return true
}

// digest identifies a response's secrets.
func digest(secrets []*anypb.Any) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	for _, a := range secrets {
		binary.BigEndian.PutUint64(n[:], uint64(len(a.GetValue())))
		h.Write(n[:])
		h.Write(a.GetValue())
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}
