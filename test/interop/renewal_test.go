package interop

import (
	"context"
	"math/big"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestRenewal: with one-minute agent and workload SVIDs, a spire-agent and
// a sigil-agent attested to the same server renew their own SVID
// (RenewAgent: the server lists a new serial) and their workload's (a new
// X509-SVID reaches the workload), and after the first agent SVID has
// expired each still syncs with the server: an entry created then reaches
// its workload. Run against both servers, this is a spire-agent renewing
// against sigil-server and a sigil-agent renewing against spire-server.
func TestRenewal(t *testing.T) {
	testutil.SPIREBinaries(t)
	for _, k := range serverKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel() // mostly waiting for SVIDs to age
			srv := k.start(t, testutil.ServerConfig{AgentTTL: time.Minute, X509SVIDTTL: time.Minute})
			adm := srv.Admin(t)
			nodeID := srv.ID("/node")
			webID := srv.ID("/web")
			adm.CreateEntry(t, webID, nodeID, uidSelector)

			type started struct {
				agent          *testutil.Agent
				id             spiffeid.ID
				serial         string
				expires        time.Time
				workloadSerial *big.Int
			}
			var agents []*started
			for _, start := range []func(testing.TB, testutil.AgentConfig) *testutil.Agent{
				testutil.StartSPIREAgent,
				func(t testing.TB, c testutil.AgentConfig) *testutil.Agent { return testutil.StartAgent(t, c) },
			} {
				cfg := testutil.AgentFor(t, srv, nodeID.Path(), "")
				a := &started{agent: start(t, cfg), id: adm.JoinTokenAgentID(cfg.JoinToken)}
				// A sigil-agent opens its socket before it attests.
				var rec *types.Agent
				if err := testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) {
					rec = findAgent(t, adm, a.id)
					return rec != nil, nil
				}); err != nil {
					t.Fatalf("%s is not listed after attesting: %v", a.agent.Name(), err)
				}
				a.serial, a.expires = rec.GetX509SvidSerialNumber(), time.Unix(rec.GetX509SvidExpiresAt(), 0)
				a.workloadSerial = testutil.RequireSVID(t, a.agent.SocketAddr(), webID, deadline).Certificates[0].SerialNumber
				agents = append(agents, a)
			}

			for _, a := range agents {
				err := testutil.Poll(2*time.Minute, 500*time.Millisecond, func() (bool, error) {
					rec := findAgent(t, adm, a.id)
					return rec != nil && rec.GetX509SvidSerialNumber() != a.serial && !rec.GetBanned(), nil
				})
				if err != nil {
					t.Fatalf("%s: %s never lists a renewed agent SVID: %v", a.agent.Name(), srv.Name(), err)
				}
				err = testutil.Poll(2*time.Minute, 500*time.Millisecond, func() (bool, error) {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					svids, err := testutil.FetchX509SVIDs(ctx, a.agent.SocketAddr())
					if err != nil {
						return false, nil
					}
					for _, s := range svids {
						if s.ID == webID && s.Certificates[0].SerialNumber.Cmp(a.workloadSerial) != 0 {
							return true, nil
						}
					}
					return false, nil
				})
				if err != nil {
					t.Fatalf("%s never served its workload a renewed X509-SVID: %v", a.agent.Name(), err)
				}
			}

			// Past the first agent SVIDs' expiry, both still talk to the
			// server with their renewed SVIDs.
			var last time.Time
			for _, a := range agents {
				if a.expires.After(last) {
					last = a.expires
				}
			}
			// Waiting for a wall-clock event (the expiry), not a timing
			// assertion.
			time.Sleep(time.Until(last.Add(2 * time.Second)))
			dbID := srv.ID("/db")
			adm.CreateEntry(t, dbID, nodeID, uidSelector)
			for _, a := range agents {
				testutil.RequireSVID(t, a.agent.SocketAddr(), dbID, deadline)
				if a.agent.Proc.Exited() {
					t.Errorf("%s exited", a.agent.Name())
				}
			}
		})
	}
}
