//go:build tools

// Package tools records the etcd server command this wrapper module builds for
// Switchboard's control-plane tests (hack/tools.sh). It holds no product logic.
package tools

import _ "go.etcd.io/etcd/server/v3"
