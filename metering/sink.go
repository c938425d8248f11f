package metering

import (
	"context"
	"errors"
)

// Sink receives the one usage record of each request. The proxy calls Record
// once per request, after the response ended; Record must return quickly
// (a bounded enqueue) and never fails from the caller's point of view: an
// implementation that cannot keep a record counts and logs it.
//
// Record takes ownership of r: the caller must not modify it afterwards.
type Sink interface {
	Record(r *Record)
}

// Inserter stores a batch of records in one transaction, idempotently by
// request id, and reports how many of them were new. *Store implements it;
// tests wrap it to inject failures.
type Inserter interface {
	InsertBatch(ctx context.Context, recs []*Record) (inserted int, err error)
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
	_ Sink     = (*Writer)(nil)
	_ Inserter = (*Store)(nil)
)
