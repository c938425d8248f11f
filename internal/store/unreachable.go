package store

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
)

// Unreachable reports an error that says the database was not reached at
// all: no connection (refused, reset, lost, timed out), a login refused, or
// a PostgreSQL that is shutting down, starting or out of connection slots.
// A database that answers with an error of its own (a full disk, a
// constraint) is reachable. The resolver then serves from memory within its
// freshness bound and the usage writer probes instead of backing off; both
// decide from this one function. It matches types and codes, never message
// text.
func Unreachable(err error) bool {
	if err == nil {
		return false
	}
	// First: a refused login (NOLOGIN, SQLSTATE 28000) is a PgError
	// wrapped in a ConnectError.
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "57P01", "57P02", "57P03", "53300": // shutdown, crash shutdown, cannot connect now, too many connections
			return true
		}
		return strings.HasPrefix(pe.Code, "08") // connection exception
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return false // a local file: it answered
	}
	// Not any net.Error: a syscall.Errno is one too, ENOSPC included.
	var oe *net.OpError
	var ne net.Error
	return errors.As(err, &oe) || errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.ETIMEDOUT)
}
