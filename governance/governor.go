package governance

import (
	"context"
	"log/slog"

	"github.com/tollgate/tollgate/metering"
)

// SKELETON (h6 owns this file): the one entry point the proxy calls.

// PolicySource serves the current policies (*Watcher).
type PolicySource interface {
	Current() *Policies
}

// Config wires a Governor.
type Config struct {
	Policies PolicySource
	// Ledger enforces budgets; nil refuses (retryably) every request a
	// budget applies to.
	Ledger *Ledger
	// Limiter enforces rate limits; nil uses an in-process limiter.
	Limiter Limiter
	// Prices bound and price reservations.
	Prices *metering.PriceTable
	Log    *slog.Logger
}

// Governor admits requests under every policy that applies to them.
type Governor struct{ cfg Config }

// New returns a Governor.
func New(cfg Config) *Governor { return &Governor{cfg: cfg} }

// Request is what the Governor needs to know about a request.
type Request struct {
	RequestID string
	Scope     Scope
	// Dialect is the registry dialect name, Provider the credential's.
	Dialect, Provider string
	// Model is the model the client asked for (body, or Gemini's path).
	Model string
	Body  []byte
	// Metered is false for paths that produce no usage (count_tokens,
	// model lists): they are not governed.
	Metered bool
}

// Admission is an admitted request's hold on its policies. A nil
// *Admission (no policy applied) is valid and its methods do nothing.
type Admission struct {
	// Model is the model to send: Request.Model, or an alias's target.
	Model string
	// Reserved says a budget reservation is held under the request id; the
	// usage record settles it (metering.Record.Reserved).
	Reserved bool
	// ReservedMicroUSD is the cost reserved (the largest over cost budgets).
	ReservedMicroUSD int64
}

// Admit checks model policy, rate limits and budgets, in that order, and
// reserves. A refusal is returned as a *Refusal error; it has reserved and
// acquired nothing.
func (g *Governor) Admit(ctx context.Context, req Request) (*Admission, error) { return nil, nil }

// Release gives everything back: the request was not forwarded.
func (a *Admission) Release(ctx context.Context) {}

// Finish ends an admitted request once its record is final: it frees the
// concurrency slot and corrects TPM to the record's tokens. The budget
// settles with the record in the ledger's transaction, not here.
func (a *Admission) Finish(rec *metering.Record) {}

// PolicyState is one policy in force for a scope, with its headroom.
type PolicyState struct {
	Kind     string     `json:"kind"` // budget, limit, model_rule
	Budget   *Budget    `json:"budget,omitempty"`
	Limit    *Limit     `json:"limit,omitempty"`
	Rule     *ModelRule `json:"rule,omitempty"`
	Headroom *Headroom  `json:"headroom,omitempty"`
}

// Effective lists the policies in force for sc (and model, when not empty)
// with each budget's headroom: the resolution view, computed by the same
// matching as enforcement.
func (g *Governor) Effective(ctx context.Context, sc Scope, model string) ([]PolicyState, error) {
	return nil, nil
}
