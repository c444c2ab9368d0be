package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
	"github.com/sigil-spiffe/sigil/internal/testutil/fakedocker"
)

// host is one node of TestMultiCloudNodesAndContainers: an agent with the
// unix and docker workload attestors, its Docker engine (fakedocker) and
// its proc_dir, where the test writes the cgroup file of each process it
// runs as a workload.
type host struct {
	name    string
	agent   *testutil.Agent
	engine  *fakedocker.Daemon
	procDir string
	ctrID   string
}

// startHost starts the host's engine with one container (label app:web)
// and its agent attesting with na (nil: join_token with token).
func startHost(t *testing.T, srv *testutil.Server, name, token string, na *testutil.Plugin, initPid int) *host {
	t.Helper()
	h := &host{name: name, engine: fakedocker.Start(t), procDir: testutil.ShortTempDir(t)}
	h.ctrID = fmt.Sprintf("%064x", initPid)
	h.engine.Add(fakedocker.Container{
		ID: h.ctrID, Name: "web", Pid: initPid, Image: "registry.example.org/web:1.0",
		ImageID: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Labels:  map[string]string{"app": "web"},
	})
	h.writeCgroup(t, initPid, "0::/system.slice/docker-"+h.ctrID+".scope\n")
	cfg := testutil.AgentWith(t, srv, "", na)
	cfg.JoinToken = token
	cfg.WorkloadAttestors = []testutil.Plugin{{Type: "WorkloadAttestor", Name: "docker", Data: map[string]any{
		"docker_socket_path": h.engine.URL(), "proc_dir": h.procDir,
	}}}
	h.agent = testutil.StartAgent(t, cfg)
	return h
}

