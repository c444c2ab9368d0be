// Command etcd is etcd's server (go.etcd.io/etcd/server/v3), built by
// tools/kube/build.sh for the Kubernetes tests where no etcd is installed
// (Debian's etcd-server is used when present).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
