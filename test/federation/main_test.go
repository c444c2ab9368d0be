// Package federation runs real sigil-server and sigil-agent processes with
// federated trust domains and checks what workloads see through go-spiffe:
// federated bundles in the Workload API (X.509 and JWT), pushed when they
// change, written by filesystem delivery, used by ValidateJWTSVID, and
// still served by an agent restarted while its server (and the peer) are
// unreachable.
package federation

import (
	"os"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }
