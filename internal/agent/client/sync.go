package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/peer"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
)

// entryOutputMask asks for every field the agent uses.
var entryOutputMask = &types.EntryMask{
	SpiffeId: true, ParentId: true, Selectors: true, X509SvidTtl: true,
	FederatesWith: true, Admin: true, Downstream: true, ExpiresAt: true,
	DnsNames: true, RevisionNumber: true, StoreSvid: true, JwtSvidTtl: true,
	Hint: true, CreatedAt: true,
}

// KnownFunc returns the cached entry with an ID, if any. Entries whose
// revision number and creation time match what the server reports are not
// fetched again.
type KnownFunc func(id string) (*cache.Entry, bool)

// Round is the outcome of one sync round.
type Round struct {
	// Entries is the complete set of authorized entries, sorted by ID:
	// those received in full plus the unchanged ones taken from the known
	// set. Malformed entries are left out (and logged).
	Entries []*cache.Entry
	// Fetched counts the entries received in full.
	Fetched int
	// Skipped counts malformed entries that were left out.
	Skipped int
	// Pushed is set by WatchEntries once the server has shown that it
	// implements watch mode (by confirming it in its response header, or
	// by pushing a round after the first): later changes will be pushed.
	// Until then the server may be one that never pushes (SPIRE).
	Pushed bool
	// Server is the address of the server that answered (ip:port), or ""
	// when unknown.
	Server string
}

// peerAddr is the address of the server a stream is connected to.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// wireRound is the outcome of one sync round at the wire level.
type wireRound struct {
	// ids lists every authorized entry ID.
	ids map[string]struct{}
	// full holds the complete entries the server sent: every authorized
	// entry (small sets), or those that were new or changed.
	full []*types.Entry
}

// recvRound runs one round on an open stream whose first response is
// first: either the complete list of entries, or pages of revisions after
// which the client asks for the entries it lacks.
func (c *Client) recvRound(stream entryv1.Entry_SyncAuthorizedEntriesClient, first *entryv1.SyncAuthorizedEntriesResponse, known KnownFunc) (*wireRound, error) {
	r := &wireRound{ids: make(map[string]struct{})}
	addFull := func(entries []*types.Entry) error {
		for _, e := range entries {
			if e == nil || e.Id == "" {
				return errors.New("server sent an entry without an ID")
			}
			r.ids[e.Id] = struct{}{}
			r.full = append(r.full, e)
		}
		return nil
	}

	resp := first
	if len(resp.EntryRevisions) == 0 {
		// Complete list, possibly in several pages.
		for {
			if err := addFull(resp.Entries); err != nil {
				return nil, err
			}
			if !resp.More {
				return r, nil
			}
			var err error
			if resp, err = stream.Recv(); err != nil {
				return nil, fmt.Errorf("receive entries page: %w", err)
			}
			if len(resp.EntryRevisions) > 0 {
				return nil, errors.New("server sent entry revisions while paging entries")
			}
		}
	}

	pageSize := len(resp.EntryRevisions)
	var needFull []string
	for {
		if len(resp.Entries) > 0 {
			return nil, errors.New("server sent entries while paging revisions")
		}
		for _, rev := range resp.EntryRevisions {
			if rev.GetId() == "" || rev.GetRevisionNumber() < 0 {
				c.log.Warn("ignoring malformed entry revision from server", "entry_id", rev.GetId(), "revision", rev.GetRevisionNumber())
				continue
			}
			r.ids[rev.Id] = struct{}{}
			if have, ok := known(rev.Id); !ok || stale(have, rev) {
				needFull = append(needFull, rev.Id)
			}
		}
		if !resp.More {
			break
		}
		var err error
		if resp, err = stream.Recv(); err != nil {
			return nil, fmt.Errorf("receive entry revisions page: %w", err)
		}
	}

	slices.Sort(needFull)
	for len(needFull) > 0 {
		n := min(len(needFull), pageSize)
		if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{Ids: needFull[:n]}); err != nil {
			return nil, fmt.Errorf("request entries: %w", sendErr(stream, err))
		}
		needFull = needFull[n:]
		for {
			resp, err := stream.Recv()
			if err != nil {
				return nil, fmt.Errorf("receive requested entries: %w", err)
			}
			if len(resp.EntryRevisions) > 0 {
				return nil, errors.New("server sent entry revisions while answering an entry request")
			}
			// Only keep entries we asked for and that are authorized.
			for _, e := range resp.Entries {
				if e == nil || e.Id == "" {
					return nil, errors.New("server sent an entry without an ID")
				}
				if _, ok := r.ids[e.Id]; !ok {
					return nil, fmt.Errorf("server sent entry %q that was not in its revision list", e.Id)
				}
				r.full = append(r.full, e)
			}
			if !resp.More {
				break
			}
		}
	}
	return r, nil
}

// stale reports whether a cached entry is older than the server's.
func stale(have *cache.Entry, rev *entryv1.EntryRevision) bool {
	if have.RevisionNumber != rev.RevisionNumber {
		return true
	}
	// Same ID and revision but a different creation time: the entry was
	// deleted and re-created.
	return rev.CreatedAt != 0 && have.CreatedAt.Unix() != rev.CreatedAt
}

// toRound converts a wire round, reusing known entries for unchanged IDs.
func (c *Client) toRound(w *wireRound, known KnownFunc) *Round {
	r := &Round{Fetched: len(w.full)}
	got := make(map[string]bool, len(w.full))
	for _, pe := range w.full {
		if got[pe.Id] {
			continue
		}
		e, err := EntryFromProto(pe)
		if err != nil {
			r.Skipped++
			c.log.Warn("Ignoring malformed entry from server", "entry_id", pe.GetId(), "error", err)
			continue
		}
		got[pe.Id] = true
		r.Entries = append(r.Entries, e)
	}
	for id := range w.ids {
		if _, ok := got[id]; ok {
			continue
		}
		if e, ok := known(id); ok {
			r.Entries = append(r.Entries, e)
		}
	}
	slices.SortFunc(r.Entries, func(a, b *cache.Entry) int { return strings.Compare(a.ID, b.ID) })
	return r
}

// sendErr returns the stream's real error when Send fails (gRPC reports
// io.EOF from Send and the status from Recv).
func sendErr(stream entryv1.Entry_SyncAuthorizedEntriesClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := stream.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
			return rerr
		}
	}
	return err
}

// SyncEntries runs one SPIRE-style sync round on a new stream and returns
// the complete authorized set. known may be nil (fetch everything).
func (c *Client) SyncEntries(ctx context.Context, known KnownFunc) (*Round, error) {
	if known == nil {
		known = noneKnown
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	stream, err := c.entry.SyncAuthorizedEntries(ctx)
	if err != nil {
		return nil, fmt.Errorf("sync entries: open stream: %w", err)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{OutputMask: entryOutputMask}); err != nil {
		return nil, fmt.Errorf("sync entries: %w", sendErr(stream, err))
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("sync entries: %w", err)
	}
	w, err := c.recvRound(stream, first, known)
	if err != nil {
		return nil, fmt.Errorf("sync entries: %w", err)
	}
	_ = stream.CloseSend()
	r := c.toRound(w, known)
	r.Server = peerAddr(stream.Context())
	return r, nil
}

func noneKnown(string) (*cache.Entry, bool) { return nil, false }
