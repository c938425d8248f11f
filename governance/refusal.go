package governance

import (
	"fmt"
	"time"
)

// RefusalKind is why governance refused a request. The proxy shapes the
// answer from it, per harness and dialect: a rate limit says back off and
// retry, a budget and a model refusal say stop (governance.md §6).
type RefusalKind string

const (
	// RefuseRateLimit: over a requests- or tokens-per-minute limit.
	RefuseRateLimit RefusalKind = "rate_limit"
	// RefuseConcurrency: too many requests of the scope in flight.
	RefuseConcurrency RefusalKind = "concurrency"
	// RefuseBudget: the reservation does not fit a budget (or the model is
	// unpriced under a cost budget that refuses unpriced models).
	RefuseBudget RefusalKind = "budget"
	// RefuseModel: the model is not allowed at some level.
	RefuseModel RefusalKind = "model_policy"
	// RefuseUnavailable: the ledger or a hard limit's shared limiter
	// cannot be reached, so a capped scope is refused, retryably.
	RefuseUnavailable RefusalKind = "governance_unavailable"
)

// Refusal is governance's answer to a request it does not admit. Message
// is safe to show the caller: it names the scope and the policy, never a
// secret or another tenant.
type Refusal struct {
	Kind    RefusalKind
	Message string
	// RetryAfter is how long to wait: until a rate limit frees a slot,
	// until a budget's window resets (zero for a lifetime budget), or a
	// short fixed wait when governance is unavailable.
	RetryAfter time.Duration
	// ResetAt is when the limit or the budget's window resets; zero if it
	// never does.
	ResetAt time.Time
	// Policy names the policy for the x-tollgate-limit header:
	// "project:acme/rpm", "workspace:ws-1/budget".
	Policy string
	// Limit and Remaining feed x-ratelimit-* (rate limits: requests or
	// tokens; budgets: the limit and what is left, in Unit).
	Limit, Remaining int64
	// Unit is "requests", "tokens" or "micro_usd".
	Unit string
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("governance refused (%s): %s", r.Kind, r.Message)
}

// UnavailableRetryAfter is the wait a refusal for unavailable governance
// asks for: long enough for a restart, short enough that every CLI retries
// (governance.md §6.2).
const UnavailableRetryAfter = 10 * time.Second
