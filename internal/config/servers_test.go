package config

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func TestAgentServers(t *testing.T) {
	withList := func(list string) string {
		return strings.Replace(agentConfWith("    server_addresses = "+list+"\n", ""), `server_address = "127.0.0.1"`, "", 1)
	}
	cases := []struct {
		name string
		src  string
		want []string
	}{
		{"server_address (SPIRE)", agentConfWith("", ""), []string{"127.0.0.1:8081"}},
		{"list, ports defaulted", withList(`["10.0.0.1", "sigil-2.example.org", "10.0.0.3:9443"]`),
			[]string{"10.0.0.1:8081", "sigil-2.example.org:8081", "10.0.0.3:9443"}},
		{"IPv6", withList(`["::1", "[fd00::2]:9443"]`), []string{"[::1]:8081", "[fd00::2]:9443"}},
		{"every entry with its port, no server_port",
			strings.Replace(withList(`["10.0.0.1:8081", "10.0.0.2:8082"]`), "server_port = 8081", "", 1),
			[]string{"10.0.0.1:8081", "10.0.0.2:8082"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := ParseAgent("agent.conf", []byte(c.src))
			if err != nil {
				t.Fatal(err)
			}
			if got := a.Servers(); !slices.Equal(got, c.want) {
				t.Errorf("Servers() = %q, want %q", got, c.want)
			}
		})
	}
}

func TestAgentServersInvalid(t *testing.T) {
	withList := func(list string) string {
		return strings.Replace(agentConfWith("    server_addresses = "+list+"\n", ""), `server_address = "127.0.0.1"`, "", 1)
	}
	cases := []struct {
		name string
		src  string
		want string
	}{
		{"both", agentConfWith("    server_addresses = [\"10.0.0.2\"]\n", ""), "server_address and server_addresses are both set"},
		{"empty list", withList(`[]`), "agent.conf:6: invalid server_addresses in agent block: the list is empty"},
		{"not a list", withList(`"10.0.0.1"`), `agent.conf:6: invalid value for "server_addresses" in agent block: expected a list of strings`},
		{"bad port", withList(`["10.0.0.1:0"]`), `agent.conf:6: invalid server_addresses in agent block: entry "10.0.0.1:0": port "0" out of range 1..65535`},
		{"url", withList(`["dns:///sigil.example.org"]`), `entry "dns:///sigil.example.org": want host or host:port`},
		{"path", withList(`["sigil/x:8081"]`), `entry "sigil/x:8081": want host or host:port`},
		{"empty host", withList(`[":8081"]`), `entry ":8081": "" is not a host name or IP address`},
		{"space", withList(`[" 10.0.0.1"]`), `entry " 10.0.0.1": a host or host:port without spaces is required`},
		{"twice", withList(`["10.0.0.1", "10.0.0.1"]`), `"10.0.0.1" is listed twice`},
		{"port missing", strings.Replace(withList(`["10.0.0.1:8081", "10.0.0.2"]`), "server_port = 8081", "", 1),
			"server_port 0 out of range 1..65535 (the port of the server_addresses entries without one)"},
		{"long entry clipped", withList(`["` + strings.Repeat("a", 300) + `:x"]`), strings.Repeat("a", 128) + `..."`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseAgent("agent.conf", []byte(c.src))
			wantErr(t, err, c.want)
			if err != nil && strings.Contains(err.Error(), strings.Repeat("a", 129)) {
				t.Errorf("error echoes more than 128 bytes of the entry: %v", err)
			}
		})
	}
}

func TestAgentServerAddressFlagReplacesList(t *testing.T) {
	src := strings.Replace(agentConfWith("    server_addresses = [\"10.0.0.1\", \"10.0.0.2\"]\n", ""), `server_address = "127.0.0.1"`, "", 1)
	path := writeFile(t, "agent.conf", src)
	a, err := LoadAgent([]string{"-config", path, "-serverAddress", "10.9.9.9"})
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Servers(); !slices.Equal(got, []string{"10.9.9.9:8081"}) {
		t.Errorf("Servers() = %q", got)
	}
}

// TestExampleConfServerAddresses: the commented server_addresses of
// conf/agent/agent.conf parses when uncommented in place of
// server_address.
func TestExampleConfServerAddresses(t *testing.T) {
	src, err := os.ReadFile("../../conf/agent/agent.conf")
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	for old, new := range map[string]string{
		"    server_address = \"127.0.0.1\"\n": "",
		"    # server_addresses = [":           "    server_addresses = [",
	} {
		if !strings.Contains(s, old) {
			t.Fatalf("conf/agent/agent.conf has no %q", old)
		}
		s = strings.Replace(s, old, new, 1)
	}
	a, err := ParseAgent("agent.conf", []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Servers(); len(got) != 2 {
		t.Errorf("Servers() = %q", got)
	}
}
