package telemetry

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// parseLogfmt reads a text log line (key=value, values quoted when
// needed) into its fields.
func parseLogfmt(t *testing.T, line string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for line != "" {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			break
		}
		key := line[:eq]
		line = line[eq+1:]
		var val string
		if strings.HasPrefix(line, `"`) {
			end := 1
			for end < len(line) && (line[end] != '"' || line[end-1] == '\\') {
				end++
			}
			v, err := strconv.Unquote(line[:end+1])
			if err != nil {
				t.Fatalf("bad quoted value in %q: %v", line, err)
			}
			val, line = v, line[min(end+1, len(line)):]
		} else {
			sp := strings.IndexByte(line, ' ')
			if sp < 0 {
				sp = len(line)
			}
			val, line = line[:sp], line[sp:]
		}
		out[key] = val
	}
	return out
}

// auditLines returns the audit lines of a log.
func auditLines(t *testing.T, log string) []map[string]string {
	t.Helper()
	var out []map[string]string
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "type=audit") {
			continue
		}
		f := parseLogfmt(t, l)
		if f["msg"] == "API accessed" && f["type"] == "audit" {
			out = append(out, f)
		}
	}
	return out
}

// TestAuditLogOfRealProcesses: with audit_log_enabled, a sigil-server
// process writes one line per API call to its log: the admin CLI's calls
// (caller: its uid, gid and executable) and the agent's (caller: its
// address and SPIFFE ID), with the request's fields, and nothing of the
// join token before it is used.
func TestAuditLogOfRealProcesses(t *testing.T) {
	srv := testutil.StartServer(t, testutil.ServerConfig{AuditLog: true})
	serverBin, _ := testutil.Binaries(t)
	// cli runs `sigil-server <command> <sub> -socketPath S <args>`.
	cli := func(command, sub string, args ...string) string {
		t.Helper()
		cmd := exec.Command(serverBin, append([]string{command, sub, "-socketPath", srv.Config.SocketPath}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s %v: %v\n%s", command, sub, args, err, out)
		}
		return string(out)
	}

	out := cli("token", "generate", "-spiffeID", "spiffe://example.org/agent/audited", "-ttl", "600")
	token := ""
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "Token: "); ok {
			token = strings.TrimSpace(v)
		}
	}
	if token == "" {
		t.Fatalf("no token in %q", out)
	}
	cli("entry", "create", "-parentID", "spiffe://example.org/agent/audited", "-spiffeID", "spiffe://example.org/audited-workload", "-selector", uidSelector)

	var lines []map[string]string
	wantLine := func(what string, match func(map[string]string) bool) map[string]string {
		t.Helper()
		var found map[string]string
		err := testutil.Poll(wait, 50*time.Millisecond, func() (bool, error) {
			lines = auditLines(t, srv.Proc.Logs())
			for _, l := range lines {
				if match(l) {
					found = l
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("no audit line for %s among %d: %v", what, len(lines), lines)
		}
		return found
	}
	tokenLine := wantLine("CreateJoinToken", func(l map[string]string) bool { return l["method"] == "CreateJoinToken" })
	for k, v := range map[string]string{"service": "agent.v1.Agent", "status": "success", "spiffe_id": "spiffe://example.org/agent/audited",
		"ttl": "600", "caller_path": serverBin, "caller_uid": strconv.Itoa(os.Getuid())} {
		if tokenLine[k] != v {
			t.Errorf("CreateJoinToken line: %s = %q, want %q (%v)", k, tokenLine[k], v, tokenLine)
		}
	}
	entryLine := wantLine("BatchCreateEntry", func(l map[string]string) bool { return l["method"] == "BatchCreateEntry" })
	for k, v := range map[string]string{"service": "entry.v1.Entry", "status": "success", "spiffe_id": "spiffe://example.org/audited-workload",
		"parent_id": "spiffe://example.org/agent/audited", "selectors": uidSelector, "caller_path": serverBin} {
		if entryLine[k] != v {
			t.Errorf("BatchCreateEntry line: %s = %q, want %q (%v)", k, entryLine[k], v, entryLine)
		}
	}
	if entryLine["entry_id"] == "" {
		t.Errorf("BatchCreateEntry line without the new entry's ID: %v", entryLine)
	}
	if strings.Contains(srv.Proc.Logs(), token) {
		t.Fatal("the server log holds the join token before its use")
	}

	// The agent attests with it and fetches the workload's SVID.
	cfg := testutil.AgentWith(t, srv, "", nil)
	cfg.JoinToken = token
	agent := testutil.StartAgent(t, cfg)
	testutil.RequireSVID(t, agent.SocketAddr(), srv.ID("/audited-workload"), wait)
	att := wantLine("AttestAgent", func(l map[string]string) bool { return l["method"] == "AttestAgent" })
	agentID := att["agent_id"]
	if att["status"] != "success" || att["node_attestor_type"] != "join_token" || !strings.HasPrefix(agentID, "spiffe://example.org/spire/agent/join_token/") ||
		!strings.HasPrefix(att["caller_addr"], "127.0.0.1:") {
		t.Fatalf("AttestAgent line %v", att)
	}
	sv := wantLine("BatchNewX509SVID", func(l map[string]string) bool {
		return l["method"] == "BatchNewX509SVID" && l["spiffe_id"] == "spiffe://example.org/audited-workload"
	})
	if sv["caller_id"] != agentID || sv["status"] != "success" || sv["entry_id"] != entryLine["entry_id"] {
		t.Fatalf("BatchNewX509SVID line %v, want caller %s, entry %s", sv, agentID, entryLine["entry_id"])
	}
}
