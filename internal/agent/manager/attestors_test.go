package manager_test

import (
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
	"github.com/sigil-spiffe/sigil/internal/attest/node/x509pop"
	agentcatalog "github.com/sigil-spiffe/sigil/internal/catalog/agent"
	"github.com/sigil-spiffe/sigil/internal/testutil/testattestor"
)

// The agent halves of Sigil's node attestors are NodeAttestors as they are.
var (
	_ manager.NodeAttestor      = (*tpm.Agent)(nil)
	_ manager.NodeAttestor      = (*x509pop.Agent)(nil)
	_ manager.NodeAttestor      = (*testattestor.Agent)(nil)
	_ manager.SingleUseAttestor = agentcatalog.JoinToken{}
)
