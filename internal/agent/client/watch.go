package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"google.golang.org/grpc/metadata"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
)

// Watch-mode metadata of SyncAuthorizedEntries (see the server's
// internal/server/api/entry package documentation).
const (
	SyncModeHeader = "sigil-sync"
	SyncModeWatch  = "watch"
)

// ErrWatchUnsupported is returned by WatchEntries when the server ended the
// stream after the first round: it does not implement watch mode (a SPIRE
// server). The first round has been delivered; the caller should fall back
// to periodic SyncEntries.
var ErrWatchUnsupported = errors.New("server does not support watch-mode entry sync")

// WatchEntries opens SyncAuthorizedEntries in watch mode and calls onRound
// with the complete authorized set after every round: once at once, then
// whenever the server reports that the agent's entries or a bundle may have
// changed (a round may repeat the previous entries; bundles should then be
// re-fetched). Only new or changed entries are fetched in full, compared
// with known for the first round and with the previous round afterwards.
//
// A server confirms watch mode by sending the response header
// "sigil-sync: watch"; without it, Round.Pushed becomes true only when a
// second round arrives. A SPIRE server ends the stream after a round that
// fits one page (reported as ErrWatchUnsupported) but, for larger sets,
// just stops answering after the round: callers keep polling with
// SyncEntries until Round.Pushed.
//
// It returns when ctx is done (nil), when onRound fails (its error), or when
// the stream fails. The stream has no deadline: pair it with a periodic
// single-round sync to detect a silently dead connection.
func (c *Client) WatchEntries(ctx context.Context, known KnownFunc, onRound func(*Round) error) error {
	if known == nil {
		known = noneKnown
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, SyncModeHeader, SyncModeWatch)
	stream, err := c.entry.SyncAuthorizedEntries(ctx)
	if err != nil {
		return fmt.Errorf("watch entries: open stream: %w", err)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{OutputMask: entryOutputMask}); err != nil {
		return fmt.Errorf("watch entries: %w", sendErr(stream, err))
	}
	confirmed := false
	for rounds := 0; ; rounds++ {
		first, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				if rounds == 1 {
					return ErrWatchUnsupported
				}
				return fmt.Errorf("watch entries: server ended the stream")
			}
			return fmt.Errorf("watch entries: %w", err)
		}
		if rounds == 0 {
			// Headers arrived with the first message: no blocking.
			if md, err := stream.Header(); err == nil {
				for _, v := range md.Get(SyncModeHeader) {
					confirmed = confirmed || strings.EqualFold(strings.TrimSpace(v), SyncModeWatch)
				}
			}
		} else {
			confirmed = true
		}
		w, err := c.recvRound(stream, first, known)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch entries: %w", err)
		}
		if len(first.EntryRevisions) > 0 {
			// Revisions round: an empty request ends it; its answer is
			// one empty response.
			if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{}); err != nil {
				return fmt.Errorf("watch entries: end round: %w", sendErr(stream, err))
			}
			resp, err := stream.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("watch entries: end round: %w", err)
			}
			if len(resp.Entries) > 0 || len(resp.EntryRevisions) > 0 || resp.More {
				return errors.New("watch entries: unexpected answer to the end-of-round request")
			}
		}
		r := c.toRound(w, known)
		r.Pushed = confirmed
		r.Server = peerAddr(stream.Context())
		prev := make(map[string]*cache.Entry, len(r.Entries))
		for _, e := range r.Entries {
			prev[e.ID] = e
		}
		known = func(id string) (*cache.Entry, bool) {
			e, ok := prev[id]
			return e, ok
		}
		if err := onRound(r); err != nil {
			return err
		}
	}
}
