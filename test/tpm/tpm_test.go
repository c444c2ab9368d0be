// Package tpm runs real sigil-server and sigil-agent processes on devices
// with a TPM 2.0 (swtpm, one per device): NodeAttestor "tpm" and
// KeyManager "tpm" end to end, measured boot (PCR) policies and a data
// directory copied to another device.
package tpm

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/swtpm"
)

func TestMain(m *testing.M) { os.Exit(swtpm.Main(m, testutil.Cleanup)) }

// deadline bounds what normally takes milliseconds to seconds.
const deadline = 30 * time.Second

var uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())

// device is a sigil-agent on a TPM: NodeAttestor "tpm" and KeyManager
// "tpm" on tp, state in a fresh data_dir.
func device(t *testing.T, srv *testutil.Server, tp *swtpm.TPM, dataDir string) *testutil.Agent {
	t.Helper()
	if dataDir == "" {
		dataDir = testutil.ShortTempDir(t)
	}
	na, km := tp.AgentPlugins(filepath.Join(dataDir, "keys"))
	cfg := testutil.AgentWith(t, srv, dataDir, na)
	cfg.KeyManager = km
	return testutil.NewAgent(t, cfg)
}

func tpmAgentID(srv *testutil.Server, tp *swtpm.TPM, t *testing.T) spiffeid.ID {
	return srv.ID("/spire/agent/tpm/" + tp.EKPubHash(t))
}

// agentRecord returns the server's record of id (nil if none).
func agentSelectors(t *testing.T, srv *testutil.Server, id spiffeid.ID) (found bool, attType string, selectors []string) {
	t.Helper()
	for _, a := range srv.Admin(t).ListAgents(t) {
		if testutil.IDString(a.Id) == id.String() {
			for _, s := range a.Selectors {
				selectors = append(selectors, s.Type+":"+s.Value)
			}
			return true, a.AttestationType, selectors
		}
	}
	return false, "", nil
}

// logContains waits until the agent's log contains text.
func waitLog(t *testing.T, a *testutil.Agent, text string, timeout time.Duration) {
	t.Helper()
	path := filepath.Join(a.Config.DataDir, "agent.log")
	err := testutil.Poll(timeout, 50*time.Millisecond, func() (bool, error) {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), text), nil
	})
	if err != nil {
		b, _ := os.ReadFile(path)
		t.Fatalf("the agent log never said %q:\n%s", text, b)
	}
}

// TestTPMAgentAttestsAndKeepsItsKeyInTheTPM: an agent on a TPM attests
// with NodeAttestor "tpm" (agent ID and selector of the community SPIRE
// plugin; the server trusts the EK by its manufacturer CA), its SVID key
// lives in the TPM (only a TPM-wrapped key file on disk), it serves its
// workload, and after a restart it uses the same SVID and key again
// without attesting.
func TestTPMAgentAttestsAndKeepsItsKeyInTheTPM(t *testing.T) {
	im := swtpm.Shared(t)
	tp := im.Start(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{im.ServerPlugin(t, nil)}})
	agentID := tpmAgentID(srv, tp, t)
	web := srv.ID("/web")
	srv.Admin(t).CreateEntry(t, web, agentID, uidSelector)

	a := device(t, srv, tp, "")
	a.Start(t)
	svid := testutil.RequireSVID(t, a.SocketAddr(), web, deadline)
	found, typ, sels := agentSelectors(t, srv, agentID)
	if !found || typ != "tpm" || !slices.Contains(sels, "tpm:pub_hash:"+tp.EKPubHash(t)) {
		t.Fatalf("server's record of %s: found %v, type %q, selectors %q", agentID, found, typ, sels)
	}
	keyFiles, _ := filepath.Glob(filepath.Join(a.Config.DataDir, "keys", "*"))
	if len(keyFiles) != 1 || !strings.HasSuffix(keyFiles[0], ".tpmkey") {
		t.Fatalf("key directory holds %q, want one TPM-wrapped key", keyFiles)
	}
	a.Stop(t)
	a.Start(t)
	waitLog(t, a, "Restored the persisted agent SVID", deadline)
	svid2 := testutil.RequireSVID(t, a.SocketAddr(), web, deadline)
	if !svid2.Certificates[0].Equal(svid.Certificates[0]) {
		// The workload SVID was persisted with the cache; the agent
		// reconnected with its TPM-held key.
		t.Log("the workload SVID was renewed across the restart")
	}
	if n := len(srv.Admin(t).ListAgents(t)); n != 1 {
		t.Fatalf("the server lists %d agents, want 1", n)
	}
	b, _ := os.ReadFile(filepath.Join(a.Config.DataDir, "agent.log"))
	if strings.Count(string(b), "Node attestation succeeded") != 1 || strings.Contains(string(b), "Ignoring the persisted agent SVID") {
		t.Fatalf("the restarted agent did not reuse its SVID:\n%s", b)
	}
}

