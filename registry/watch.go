package registry

import (
	"log/slog"

	"github.com/tollgate/tollgate/internal/hotfile"
)

// Holder serves the current registry and swaps in a new one when the file
// changes; an invalid edit is refused and the old registry keeps serving.
type Holder = hotfile.Value[Registry]

// NewHolder loads path and returns a Holder serving it.
func NewHolder(path string, log *slog.Logger) (*Holder, error) {
	return hotfile.Load("registry", path, LoadFile, log)
}

// NewStatic returns a Holder that always serves r.
func NewStatic(r *Registry) *Holder { return hotfile.Static(r) }
