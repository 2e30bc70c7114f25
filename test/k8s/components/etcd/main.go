// Command etcd is etcd's own entry point, built from the same module version
// kube-apiserver's client is tested against.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
