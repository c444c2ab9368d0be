package interop

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestWorkloadAPIHints: a workload with three entries, two sharing a hint,
// gets from a sigil-agent and a spire-agent (both attested to one
// sigil-server) the same identities: one per hint, the older entry of the
// two (SPIFFE Workload API: a hint is unique in a response), in X509-SVID
// and JWT-SVID responses alike. Seen on raw responses: go-spiffe's client
// itself skips a repeated hint.
func TestWorkloadAPIHints(t *testing.T) {
	testutil.SPIREBinaries(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	adm := srv.Admin(t)
	node := srv.ID("/node")
	for _, e := range []struct{ path, hint string }{{"/hint-old", "shared"}, {"/hint-new", "shared"}, {"/plain", ""}} {
		en, err := adminclient.NewEntry(srv.ID(e.path), node, uidSelector)
		if err != nil {
			t.Fatal(err)
		}
		en.Hint = e.hint
		adm.CreateEntries(t, en)
	}
	// The entry both implementations keep: the oldest, then the smallest
	// ID (entries created within a second tie on created_at).
	var shared []*types.Entry
	for _, e := range adm.ListEntries(t) {
		if e.GetHint() == "shared" {
			shared = append(shared, e)
		}
	}
	slices.SortFunc(shared, func(a, b *types.Entry) int {
		if a.GetCreatedAt() != b.GetCreatedAt() {
			return int(a.GetCreatedAt() - b.GetCreatedAt())
		}
		return strings.Compare(a.GetId(), b.GetId())
	})
	want := fmt.Sprintf("%s(shared) %s()", testutil.IDString(shared[0].GetSpiffeId()), srv.ID("/plain"))

	agents := []*testutil.Agent{
		testutil.StartAgent(t, testutil.AgentFor(t, srv, "/node", "")),
		testutil.StartSPIREAgent(t, testutil.AgentFor(t, srv, "/node", "")),
	}
	for _, a := range agents {
		c := testutil.WorkloadAPIClient(t, a.Config.SocketPath)
		var last string
		err := testutil.Poll(deadline, 200*time.Millisecond, func() (bool, error) {
			ctx, cancel := context.WithTimeout(testutil.WorkloadAPIContext(context.Background()), deadline)
			defer cancel()
			st, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
			if err != nil {
				return false, nil
			}
			r, err := st.Recv()
			if err != nil {
				last = err.Error()
				return false, nil
			}
			var got []string
			for _, s := range r.Svids {
				got = append(got, fmt.Sprintf("%s(%s)", s.SpiffeId, s.Hint))
			}
			slices.Sort(got)
			last = strings.Join(got, " ")
			if strings.Count(last, "(shared)") > 1 {
				return false, fmt.Errorf("X509-SVID response with a repeated hint: %s", last)
			}
			return last == want, nil
		})
		if err != nil {
			t.Fatalf("%s: X509-SVIDs %q, want %q: %v", a.Name(), last, want, err)
		}
		ctx, cancel := context.WithTimeout(testutil.WorkloadAPIContext(context.Background()), deadline)
		jr, err := c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"aud"}})
		cancel()
		if err != nil {
			t.Fatalf("%s: JWT-SVIDs: %v", a.Name(), err)
		}
		var got []string
		for _, s := range jr.Svids {
			got = append(got, fmt.Sprintf("%s(%s)", s.SpiffeId, s.Hint))
		}
		slices.Sort(got)
		if strings.Join(got, " ") != want {
			t.Errorf("%s: JWT-SVIDs %q, want %q", a.Name(), strings.Join(got, " "), want)
		}
	}
}