// TestTPMCopiedDataDirIsUseless: a copy of a device's data_dir on another
// device (another TPM) cannot use the TPM-held agent key: the copy drops
// the device's identity and workload cache, attests as itself, and never
// serves the first device's workload; the first device keeps working.
func TestTPMCopiedDataDirIsUseless(t *testing.T) {
	im := swtpm.Shared(t)
	tpA := im.Start(t)
	tpB := swtpm.NewImage(t, swtpm.Options{CADir: im.CADir}).Start(t) // same manufacturer, another TPM
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{im.ServerPlugin(t, nil)}})
	idA, idB := tpmAgentID(srv, tpA, t), tpmAgentID(srv, tpB, t)
	if idA == idB {
		t.Fatal("the two TPMs have one EK")
	}
	webA, webB := srv.ID("/web-a"), srv.ID("/web-b")
	srv.Admin(t).CreateEntry(t, webA, idA, uidSelector)
	srv.Admin(t).CreateEntry(t, webB, idB, uidSelector)

	a := device(t, srv, tpA, "")
	a.Start(t)
	testutil.RequireSVID(t, a.SocketAddr(), webA, deadline)
	a.Stop(t)

	// The disk image of device A, on device B.
	dirB := testutil.ShortTempDir(t)
	if err := os.CopyFS(dirB, os.DirFS(a.Config.DataDir)); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(filepath.Join(dirB, "agent.log"))
	_ = os.Remove(filepath.Join(dirB, "api.sock"))
	b := device(t, srv, tpB, dirB)
	b.Start(t)
	waitLog(t, b, "belongs to another device", deadline)
	testutil.RequireSVID(t, b.SocketAddr(), webB, deadline)
	svids, err := testutil.FetchX509SVIDs(context.Background(), b.SocketAddr())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svids {
		if s.ID == webA {
			t.Fatalf("device B serves device A's workload %s", webA)
		}
	}
	if found, _, _ := agentSelectors(t, srv, idB); !found {
		t.Fatalf("the server has no record of device B (%s)", idB)
	}
	// Device A still is device A.
	a.Start(t)
	testutil.RequireSVID(t, a.SocketAddr(), webA, deadline)
}

// pcrStack is a server whose tpm attestor quotes PCR 7 (and restricts it
// to the known value when allow is set), with short agent SVIDs so the
// agent re-attests soon, and an agent on a TPM whose PCR 7 holds the
// known firmware's measurement. /web is registered under a node alias
// that requires that PCR 7 value.
type pcrStack struct {
	tp    *swtpm.TPM
	srv   *testutil.Server
	agent *testutil.Agent
	web   spiffeid.ID
	known string // hex of PCR 7 after the known firmware
}

