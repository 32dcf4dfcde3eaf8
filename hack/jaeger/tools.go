//go:build tools

// Package tools records the command this wrapper module builds (Jaeger v2's all-in-one
// binary), so that `go mod tidy` keeps its dependencies. It holds no product logic.
package tools

import (
	_ "github.com/jaegertracing/jaeger/cmd/jaeger"
)
