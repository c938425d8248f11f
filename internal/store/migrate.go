package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// MigrateLockKey is the PostgreSQL advisory lock every tollgate holds while
// it changes the schema: the first 8 bytes of SHA-256("tollgate/migrate")
// read as a big-endian int64 (0x1f7a037095594f06). One key for every
// component, scoped by PostgreSQL to the current database. pg_locks shows
// it as locktype 'advisory', classid 528089968, objid 2505658118, objsubid 1.
const MigrateLockKey int64 = 2268129144411344646

const (
	// migrateTimeout bounds a whole Migrate call, waiting for peers
	// included: a replica that cannot migrate fails its start with the
	// lock's holder named rather than hanging.
	migrateTimeout = 2 * time.Minute
	// migrateLockTimeout bounds each wait of a migration's DDL for a table
	// lock. Waiting longer for ACCESS EXCLUSIVE behind a long query would
	// queue every later query on that table and stall the proxy; the
	// migration is retried instead.
	migrateLockTimeout = "5s"
)

// ErrSchemaNewer is the error (errors.Is) of a database whose schema for a
// component is at a version this binary does not know: a newer tollgate
// migrated it. Running on would read and write tables in a shape this
// binary was not written for.
var ErrSchemaNewer = errors.New("database schema is newer than this tollgate")

type schemaNewerError struct {
	component  string
	have, know int
}

func (e *schemaNewerError) Error() string {
	return fmt.Sprintf("database schema for component %s is at version %d, this tollgate knows %d: "+
		"run the newer tollgate, or restore the database from a backup taken before the upgrade", e.component, e.have, e.know)
}

func (e *schemaNewerError) Is(target error) bool { return target == ErrSchemaNewer }

// Migrate applies, in order, the migrations of component not yet applied.
// Each migration is one or more statements separated by ";\n" and runs in
// its own transaction. Versions are the 1-based index in migrations, so a
// migration must never be edited or reordered once released: append.
//
// Several processes may migrate one database at once (replicas started
// together, a CLI beside a server). On PostgreSQL each migration
// transaction takes the advisory lock MigrateLockKey and re-reads the
// version under it; on SQLite the transaction's BEGIN IMMEDIATE is the
// lock. A schema already current returns without taking any lock, and
// one newer than migrations fails with ErrSchemaNewer.
func (db *DB) Migrate(ctx context.Context, component string, migrations []string) error {
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	err := db.migrate(ctx, component, migrations)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && db.Engine == Postgres {
		err = fmt.Errorf("%w; %s", err, db.migrateLockHolders())
	}
	return err
}

func (db *DB) migrate(ctx context.Context, component string, migrations []string) error {
	have, exists, err := db.schemaVersion(ctx, db, component)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", component, err)
	}
	if err := checkNotNewer(component, have, migrations); err != nil {
		return err
	}
	if have == len(migrations) {
		return nil
	}
	if !exists {
		if err := db.retryMigration(ctx, func() (bool, error) { return db.bootstrap(ctx) }); err != nil {
			return fmt.Errorf("migrate %s: create schema_migrations: %w", component, err)
		}
	}
	for v := have + 1; v <= len(migrations); v++ {
		err := db.retryMigration(ctx, func() (bool, error) { return db.applyMigration(ctx, component, v, migrations) })
		if err != nil {
			if errors.Is(err, ErrSchemaNewer) {
				return err
			}
			return fmt.Errorf("migrate %s v%d: %w", component, v, err)
		}
	}
	return nil
}

func checkNotNewer(component string, have int, migrations []string) error {
	if have > len(migrations) {
		return &schemaNewerError{component: component, have: have, know: len(migrations)}
	}
	return nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// schemaVersion is component's applied version, and whether
// schema_migrations exists (the version is 0 when it does not).
func (db *DB) schemaVersion(ctx context.Context, q querier, component string) (have int, exists bool, err error) {
	if db.Engine == SQLite {
		var tables int
		if err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&tables); err != nil {
			return 0, false, err
		}
		if tables == 0 {
			return 0, false, nil
		}
	}
	err = q.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = $1`, component).Scan(&have)
	if pgCode(err) == "42P01" { // undefined_table: nothing migrated yet
		return 0, false, nil
	}
	return have, err == nil, err
}

// beginLocked begins a transaction holding the migration lock until it
// ends. On SQLite, BEGIN IMMEDIATE (_txlock=immediate in Open) already
// holds the write lock.
func (db *DB) beginLocked(ctx context.Context) (*sql.Tx, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil || db.Engine != Postgres {
		return tx, err
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, MigrateLockKey); err != nil {
		tx.Rollback()
		return nil, err
	}
	return tx, nil
}

// bootstrap creates schema_migrations under the lock. It reports whether
// it lost a race to a peer that takes no lock.
func (db *DB) bootstrap(ctx context.Context) (bool, error) {
	tx, err := db.beginLocked(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		component TEXT NOT NULL,
		version INTEGER NOT NULL,
		applied_at TIMESTAMP NOT NULL,
		PRIMARY KEY (component, version))`); err != nil {
		return racedPeer(err), err
	}
	err = tx.Commit()
	return racedPeer(err), err
}

