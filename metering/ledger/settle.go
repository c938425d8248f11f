package ledger

import "github.com/tollgate/tollgate/metering"

// The hook through which budget reservations settle in the usage batch's
// transaction: a record and what it settles commit together, once.

// Statement is one SQL statement and its arguments.
type Statement struct {
	SQL  string
	Args []any
}

// Settler settles what records reserved (governance.Ledger). The Store
// runs its statements inside the transaction that inserts the batch, after
// the insert, on both engines (on PostgreSQL in the same pipelined round
// trip); they get every record of the batch, stored before or not, so they
// must be idempotent (a replayed record settles nothing twice). A failing
// statement fails the batch.
type Settler interface {
	SettleStatements(engine string, recs []*metering.Record) []Statement
}

// SetSettler installs st; call before the writer starts.
func (s *Store) SetSettler(st Settler) { s.settler = st }
