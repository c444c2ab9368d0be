package e2e

import (
	"os"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/swtpm"
)

// TestMain removes the sigil-server binary the -proc benchmarks build and
// the software TPMs the tpm benchmarks manufacture.
func TestMain(m *testing.M) { os.Exit(swtpm.Main(m, testutil.Cleanup)) }
