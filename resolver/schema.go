package resolver

import (
	"database/sql"
	"errors"
	"time"
)

// migrations are the resolver's tables, applied by store.Migrate under the
// component "resolver". Append only; never edit a released entry. The SQL
// is portable: it runs unchanged on SQLite and PostgreSQL ("user" is a
// PostgreSQL keyword, hence user_id; ciphertext is base64 TEXT, not a
// BLOB/BYTEA split). There is no foreign key from bindings to credentials:
// DeleteCredential keeps the bindings, deactivated, so an administrator
// sees what lost its key.
var migrations = []string{
	`CREATE TABLE resolver_meta (
		name TEXT PRIMARY KEY,
		value TEXT NOT NULL);
CREATE TABLE resolver_credentials (
		id TEXT PRIMARY KEY,
		name TEXT NOT NULL,
		provider TEXT NOT NULL,
		kind TEXT NOT NULL,
		base_url TEXT NOT NULL,
		key_id TEXT NOT NULL,
		ciphertext TEXT NOT NULL,
		last4 TEXT NOT NULL,
		disabled BOOLEAN NOT NULL,
		created_at TIMESTAMP NOT NULL,
		updated_at TIMESTAMP NOT NULL,
		last_used_at TIMESTAMP);
CREATE TABLE resolver_bindings (
		tier TEXT NOT NULL,
		scope_id TEXT NOT NULL,
		dialect TEXT NOT NULL,
		harness TEXT NOT NULL,
		credential_id TEXT NOT NULL,
		active BOOLEAN NOT NULL,
		created_at TIMESTAMP NOT NULL,
		updated_at TIMESTAMP NOT NULL,
		PRIMARY KEY (tier, scope_id, dialect, harness));
CREATE INDEX resolver_bindings_credential ON resolver_bindings (credential_id);
CREATE TABLE resolver_tokens (
		id TEXT PRIMARY KEY,
		hash TEXT NOT NULL UNIQUE,
		display_prefix TEXT NOT NULL,
		workspace TEXT NOT NULL,
		project TEXT NOT NULL,
		user_id TEXT NOT NULL,
		harness TEXT NOT NULL,
		created_at TIMESTAMP NOT NULL,
		expires_at TIMESTAMP NOT NULL,
		revoked_at TIMESTAMP,
		last_used_at TIMESTAMP);
CREATE INDEX resolver_tokens_workspace ON resolver_tokens (workspace);
CREATE TABLE resolver_change_seq (
		id INTEGER PRIMARY KEY,
		seq BIGINT NOT NULL);
INSERT INTO resolver_change_seq (id, seq) VALUES (1, 0);
CREATE TABLE resolver_change_log (
		seq BIGINT PRIMARY KEY,
		kind TEXT NOT NULL,
		at TIMESTAMP NOT NULL)`,
	// What each change names (changelog.go change.scope), so pollers drop
	// only the cache entries it affects. Rows from before have none: all.
	`ALTER TABLE resolver_change_log ADD COLUMN scope TEXT NOT NULL DEFAULT ''`,
	// Several credentials per binding (failover, weighted spread). The
	// binding row keeps its first candidate, now with a priority and a
	// weight whose defaults make every older binding a single candidate at
	// priority 0, weight 1: no data migration. The further candidates are
	// rows of their own, position keeping the order they were given in.
	// Like bindings, they have no foreign key to credentials: a deleted
	// credential's row stays, so the binding shows what lost its key.
	`ALTER TABLE resolver_bindings ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE resolver_bindings ADD COLUMN weight INTEGER NOT NULL DEFAULT 1;
CREATE TABLE resolver_binding_candidates (
		tier TEXT NOT NULL,
		scope_id TEXT NOT NULL,
		dialect TEXT NOT NULL,
		harness TEXT NOT NULL,
		credential_id TEXT NOT NULL,
		priority INTEGER NOT NULL,
		weight INTEGER NOT NULL,
		position INTEGER NOT NULL,
		PRIMARY KEY (tier, scope_id, dialect, harness, credential_id));
CREATE INDEX resolver_binding_candidates_credential ON resolver_binding_candidates (credential_id)`,
}

// now is the injectable clock, in UTC and truncated to the microsecond so
// a time read back from PostgreSQL equals the one written.
func (s *Service) now() time.Time {
	return s.cfg.timeNow().UTC().Truncate(time.Microsecond)
}

// isNoRows reports a lookup that found nothing, before the caller maps it
// to its own sentinel.
func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