func newPCRStack(t *testing.T, allow bool) *pcrStack {
	t.Helper()
	im := swtpm.Shared(t)
	s := &pcrStack{tp: im.Start(t)}
	s.tp.ExtendPCR(t, 7, []byte("known firmware"))
	s.known = hex.EncodeToString(s.tp.PCR(t, 7))
	data := map[string]any{"pcr_selection": []int{7}}
	if allow {
		data["pcr_allowed"] = []string{"sha256:7:" + s.known}
	}
	// Agent SVIDs of 40 s: renewed (by re-attestation) after about 30 s.
	s.srv = testutil.StartServer(t, testutil.ServerConfig{AgentTTL: 40 * time.Second, Plugins: []testutil.Plugin{im.ServerPlugin(t, data)}})
	alias := s.srv.ID("/devices/known-firmware")
	s.srv.Admin(t).CreateEntry(t, alias, s.srv.ID("/spire/server"), "tpm:pcr:sha256:7:"+s.known)
	s.web = s.srv.ID("/web")
	s.srv.Admin(t).CreateEntry(t, s.web, alias, uidSelector)
	s.agent = device(t, s.srv, s.tp, "")
	s.agent.Start(t)
	testutil.RequireSVID(t, s.agent.SocketAddr(), s.web, deadline)
	if _, _, sels := agentSelectors(t, s.srv, tpmAgentID(s.srv, s.tp, t)); !slices.Contains(sels, "tpm:pcr:sha256:7:"+s.known) {
		t.Fatalf("agent selectors %q lack PCR 7", sels)
	}
	return s
}

// waitNoSVID waits until the agent serves no SVID for id: the Workload
// API answers without it, or refuses the caller (PermissionDenied).
func (s *pcrStack) waitNoSVID(t *testing.T, timeout time.Duration) {
	t.Helper()
	var last string
	err := testutil.Poll(timeout, 200*time.Millisecond, func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		svids, err := testutil.FetchX509SVIDs(ctx, s.agent.SocketAddr())
		if err != nil {
			last = err.Error()
			return status.Code(err) == codes.PermissionDenied, nil
		}
		last = ""
		for _, sv := range svids {
			if sv.ID == s.web {
				last = "still served"
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(s.agent.Config.DataDir, "agent.log"))
		t.Fatalf("%s still served (%s):\n%s", s.web, last, b)
	}
}

// TestTPMPCRChangeRefusesReattestation: with pcr_allowed, a device whose
// PCR 7 changed after its first attestation is refused at its next
// re-attestation (its renewal): the agent is revoked and its workload
// loses its identity; after a reboot into the known firmware it attests
// again and serves again.
func TestTPMPCRChangeRefusesReattestation(t *testing.T) {
	t.Parallel()
	s := newPCRStack(t, true)
	s.tp.ExtendPCR(t, 7, []byte("unknown bootloader"))
	s.waitNoSVID(t, 2*time.Minute)
	waitLog(t, s.agent, "ATTESTATION_REFUSED", deadline)
	waitLog(t, s.agent, "is not one of the values pcr_allowed lists", deadline)

	s.tp.Restart(t)
	s.tp.ExtendPCR(t, 7, []byte("known firmware"))
	testutil.RequireSVID(t, s.agent.SocketAddr(), s.web, 2*time.Minute)
}

// TestTPMPCRChangeLeavesTheNodeAlias: without pcr_allowed the changed
// device re-attests, but with the new PCR 7 as its selector: the node
// alias that requires the known value no longer matches, so the workload
// under it loses its identity while the agent stays attested.
func TestTPMPCRChangeLeavesTheNodeAlias(t *testing.T) {
	t.Parallel()
	s := newPCRStack(t, false)
	s.tp.ExtendPCR(t, 7, []byte("unknown bootloader"))
	changed := hex.EncodeToString(s.tp.PCR(t, 7))
	id := tpmAgentID(s.srv, s.tp, t)
	err := testutil.Poll(2*time.Minute, 200*time.Millisecond, func() (bool, error) {
		_, _, sels := agentSelectors(t, s.srv, id)
		return slices.Contains(sels, "tpm:pcr:sha256:7:"+changed), nil
	})
	if err != nil {
		t.Fatalf("the agent never re-attested with the changed PCR 7: %v", err)
	}
	s.waitNoSVID(t, deadline)
}
