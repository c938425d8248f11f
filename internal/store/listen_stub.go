package store

// STUB: helper h5 writes the real listen.go with this exact API; the lead
// deletes this file when merging it. Until then Listen reports that
// notifications are unsupported, so callers poll only.

import (
	"context"
	"database/sql"
	"errors"
)

// ListenHandler receives what a Listen loop sees.
type ListenHandler struct {
	OnNotify  func(payload string)
	OnConnect func()
	OnDown    func(err error)
}

// ErrListenUnsupported: the caller polls only.
var ErrListenUnsupported = errors.New("store: LISTEN/NOTIFY unsupported here; polling only")

// Listen is a stub: it returns ErrListenUnsupported at once.
func (db *DB) Listen(ctx context.Context, channel string, h ListenHandler) error {
	return ErrListenUnsupported
}

// Notify is a stub: it queues nothing.
func (db *DB) Notify(ctx context.Context, tx *sql.Tx, channel, payload string) error {
	return nil
}
