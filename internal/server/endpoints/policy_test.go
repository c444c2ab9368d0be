package endpoints

import (
	"testing"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	debugv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/debug/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	localauthorityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/localauthority/v1"
	loggerv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/logger/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"
)

// Every method of every server API has an explicit rule.
func TestPolicyCoversEveryMethod(t *testing.T) {
	descs := []grpc.ServiceDesc{
		agentv1.Agent_ServiceDesc, bundlev1.Bundle_ServiceDesc, entryv1.Entry_ServiceDesc,
		svidv1.SVID_ServiceDesc, trustdomainv1.TrustDomain_ServiceDesc, debugv1.Debug_ServiceDesc,
		loggerv1.Logger_ServiceDesc, localauthorityv1.LocalAuthority_ServiceDesc, grpc_health_v1.Health_ServiceDesc,
	}
	seen := map[string]bool{}
	for _, d := range descs {
		var names []string
		for _, m := range d.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range d.Streams {
			names = append(names, s.StreamName)
		}
		for _, n := range names {
			full := "/" + d.ServiceName + "/" + n
			seen[full] = true
			if _, ok := policy[full]; !ok {
				t.Errorf("no policy for %s", full)
			}
		}
	}
	for m := range policy {
		if !seen[m] {
			t.Errorf("policy for unknown method %s", m)
		}
	}
}

// Spot-check SPIRE's rules.
func TestPolicyMatchesSPIRE(t *testing.T) {
	for m, want := range map[string]rule{
		"/spire.api.server.agent.v1.Agent/AttestAgent":           {any: true, limit: attestLimit},
		"/spire.api.server.bundle.v1.Bundle/GetBundle":           anyone,
		"/spire.api.server.agent.v1.Agent/RenewAgent":            agentSigning,
		"/spire.api.server.svid.v1.SVID/BatchNewX509SVID":        agentSigning,
		"/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries": agentOnly,
		"/spire.api.server.entry.v1.Entry/BatchCreateEntry":      localOrAdmin,
		"/spire.api.server.agent.v1.Agent/CreateJoinToken":       localOrAdmin,
		"/spire.api.server.bundle.v1.Bundle/PublishJWTAuthority": downstream,
		"/grpc.health.v1.Health/Check":                           localOnly,
	} {
		if got := policy[m]; got != want {
			t.Errorf("%s: %+v, want %+v", m, got, want)
		}
	}
}
