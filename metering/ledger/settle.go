package ledger

import "github.com/tollgate/tollgate/metering"

// The hook through which budget reservations settle in the usage batch's
// transaction: a record and what it settles commit together, once.

// Statement is one SQL statement and its arguments.
type Statement struct {
	SQL  string
	Args []any
	// BeforeInsert runs the statement before the batch's insert instead of
	// after it, so it can tell a record this batch stores for the first
	// time (NOT EXISTS in usage_records) from one stored before: how a
	// statement that is not idempotent by itself settles each record once.
	BeforeInsert bool
}

// Settler settles what records reserved (governance.Ledger). The Store
// runs its statements inside the transaction that inserts the batch, after
// the insert (before it when BeforeInsert is set), on both engines (on
// PostgreSQL in the same pipelined round trip); they get every record of
// the batch, stored before or not, so they must be idempotent (a replayed
// record settles nothing twice). A failing statement fails the batch.
type Settler interface {
	SettleStatements(engine string, recs []*metering.Record) []Statement
}

// FreshSettler is a Settler that can also settle from exactly the records
// a batch has just stored for the first time. On SQLite, where the Store
// inserts row by row and knows them, it calls SettleFresh after the insert
// and runs those statements too: they need no idempotence of their own,
// so they can be per batch instead of per record. PostgreSQL's pipelined
// batch does not know them, and uses SettleStatements alone.
type FreshSettler interface {
	Settler
	SettleFresh(engine string, fresh []*metering.Record) []Statement
}

// SetSettler installs st; call before the writer starts.
func (s *Store) SetSettler(st Settler) { s.settler = st }
