package endpoints

// rule says who may call a method and which work limit applies. A caller is
// allowed when any of its flags matches (SPIRE's default authorization
// policy, pkg/server/authpolicy).
type rule struct {
	any, local, admin, agent, downstream bool
	limit                                limitKind
}

type limitKind int

const (
	noLimit limitKind = iota
	attestLimit
	signLimit
)

var (
	anyone       = rule{any: true}
	localOnly    = rule{local: true}
	localOrAdmin = rule{local: true, admin: true}
	agentOnly    = rule{agent: true}
	agentSigning = rule{agent: true, limit: signLimit}
	downstream   = rule{downstream: true}
)

// policy covers every method of the server APIs. Methods not listed are
// denied.
var policy = map[string]rule{
	// agent/v1
	"/spire.api.server.agent.v1.Agent/CountAgents":     localOrAdmin,
	"/spire.api.server.agent.v1.Agent/ListAgents":      localOrAdmin,
	"/spire.api.server.agent.v1.Agent/GetAgent":        localOrAdmin,
	"/spire.api.server.agent.v1.Agent/DeleteAgent":     localOrAdmin,
	"/spire.api.server.agent.v1.Agent/BanAgent":        localOrAdmin,
	"/spire.api.server.agent.v1.Agent/AttestAgent":     {any: true, limit: attestLimit},
	"/spire.api.server.agent.v1.Agent/RenewAgent":      agentSigning,
	"/spire.api.server.agent.v1.Agent/CreateJoinToken": localOrAdmin,
	"/spire.api.server.agent.v1.Agent/PostStatus":      agentOnly,

	// bundle/v1
	"/spire.api.server.bundle.v1.Bundle/GetBundle":                  anyone,
	"/spire.api.server.bundle.v1.Bundle/AppendBundle":               localOrAdmin,
	"/spire.api.server.bundle.v1.Bundle/PublishJWTAuthority":        downstream,
	"/spire.api.server.bundle.v1.Bundle/PublishWITAuthority":        downstream,
	"/spire.api.server.bundle.v1.Bundle/CountBundles":               localOrAdmin,
	"/spire.api.server.bundle.v1.Bundle/ListFederatedBundles":       localOrAdmin,
	"/spire.api.server.bundle.v1.Bundle/GetFederatedBundle":         {local: true, admin: true, agent: true},
	"/spire.api.server.bundle.v1.Bundle/BatchCreateFederatedBundle": localOrAdmin,
	"/spire.api.server.bundle.v1.Bundle/BatchUpdateFederatedBundle": localOrAdmin,
	"/spire.api.server.bundle.v1.Bundle/BatchSetFederatedBundle":    localOrAdmin,
	"/spire.api.server.bundle.v1.Bundle/BatchDeleteFederatedBundle": localOrAdmin,

	// entry/v1
	"/spire.api.server.entry.v1.Entry/CountEntries":          localOrAdmin,
	"/spire.api.server.entry.v1.Entry/ListEntries":           localOrAdmin,
	"/spire.api.server.entry.v1.Entry/GetEntry":              localOrAdmin,
	"/spire.api.server.entry.v1.Entry/BatchCreateEntry":      localOrAdmin,
	"/spire.api.server.entry.v1.Entry/BatchUpdateEntry":      localOrAdmin,
	"/spire.api.server.entry.v1.Entry/BatchDeleteEntry":      localOrAdmin,
	"/spire.api.server.entry.v1.Entry/GetAuthorizedEntries":  agentOnly,
	"/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries": agentOnly,

	// svid/v1
	"/spire.api.server.svid.v1.SVID/MintX509SVID":        {local: true, admin: true, limit: signLimit},
	"/spire.api.server.svid.v1.SVID/MintJWTSVID":         {local: true, admin: true, limit: signLimit},
	"/spire.api.server.svid.v1.SVID/MintWITSVID":         {local: true, admin: true, limit: signLimit},
	"/spire.api.server.svid.v1.SVID/BatchNewX509SVID":    agentSigning,
	"/spire.api.server.svid.v1.SVID/NewJWTSVID":          agentSigning,
	"/spire.api.server.svid.v1.SVID/BatchNewWITSVID":     agentSigning,
	"/spire.api.server.svid.v1.SVID/NewDownstreamX509CA": {downstream: true, limit: signLimit},

	// trustdomain/v1
	"/spire.api.server.trustdomain.v1.TrustDomain/ListFederationRelationships":       localOrAdmin,
	"/spire.api.server.trustdomain.v1.TrustDomain/GetFederationRelationship":         localOrAdmin,
	"/spire.api.server.trustdomain.v1.TrustDomain/BatchCreateFederationRelationship": localOrAdmin,
	"/spire.api.server.trustdomain.v1.TrustDomain/BatchUpdateFederationRelationship": localOrAdmin,
	"/spire.api.server.trustdomain.v1.TrustDomain/BatchDeleteFederationRelationship": localOrAdmin,
	"/spire.api.server.trustdomain.v1.TrustDomain/RefreshBundle":                     localOrAdmin,

	// debug/v1, logger/v1, localauthority/v1: local administration.
	"/spire.api.server.debug.v1.Debug/GetInfo":                                       localOnly,
	"/spire.api.server.logger.v1.Logger/GetLogger":                                   localOnly,
	"/spire.api.server.logger.v1.Logger/SetLogLevel":                                 localOnly,
	"/spire.api.server.logger.v1.Logger/ResetLogLevel":                               localOnly,
	"/spire.api.server.localauthority.v1.LocalAuthority/GetJWTAuthorityState":        localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/PrepareJWTAuthority":         localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/ActivateJWTAuthority":        localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/TaintJWTAuthority":           localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/RevokeJWTAuthority":          localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/GetX509AuthorityState":       localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/PrepareX509Authority":        localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/ActivateX509Authority":       localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/TaintX509Authority":          localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/TaintX509UpstreamAuthority":  localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509Authority":         localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509UpstreamAuthority": localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/GetWITAuthorityState":        localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/PrepareWITAuthority":         localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/ActivateWITAuthority":        localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/TaintWITAuthority":           localOrAdmin,
	"/spire.api.server.localauthority.v1.LocalAuthority/RevokeWITAuthority":          localOrAdmin,

	// grpc health, for `healthcheck` on the admin socket.
	"/grpc.health.v1.Health/Check": localOnly,
	"/grpc.health.v1.Health/Watch": localOnly,
	"/grpc.health.v1.Health/List":  localOnly,
}
