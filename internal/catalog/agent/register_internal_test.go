package agent

import (
	"context"
	"errors"

	"github.com/sigil-spiffe/sigil/internal/config"
)

// OtherNodeAttestorForTests is a second NodeAttestor, registered only in this
// package's tests, for the rules that need one besides join_token.
const OtherNodeAttestorForTests = "test_other"

func init() {
	registerNodeAttestor(OtherNodeAttestorForTests, func(d *config.PluginData) (struct{}, error) { return struct{}{}, d.Done() },
		func(context.Context, struct{}, NodeAttestorDeps) (NodeAttestor, error) {
			return nil, errors.New("test_other cannot be built")
		})
}
