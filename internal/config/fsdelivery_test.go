package config

import (
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// fsdConf is a valid agent config whose agent block ends with extra, which
// starts on line 6.
func fsdConf(extra string) string { return agentConfWith(extra, "") }

func TestFilesystemDeliveryParse(t *testing.T) {
	a, err := ParseAgent("agent.conf", []byte(fsdConf(`    filesystem_delivery "sensor" {
        spiffe_id = "spiffe://example.org/sensor"
        directory = "/var/lib/sigil/svids/sensor"
        file_mode = "0640"
        uid = 1000
        gid = "1001"
    }
    filesystem_delivery "legacy" {
        spiffe_id = "spiffe://example.org/legacy"
        directory = "/var/lib/sigil/svids/legacy/"
        file_mode = 0644
    }
    filesystem_delivery "minimal" {
        spiffe_id = "spiffe://example.org/minimal"
        directory = "/srv/minimal"
    }
`)))
	if err != nil {
		t.Fatal(err)
	}
	want := []FilesystemDelivery{
		{Name: "sensor", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/sensor"), Directory: "/var/lib/sigil/svids/sensor", FileMode: 0o640, UID: 1000, GID: 1001},
		{Name: "legacy", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/legacy"), Directory: "/var/lib/sigil/svids/legacy/", FileMode: 0o644, UID: -1, GID: -1},
		{Name: "minimal", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/minimal"), Directory: "/srv/minimal", UID: -1, GID: -1},
	}
	if !reflect.DeepEqual(a.FilesystemDelivery, want) {
		t.Errorf("got  %+v\nwant %+v", a.FilesystemDelivery, want)
	}

	a, err = ParseAgent("agent.conf", []byte(fsdConf("")))
	if err != nil {
		t.Fatal(err)
	}
	if a.FilesystemDelivery != nil {
		t.Errorf("no blocks parsed as %+v", a.FilesystemDelivery)
	}
}

func TestFilesystemDeliveryJSON(t *testing.T) {
	src := `{
  "agent": {
    "server_address": "127.0.0.1", "server_port": 8081, "trust_domain": "example.org", "insecure_bootstrap": true,
    "filesystem_delivery": {"sensor": {"spiffe_id": "spiffe://example.org/sensor", "directory": "/d", "uid": 7}}
  },
  "plugins": {
    "NodeAttestor": {"join_token": {}}, "KeyManager": {"memory": {}}, "WorkloadAttestor": {"unix": {}}
  }
}`
	a, err := ParseAgent("agent.json", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []FilesystemDelivery{{Name: "sensor", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/sensor"), Directory: "/d", UID: 7, GID: -1}}
	if !reflect.DeepEqual(a.FilesystemDelivery, want) {
		t.Errorf("got %+v, want %+v", a.FilesystemDelivery, want)
	}
}

func TestFilesystemDeliveryErrors(t *testing.T) {
	block := func(body string) string {
		return "    filesystem_delivery \"sensor\" {\n" + body + "    }\n"
	}
	const id = "        spiffe_id = \"spiffe://example.org/sensor\"\n"
	const dir = "        directory = \"/var/lib/sigil/sensor\"\n"
	cases := []struct {
		name string
		src  string
		want []string
	}{
		{"unknown key", fsdConf(block(id + dir + "        owner = \"app\"\n")),
			[]string{`agent.conf:9: unknown key "owner" in filesystem_delivery "sensor"`}},
		{"relative directory", fsdConf(block(id + "        directory = \"svids/sensor\"\n")),
			[]string{`agent.conf:8: invalid directory "svids/sensor" in filesystem_delivery "sensor": must be an absolute path`}},
		{"bad spiffe_id", fsdConf(block("        spiffe_id = \"example.org/sensor\"\n" + dir)),
			[]string{`agent.conf:7: invalid spiffe_id "example.org/sensor" in filesystem_delivery "sensor"`}},
		{"spiffe_id not a string", fsdConf(block("        spiffe_id = [\"spiffe://example.org/a\"]\n" + dir)),
			[]string{`agent.conf:7: invalid value for "spiffe_id" in filesystem_delivery "sensor": expected a string`}},
		{"missing spiffe_id and directory", fsdConf(block("")),
			[]string{`agent.conf:6: filesystem_delivery "sensor": spiffe_id must be set`, `agent.conf:6: filesystem_delivery "sensor": directory must be set`}},
		{"duplicate name", fsdConf(block(id+dir) + block(id+"        directory = \"/other\"\n")),
			[]string{`agent.conf:10: filesystem_delivery "sensor" is declared twice (first on line 6)`}},
		{"duplicate directory", fsdConf(block(id+dir) + "    filesystem_delivery \"again\" {\n" + id + "        directory = \"/var/lib/sigil/sensor/\"\n    }\n"),
			[]string{`agent.conf:12: filesystem_delivery "again": directory "/var/lib/sigil/sensor" is already used by the filesystem_delivery on line 6`}},
		{"no label", fsdConf("    filesystem_delivery {\n" + id + dir + "    }\n"),
			[]string{`agent.conf:7: invalid filesystem_delivery in agent block: expected filesystem_delivery "<name>"`}},
		{"not a block", fsdConf("    filesystem_delivery = \"/x\"\n"),
			[]string{`agent.conf:6: invalid filesystem_delivery in agent block`}},
		{"file_mode not octal", fsdConf(block(id + dir + "        file_mode = \"rw-r-----\"\n")),
			[]string{`agent.conf:9: invalid file_mode in filesystem_delivery "sensor": "rw-r-----" is not an octal mode`}},
		{"file_mode writable by group", fsdConf(block(id + dir + "        file_mode = \"0660\"\n")),
			[]string{`agent.conf:9: invalid file_mode in filesystem_delivery "sensor": 0660 is not allowed`}},
		{"file_mode not owner-readable", fsdConf(block(id + dir + "        file_mode = \"0044\"\n")),
			[]string{`agent.conf:9: invalid file_mode in filesystem_delivery "sensor": 0044 must let the owner read`}},
		{"negative uid", fsdConf(block(id + dir + "        uid = -1\n")),
			[]string{`agent.conf:9: invalid uid -1 in filesystem_delivery "sensor"`}},
		{"gid not a number", fsdConf(block(id + dir + "        gid = \"staff\"\n")),
			[]string{`agent.conf:9: invalid value for "gid" in filesystem_delivery "sensor": expected an integer`}},
		// Validate (no line: the trust domain may come from -trustDomain).
		{"other trust domain", fsdConf(block("        spiffe_id = \"spiffe://other.org/sensor\"\n" + dir)),
			[]string{`agent.conf: filesystem_delivery "sensor": spiffe_id "spiffe://other.org/sensor" is not in the agent's trust domain "example.org"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseAgent("agent.conf", []byte(c.src))
			wantErr(t, err, c.want...)
		})
	}
}

func TestFilesystemDeliveryValidateInCode(t *testing.T) {
	a, err := ParseAgent("agent.conf", []byte(fsdConf("")))
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/s")
	a.FilesystemDelivery = []FilesystemDelivery{
		{Name: "a", SPIFFEID: id, Directory: "/d", UID: -1, GID: -1},
		{Name: "a", SPIFFEID: id, Directory: "/d/", UID: -1, GID: -1},
		{Name: "b", Directory: "rel", FileMode: 0o755, UID: -2, GID: -1},
	}
	err = a.Validate()
	wantErr(t, err,
		`filesystem_delivery "a" is declared twice`,
		`filesystem_delivery "a": directory "/d" is already used by filesystem_delivery "a"`,
		`filesystem_delivery "b": spiffe_id must be set`,
		`filesystem_delivery "b": directory "rel" must be an absolute path`,
		`filesystem_delivery "b": file_mode 0755 is not allowed`,
		`filesystem_delivery "b": uid and gid must be -1 (unset) or more`)
	if n := len(strings.Split(err.Error(), "\n")); n != 6 {
		t.Errorf("%d errors, want 6:\n%v", n, err)
	}
}
