// Package ledger keeps the usage records metering produces: a crash-safe
// local spool, the durable Writer that batches them into the SQL store, the
// daily rollup, and the usage queries and their renderings.
package ledger

import (
	"context"
	"errors"

	"github.com/tollgate/tollgate/metering"
)

// Inserter stores a batch of records in one transaction, idempotently by
// request id, and reports how many of them were new. *Store implements it;
// tests wrap it to inject failures.
type Inserter interface {
	InsertBatch(ctx context.Context, recs []*metering.Record) (inserted int, err error)
}

// Sentinel errors of the durable sink.
var (
	// ErrSpoolLocked is returned by NewWriter when another process (or another
	// Writer in this one) holds the spool directory.
	ErrSpoolLocked = errors.New("metering spool directory in use")
	// ErrWriterClosed is returned by Flush after Close.
	ErrWriterClosed = errors.New("metering writer closed")
)

var (
	_ metering.Sink          = (*Writer)(nil)
	_ metering.StatsReporter = (*Writer)(nil)
	_ Inserter               = (*Store)(nil)
)
