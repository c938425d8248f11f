// Package health tracks each upstream credential's health as the proxy sees
// it: a circuit breaker over consecutive failures, and the headroom the
// provider's rate-limit headers report, so failover skips a credential in
// cooldown or without headroom until it recovers or resets.
package health

import "time"

// Config configures a Tracker. Zero values take documented defaults.
type Config struct {
	// FailureThreshold is how many consecutive failures open the circuit.
	FailureThreshold int
	// BaseCooldown is the first cooldown; each reopening doubles it up to
	// MaxCooldown.
	BaseCooldown, MaxCooldown time.Duration
	Now                       func() time.Time
}

// Observation is the outcome of one upstream attempt.
type Observation struct {
	CredentialID, Provider string
	// Status is the HTTP status, 0 when none came.
	Status int
	// Failed says the attempt counts as a failure of the credential
	// (connect, TLS, header timeout, 429, 5xx, 529).
	Failed bool
	// Header reads a response header by lower-case name ("" if absent);
	// nil when no response came.
	Header func(name string) string
}

// Verdict says whether a credential may be tried now.
type Verdict struct {
	OK bool
	// Probe is set when the circuit is half-open: this attempt is the
	// probe, and its outcome closes or reopens the circuit.
	Probe bool
	// Until is when a refused credential may be tried again.
	Until time.Time
	// Reason is "cooldown" or "rate-limited" when not OK.
	Reason string
}

// State is one credential's health, for the resolution view and metrics.
type State struct {
	CredentialID string    `json:"credential_id"`
	Provider     string    `json:"provider"`
	Circuit      string    `json:"circuit"` // closed, open, half-open
	Failures     int       `json:"consecutive_failures"`
	Until        time.Time `json:"until,omitzero"`
	// Remaining request and token headroom the provider last reported,
	// -1 when unknown; Reset when it refills.
	RemainingRequests int64     `json:"remaining_requests"`
	RemainingTokens   int64     `json:"remaining_tokens"`
	Reset             time.Time `json:"reset,omitzero"`
}

// Tracker is the health of every credential the proxy has used.
type Tracker struct{ cfg Config }

// New returns a Tracker.
func New(cfg Config) *Tracker { return &Tracker{cfg: cfg} }

// Check says whether credID may be tried now.
func (t *Tracker) Check(credID string) Verdict { return Verdict{OK: true} }

// Observe records one attempt's outcome.
func (t *Tracker) Observe(o Observation) {}

// States lists every tracked credential.
func (t *Tracker) States() []State { return nil }
