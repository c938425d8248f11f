package resolver

import (
	"fmt"
	"log/slog"
)

// redacted is what every printing path of a Secret produces.
const redacted = "[redacted]"

// Secret holds a plaintext credential. Every way of printing, logging or
// encoding it yields "[redacted]"; Reveal is the only way out, and the proxy
// calls it once, when it sets the upstream auth header.
//
// Keep a Secret in exported struct fields or pass it by value: fmt cannot
// call methods on unexported fields, so a Secret inside an unexported field
// of a printed struct would print its contents.
type Secret struct {
	s string
}

// NewSecret wraps plaintext.
func NewSecret(plaintext string) Secret { return Secret{s: plaintext} }

// Reveal returns the plaintext.
func (s Secret) Reveal() string { return s.s }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.s == "" }

// String returns "[redacted]".
func (Secret) String() string { return redacted }

// GoString returns "[redacted]", for %#v.
func (Secret) GoString() string { return redacted }

// Format writes "[redacted]" for every verb, so %x or %q cannot leak it.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalJSON returns the JSON string "[redacted]".
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText returns "[redacted]", for encoders that use text marshaling.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue returns "[redacted]" to slog.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

var (
	_ fmt.Stringer   = Secret{}
	_ fmt.GoStringer = Secret{}
	_ fmt.Formatter  = Secret{}
	_ slog.LogValuer = Secret{}
)
