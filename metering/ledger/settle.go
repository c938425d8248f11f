package ledger

import "github.com/tollgate/tollgate/metering"

// SKELETON (h2 owns this file): the hook through which budget reservations
// settle in the usage batch's transaction.

// Statement is one SQL statement and its arguments.
type Statement struct {
	SQL  string
	Args []any
}

// Settler settles what records reserved (governance.Ledger). The Store
// runs its statements inside the transaction that inserts the batch, after
// the insert, on both engines; they must be idempotent (a replayed record
// settles nothing twice).
type Settler interface {
	SettleStatements(engine string, recs []*metering.Record) []Statement
}

// SetSettler installs st; call before the writer starts.
func (s *Store) SetSettler(st Settler) { s.settler = st }
