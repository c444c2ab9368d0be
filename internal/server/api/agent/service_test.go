package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/server/api/agent"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func newService(t *testing.T) (*agent.Service, *sqlstore.Store) {
	t.Helper()
	ctx := context.Background()
	ds, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "ds.sqlite3")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ds.Close() })
	log := slog.New(slog.DiscardHandler)
	m, err := ca.New(ca.Config{TrustDomain: td, Keys: keys.NewMemory(), Journal: ds, Bundles: ds, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Init(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := agent.New(agent.Config{TrustDomain: td, Store: ds, CA: m, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return s, ds
}

// seed creates 10 nodes: even ones banned, the first 3 x509pop (can
// reattest), selectors host:<i%2>, expiring at 1000+i.
func seed(t *testing.T, ds *sqlstore.Store) {
	t.Helper()
	for i := 0; i < 10; i++ {
		n := &datastore.AttestedNode{
			SPIFFEID:        fmt.Sprintf("spiffe://example.org/spire/agent/t/%02d", i),
			AttestationType: "join_token",
			CertSerial:      fmt.Sprint(100 + i),
			CertNotAfter:    int64(1000 + i),
			Selectors:       []selector.Selector{{Type: "host", Value: fmt.Sprint(i % 2)}},
		}
		if i%2 == 0 {
			n.CertSerial = ""
		}
		if i < 3 {
			n.AttestationType = "x509pop"
			n.CanReattest = true
		}
		if _, err := ds.CreateNode(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
}

func TestListAndCountAgentsFilters(t *testing.T) {
	s, ds := newService(t)
	seed(t, ds)
	ctx := context.Background()
	for name, tc := range map[string]struct {
		f    *agentv1.ListAgentsRequest_Filter
		want int
	}{
		"all":                    {nil, 10},
		"banned":                 {&agentv1.ListAgentsRequest_Filter{ByBanned: wrapperspb.Bool(true)}, 5},
		"not banned":             {&agentv1.ListAgentsRequest_Filter{ByBanned: wrapperspb.Bool(false)}, 5},
		"attestation type":       {&agentv1.ListAgentsRequest_Filter{ByAttestationType: "x509pop"}, 3},
		"can reattest":           {&agentv1.ListAgentsRequest_Filter{ByCanReattest: wrapperspb.Bool(true)}, 3},
		"expires before":         {&agentv1.ListAgentsRequest_Filter{ByExpiresBefore: time.Unix(1004, 0).UTC().Format("2006-01-02 15:04:05 -0700 -07")}, 4},
		"expires before rfc3339": {&agentv1.ListAgentsRequest_Filter{ByExpiresBefore: time.Unix(1002, 0).UTC().Format(time.RFC3339)}, 2},
		"selector match": {&agentv1.ListAgentsRequest_Filter{BySelectorMatch: &types.SelectorMatch{
			Selectors: []*types.Selector{{Type: "host", Value: "1"}}, Match: types.SelectorMatch_MATCH_EXACT}}, 5},
	} {
		resp, err := s.ListAgents(ctx, &agentv1.ListAgentsRequest{Filter: tc.f})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(resp.Agents) != tc.want {
			t.Errorf("%s: %d agents, want %d", name, len(resp.Agents), tc.want)
		}
		var cf *agentv1.CountAgentsRequest_Filter
		if tc.f != nil {
			cf = &agentv1.CountAgentsRequest_Filter{ByAttestationType: tc.f.ByAttestationType, ByBanned: tc.f.ByBanned,
				ByCanReattest: tc.f.ByCanReattest, ByExpiresBefore: tc.f.ByExpiresBefore, BySelectorMatch: tc.f.BySelectorMatch}
		}
		cnt, err := s.CountAgents(ctx, &agentv1.CountAgentsRequest{Filter: cf})
		if err != nil || int(cnt.Count) != tc.want {
			t.Errorf("%s: count %v %v, want %d", name, cnt, err, tc.want)
		}
	}
	for name, f := range map[string]*agentv1.ListAgentsRequest_Filter{
		"bad time":     {ByExpiresBefore: "yesterday"},
		"bad selector": {BySelectorMatch: &types.SelectorMatch{Selectors: []*types.Selector{{Type: "", Value: "x"}}}},
		"no selectors": {BySelectorMatch: &types.SelectorMatch{}},
	} {
		_, err := s.ListAgents(ctx, &agentv1.ListAgentsRequest{Filter: f})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

func TestListAgentsPaginationAndMask(t *testing.T) {
	s, ds := newService(t)
	seed(t, ds)
	ctx := context.Background()
	seen := map[string]bool{}
	token := ""
	pages := 0
	for {
		resp, err := s.ListAgents(ctx, &agentv1.ListAgentsRequest{PageSize: 3, PageToken: token,
			OutputMask: &types.AgentMask{AttestationType: true}})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(resp.Agents) > 3 {
			t.Fatalf("page of %d", len(resp.Agents))
		}
		for _, a := range resp.Agents {
			if a.X509SvidSerialNumber != "" || a.Selectors != nil || a.AttestationType == "" {
				t.Fatalf("mask not applied: %v", a)
			}
			seen[a.Id.Path] = true
		}
		if resp.NextPageToken == "" {
			break
		}
		token = resp.NextPageToken
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
	}
	if len(seen) != 10 || pages < 4 {
		t.Fatalf("saw %d agents in %d pages", len(seen), pages)
	}
	_, err := s.ListAgents(ctx, &agentv1.ListAgentsRequest{PageSize: -1})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("negative page size: %v", err)
	}
}
