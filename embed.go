// Package tollgate holds the files the module ships beside its code, so the
// binary works where they are not on disk.
package tollgate

import _ "embed"

// DefaultHarnesses is harnesses.yaml as shipped: the registry commands use
// when no file is configured and ./harnesses.yaml is absent.
//
//go:embed harnesses.yaml
var DefaultHarnesses []byte
