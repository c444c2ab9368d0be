//go:build deps

// Package deps pins the module versions the project is built on, so that
// go.mod keeps them while packages are being written. Never built.
package deps

import (
	_ "github.com/go-jose/go-jose/v4"
	_ "github.com/hashicorp/hcl"
	_ "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	_ "github.com/spiffe/go-spiffe/v2/svid/x509svid"
	_ "github.com/spiffe/go-spiffe/v2/workloadapi"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sys/unix"
	_ "google.golang.org/grpc"
	_ "modernc.org/sqlite"
)
