//go:build tools

// Package tools records the commands this wrapper module builds, so that
// `go mod tidy` keeps their dependencies. It holds no product logic.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
