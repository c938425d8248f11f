package ledger

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// storeFault says whose fault a failed store write is, which decides
// whether the writer may ever give up on a record.
type storeFault int

const (
	// faultUnknown: the error says neither. The writer treats it as the
	// record's fault only while the store answers Ping (the old rule).
	faultUnknown storeFault = iota
	// faultStore: the store cannot take any record now (disk full, I/O
	// error, locked, unreachable, shutting down, timed out). It will take
	// them again once the condition passes, so the records wait in the
	// spool however long it lasts; quarantining them would lose them to
	// an outage.
	faultStore
	// faultRecord: the store refuses these records and would refuse them
	// again (a constraint, a value out of range, a schema it does not
	// have). Retrying cannot help, so the writer quarantines them.
	faultRecord
)

// classifyStoreErr sorts a store error by the engine's own codes, never by
// its message, so a translated or reworded message cannot turn an outage
// into a quarantine.
func classifyStoreErr(err error) storeFault {
	if err == nil {
		return faultUnknown
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return sqliteFault(se.Code())
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return postgresFault(pe.Code)
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	var errno syscall.Errno
	switch {
	case errors.As(err, &ce), errors.As(err, &ne),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, driver.ErrBadConn), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		pgconn.Timeout(err), pgconn.SafeToRetry(err):
		return faultStore
	case errors.As(err, &errno):
		// ENOSPC, EIO, EDQUOT, ECONNREFUSED...: the system, not the record.
		return faultStore
	}
	return faultUnknown
}

// sqliteFault classifies a SQLite result code; extended codes carry the
// primary one in their low byte.
func sqliteFault(code int) storeFault {
	switch code & 0xff {
	case sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
		sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_CANTOPEN,
		sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_NOLFS,
		sqlite3.SQLITE_AUTH, sqlite3.SQLITE_ABORT:
		// A corrupt or unopenable database refuses every record alike:
		// quarantining them all would empty the spool into a file no one
		// replays.
		return faultStore
	case sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_RANGE,
		sqlite3.SQLITE_ERROR:
		// SQLITE_ERROR is a statement the schema cannot run (no such
		// column: a server older than the database).
		return faultRecord
	}
	return faultUnknown
}

// postgresFault classifies a PostgreSQL SQLSTATE by its class (the first
// two characters) and the few codes that matter within a class.
func postgresFault(code string) storeFault {
	switch code {
	case "57P01", "57P02", "57P03", // admin shutdown, crash shutdown, cannot connect now
		"57014",          // query canceled (statement timeout)
		"55P03",          // lock not available (lock timeout)
		"40001", "40P01", // serialization failure, deadlock: retry the transaction
		"25006", // read-only transaction: a standby during failover
		"42501": // insufficient privilege: a grant revoked refuses every record
		return faultStore
	}
	if len(code) < 2 {
		return faultUnknown
	}
	switch code[:2] {
	case "08", // connection exception
		"53", // insufficient resources: disk full, out of memory, too many connections
		"58", // system error: I/O
		"XX": // internal error
		return faultStore
	case "22", // data exception
		"23", // integrity constraint violation; request id conflicts are DO NOTHING
		"42": // syntax error or access rule: a schema this server does not know
		return faultRecord
	}
	return faultUnknown
}
