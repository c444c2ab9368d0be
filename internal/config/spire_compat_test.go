package config

import (
	"strings"
	"testing"
)

// The shape of the configuration files SPIRE ships for its quickstart
// (conf/server/server.conf, conf/agent/agent.conf): they must run unchanged.
const spireQuickstartServer = `server {
    bind_address = "127.0.0.1"
    bind_port = "8081"
    socket_path = "/tmp/spire-server/private/api.sock"
    trust_domain = "example.org"
    data_dir = "./.data"
    log_level = "DEBUG"
    ca_key_type = "rsa-2048"

    ca_subject {
        country = ["US"]
        organization = ["SPIFFE"]
        common_name = ""
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "./.data/datastore.sqlite3"
        }
    }

    NodeAttestor "join_token" {
        plugin_data {
        }
    }

    KeyManager "memory" {
        plugin_data = {}
    }

    UpstreamAuthority "disk" {
        plugin_data {
            key_file_path = "./conf/server/dummy_upstream_ca.key"
            cert_file_path = "./conf/server/dummy_upstream_ca.crt"
        }
    }
}
`

const spireQuickstartAgent = `agent {
    data_dir = "./.data"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "8081"
    socket_path ="/tmp/spire-agent/public/api.sock"
    trust_bundle_path = "./conf/agent/dummy_root_ca.crt"
    trust_domain = "example.org"
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {
        }
    }
    KeyManager "disk" {
        plugin_data {
            directory = "./.data"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {
        }
    }
}
`

func TestSPIREQuickstartConfigs(t *testing.T) {
	s, err := ParseServer("server.conf", []byte(spireQuickstartServer))
	if err != nil {
		t.Fatalf("SPIRE quickstart server.conf rejected: %v", err)
	}
	if s.CAKeyType != "rsa-2048" || s.JWTKeyType != "rsa-2048" {
		t.Errorf("server: %+v", s)
	}
	wantPlugins(t, s.Plugins, `DataStore "sql" server.conf:18`, `NodeAttestor "join_token" server.conf:25`,
		`KeyManager "memory" server.conf:30`, `UpstreamAuthority "disk" server.conf:34`)
	a, err := ParseAgent("agent.conf", []byte(spireQuickstartAgent))
	if err != nil {
		t.Fatalf("SPIRE quickstart agent.conf rejected: %v", err)
	}
	if a.TrustBundlePath != "./conf/agent/dummy_root_ca.crt" {
		t.Errorf("agent: %+v", a)
	}
	// The plugins are the agent catalog's (internal/catalog/agent) to check.
	wantPlugins(t, a.Plugins, `NodeAttestor "join_token" agent.conf:12`, `KeyManager "disk" agent.conf:16`, `WorkloadAttestor "unix" agent.conf:21`)

	// SPIRE's keys are case-sensitive in the sections it checks: so are ours.
	capitalized := strings.Replace(spireQuickstartServer, "country =", "Country =", 1)
	_, err = ParseServer("server.conf", []byte(capitalized))
	wantErr(t, err, `server.conf:11: unknown key "Country" in ca_subject block`)
}
