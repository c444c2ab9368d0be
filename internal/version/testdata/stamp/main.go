// Command stamp prints version.String(); version_test builds it with
// -ldflags -X to prove the documented linker flag reaches the variable.
package main

import (
	"fmt"

	"github.com/sigil-spiffe/sigil/internal/version"
)

func main() { fmt.Println(version.String()) }