func (h *host) writeCgroup(t *testing.T, pid int, content string) {
	t.Helper()
	d := filepath.Join(h.procDir, strconv.Itoa(pid))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "cgroup"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fetch runs `sigil-agent api fetch x509` as a workload of the host, in
// its container (inContainer) or on the host itself: the process starts
// as a shell waiting on its stdin, the test writes its cgroup file into
// the agent's proc_dir, then the shell execs the fetch (same PID). It
// returns the SPIFFE IDs received, or the command's output as the error.
func (h *host) fetch(t *testing.T, agentBin string, inContainer bool) ([]string, error) {
	t.Helper()
	cmd := exec.Command("sh", "-c", `read _ && exec "$0" api fetch x509 -socketPath "$1" -timeout 10s`, agentBin, h.agent.Config.SocketPath)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cg := "0::/user.slice/user-0.slice/session-1.scope\n"
	if inContainer {
		cg = "0::/system.slice/docker-" + h.ctrID + ".scope\n"
	}
	h.writeCgroup(t, cmd.Process.Pid, cg)
	_, _ = stdin.Write([]byte("go\n"))
	_ = stdin.Close()
	err = cmd.Wait()
	_ = os.RemoveAll(filepath.Join(h.procDir, strconv.Itoa(cmd.Process.Pid)))
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out.String())
	}
	var ids []string
	for _, l := range strings.Split(out.String(), "\n") {
		if id, ok := strings.CutPrefix(l, "SPIFFE ID:"); ok {
			ids = append(ids, strings.TrimSpace(id))
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// TestMultiCloudNodesAndContainers (issue 10, item 8): one sigil-server
// with NodeAttestors join_token, aws_iid and gcp_iit at once; three agents
// (a join token, an "EC2 instance", a "Compute Engine instance") attest
// through each, all with the docker workload attestor, each host running
// the same container (label app:web). Entries combine node selectors with
// docker selectors: an alias on aws_iid:tag:role:web (and one on
// gcp_iit:project-id) parents a workload entry on docker:label:app:web.
// Each identity is served only to the container process on the matching
// node: the EC2 host's container gets web/aws and nothing else, a process
// on the same host outside the container gets nothing, the same container
// on the GCP and join-token hosts gets only its own node's identity.
func TestMultiCloudNodesAndContainers(t *testing.T) {
	_, agentBin := testutil.Binaries(t)
	aws := cloudfake.NewAWS(t)
	ec2 := aws.AddInstance(&cloudfake.Instance{ID: "i-0a1b2c3d4e5f60718", Tags: map[string]string{"role": "web"}})
	gcp := cloudfake.NewGCP(t)
	gce := gcp.AddInstance(&cloudfake.GCPInstance{Name: "web-1", ID: "4071232845720010001"})
	dir := testutil.ShortTempDir(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{
		{Type: "NodeAttestor", Name: "aws_iid", Data: aws.ServerPluginData(t, dir)},
		{Type: "NodeAttestor", Name: "gcp_iit", Data: gcp.ServerPluginData(t, dir)},
	}})
	adm := srv.Admin(t)

	// Entries first, so each agent's first sync has all it may get.
	server := srv.ID("/spire/server")
	awsWeb, gcpProd := srv.ID("/node/aws-web"), srv.ID("/node/gcp-prod")
	adm.CreateEntry(t, awsWeb, server, "aws_iid:tag:role:web")
	adm.CreateEntry(t, gcpProd, server, "gcp_iit:project-id:sigil-test-project")
	joinAgent := srv.ID("/agent/edge-1")
	webAWS, webGCP, webJoin := srv.ID("/web/aws"), srv.ID("/web/gcp"), srv.ID("/web/join")
	adm.CreateEntry(t, webAWS, awsWeb, "docker:label:app:web")
	adm.CreateEntry(t, webGCP, gcpProd, "docker:label:app:web", "docker:image_id:registry.example.org/web:1.0")
	adm.CreateEntry(t, webJoin, joinAgent, "docker:label:app:web")

	hosts := []*host{
		startHost(t, srv, "join", adm.CreateJoinToken(t, joinAgent), nil, 3999101),
		startHost(t, srv, "aws", "", &testutil.Plugin{Type: "NodeAttestor", Name: "aws_iid", Data: map[string]any{"ec2_metadata_endpoint": ec2.IMDSURL()}}, 3999102),
		startHost(t, srv, "gcp", "", &testutil.Plugin{Type: "NodeAttestor", Name: "gcp_iit", Data: map[string]any{"identity_token_host": gce.MetadataHost()}}, 3999103),
	}
	want := map[string]string{"join": webJoin.String(), "aws": webAWS.String(), "gcp": webGCP.String()}
	for _, h := range hosts {
		// The container process gets its node's identity, and only it
		// (polled: the agent may not have synced yet).
		var got []string
		err := testutil.Poll(deadline, 200*time.Millisecond, func() (bool, error) {
			ids, err := h.fetch(t, agentBin, true)
			if err != nil {
				t.Logf("%s container: %v", h.name, err)
				return false, nil
			}
			got = ids
			return true, nil
		})
		if err != nil {
			t.Fatalf("%s: the container process got no identity", h.name)
		}
		if !slices.Equal(got, []string{want[h.name]}) {
			t.Errorf("%s: the container process got %q, want only %s", h.name, got, want[h.name])
		}
		// A process of the same host outside the container: nothing.
		if ids, err := h.fetch(t, agentBin, false); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
			t.Errorf("%s: a host process outside the container got %q (%v), want PermissionDenied", h.name, ids, err)
		}
	}

	// The agents attested through the three attestors (the join token's
	// agent is /spire/agent/join_token/<token>, /agent/edge-1 an alias).
	var types []string
	for _, a := range adm.ListAgents(t) {
		types = append(types, a.GetAttestationType())
	}
	slices.Sort(types)
	if !slices.Equal(types, []string{"aws_iid", "gcp_iit", "join_token"}) {
		t.Errorf("agents attested with %q, want aws_iid, gcp_iit, join_token", types)
	}
	for _, id := range []string{
		srv.ID("/spire/agent/aws_iid/" + cloudfake.HomeAccount + "/us-east-1/i-0a1b2c3d4e5f60718").String(),
		srv.ID("/spire/agent/gcp_iit/sigil-test-project/4071232845720010001").String(),
	} {
		if agentRecord(t, adm, id) == nil {
			t.Errorf("no agent %s", id)
		}
	}
}