// applyMigration applies migration v of component in one transaction,
// unless a peer applied it while this process waited for the lock. The
// transaction stays READ COMMITTED: each statement then sees what peers
// committed before the lock was granted, which REPEATABLE READ (a snapshot
// taken by the lock statement itself, before the wait) would not.
// It reports whether a failure is a race lost to a peer that takes no lock.
func (db *DB) applyMigration(ctx context.Context, component string, v int, migrations []string) (bool, error) {
	tx, err := db.beginLocked(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	have, _, err := db.schemaVersion(ctx, tx, component)
	if err != nil {
		return false, err
	}
	if err := checkNotNewer(component, have, migrations); err != nil {
		return false, err
	}
	if have >= v {
		return false, nil // a peer applied it while we waited
	}
	if db.Engine == Postgres {
		if _, err := tx.ExecContext(ctx, `SET LOCAL lock_timeout = '`+migrateLockTimeout+`'`); err != nil {
			return false, err
		}
	}
	for _, stmt := range strings.Split(migrations[v-1], ";\n") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return racedPeer(err), err
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (component, version, applied_at) VALUES ($1, $2, $3)`, component, v, time.Now().UTC()); err != nil {
		return racedPeer(err), err
	}
	if err := tx.Commit(); err != nil {
		return racedPeer(err), err
	}
	return false, nil
}

// retryMigration runs step until it succeeds, retrying a lock that timed
// out (55P03 on PostgreSQL, SQLITE_BUSY past the busy timeout) and, once, a
// catalog race with a peer that takes no lock (a tollgate from before the
// lock): the step re-reads the version and skips what the peer applied.
// It gives up when ctx ends.
func (db *DB) retryMigration(ctx context.Context, step func() (raced bool, err error)) error {
	delay := 50 * time.Millisecond
	races := 0
	for {
		raced, err := step()
		if err == nil {
			return nil
		}
		switch {
		case raced && races == 0:
			races++
			continue
		case !lockUnavailable(err):
			return err
		}
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		}
		delay = min(2*delay, time.Second)
	}
}

// racedPeer says err is what a concurrent creator of the same object
// causes: the catalog's unique index (23505, also the version row's
// primary key), or an object that exists: a relation (42P07), a column
// (42701), a schema (42P06), a function (42723) or another object (42710).
// SQLite cannot race this way: its write lock is taken at BEGIN.
func racedPeer(err error) bool {
	switch pgCode(err) {
	case "23505", "42P07", "42701", "42P06", "42723", "42710":
		return true
	}
	return false
}

func lockUnavailable(err error) bool {
	if pgCode(err) == "55P03" {
		return true
	}
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// migrateLockHolders names the sessions holding MigrateLockKey, for the
// error of a Migrate that timed out waiting for it. It runs on a fresh
// short context: the caller's has expired.
func (db *DB) migrateLockHolders() string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, `SELECT a.pid, COALESCE(a.application_name, ''), COALESCE(a.state, ''),
			COALESCE(EXTRACT(EPOCH FROM now() - a.xact_start), 0)
		FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
			AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND l.classid::bigint = $1 AND l.objid::bigint = $2`,
		MigrateLockKey>>32&0xffffffff, MigrateLockKey&0xffffffff)
	if err != nil {
		return fmt.Sprintf("could not list the holders of migration lock %d: %v", MigrateLockKey, err)
	}
	defer rows.Close()
	var held []string
	for rows.Next() {
		var pid int
		var app, state string
		var secs float64
		if err := rows.Scan(&pid, &app, &state, &secs); err != nil {
			return fmt.Sprintf("could not list the holders of migration lock %d: %v", MigrateLockKey, err)
		}
		held = append(held, fmt.Sprintf("pid %d (application_name %q, state %q, transaction open %.0fs)", pid, app, state, secs))
	}
	if err := rows.Err(); err != nil {
		return fmt.Sprintf("could not list the holders of migration lock %d: %v", MigrateLockKey, err)
	}
	if len(held) == 0 {
		return fmt.Sprintf("no session holds migration lock %d now (a table lock of a migration, or a tollgate without the lock, may be the wait)", MigrateLockKey)
	}
	return fmt.Sprintf("migration lock %d is held by %s", MigrateLockKey, strings.Join(held, ", "))
}
