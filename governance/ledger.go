package governance

import (
	"context"
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

// SKELETON (h2 owns this file and any ledger_*.go): the budget ledger.

// LedgerConfig configures a Ledger. Zero values take the defaults named.
type LedgerConfig struct {
	// ReplicaID names this process's reservations; "" picks a random one.
	// A restarted replica takes a new id.
	ReplicaID string
	// Lease is how long a replica may be silent before its held
	// reservations are reclaimed at their ceiling (default 30 s).
	Lease time.Duration
	// Heartbeat is how often the replica proves it is alive (default 5 s).
	Heartbeat time.Duration
	// Now is the clock (tests inject one); default time.Now.
	Now func() time.Time
	Log *slog.Logger
}

// Ledger keeps budget counters and reservations in the SQL database: one
// atomic conditional update admits a request against every budget at once,
// so no replica can overspend a shared budget (governance.md §4.3).
type Ledger struct {
	db  *store.DB
	cfg LedgerConfig
}

// OpenLedger applies the ledger's migrations and returns it.
func OpenLedger(ctx context.Context, db *store.DB, cfg LedgerConfig) (*Ledger, error) {
	return &Ledger{db: db, cfg: cfg}, nil
}

// Charge is what one request reserves against one budget, in the budget's
// unit (micro-USD or tokens).
type Charge struct {
	Budget Budget
	Amount int64
}

// Reserve reserves every charge for requestID, all or nothing, in the
// window each budget is in now. A budget that does not admit it (hard: the
// amount does not fit; soft: spent + reserved is at the limit) makes the
// whole reservation fail with a *Refusal of kind RefuseBudget naming that
// budget, its spend and its reset; alert budgets account but never refuse.
// Other errors mean the ledger could not be reached.
func (l *Ledger) Reserve(ctx context.Context, requestID string, charges []Charge) (*Refusal, error) {
	return nil, nil
}

// Release drops requestID's reservation: the request was refused or failed
// before anything was sent upstream. Releasing twice, or a request that
// reserved nothing, is a no-op.
func (l *Ledger) Release(ctx context.Context, requestID string) error { return nil }

// Headroom is one budget's state in its current window.
type Headroom struct {
	Budget      Budget    `json:"budget"`
	WindowStart time.Time `json:"window_start"`
	// ResetAt is when the window ends; zero for lifetime and rolling.
	ResetAt  time.Time `json:"reset_at,omitzero"`
	Spent    int64     `json:"spent"`
	Reserved int64     `json:"reserved"`
	Limit    int64     `json:"limit"`
}

// Headroom returns each budget's spent and reserved amounts in its current
// window.
func (l *Ledger) Headroom(ctx context.Context, budgets []Budget) ([]Headroom, error) {
	return nil, nil
}

// Start runs the heartbeat and the sweeper that reclaims the held
// reservations of replicas silent for longer than the lease, until ctx
// ends.
func (l *Ledger) Start(ctx context.Context) error { return nil }

// SettleStatements implements ledger.Settler: the statements that settle the
// reservations of recs (those with Reserved set) inside the transaction that
// stores them, so a record and its settlement commit together, once.
func (l *Ledger) SettleStatements(engine string, recs []*metering.Record) []ledger.Statement {
	return nil
}

var _ ledger.Settler = (*Ledger)(nil)
