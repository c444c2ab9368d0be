package e2e

import (
	"os"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestMain removes the sigil-server binary the -proc benchmarks build.
func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }
