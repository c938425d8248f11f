package resolver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/tollgate/tollgate/internal/store"
)

// KeyUse is what a database already holds under a master key, read without
// the key.
type KeyUse struct {
	// KeyID names the master key the database was written with; empty
	// when no key was ever recorded.
	KeyID string
	// Credentials counts the encrypted credentials.
	Credentials int
}

// StoredKeyUse reports which master key db was written with and how many
// credentials it encrypts, so a caller can refuse to invent a new key for a
// database whose key was lost: with a new key every secret in it is
// unreadable and every issued token is invalid.
func StoredKeyUse(ctx context.Context, db *store.DB) (KeyUse, error) {
	var u KeyUse
	if err := db.Migrate(ctx, "resolver", migrations); err != nil {
		return u, err
	}
	err := db.QueryRowContext(ctx, `SELECT value FROM resolver_meta WHERE name = 'key_id'`).Scan(&u.KeyID)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return u, fmt.Errorf("read key id: %w", err)
	}
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM resolver_credentials`).Scan(&u.Credentials); err != nil {
		return u, fmt.Errorf("count credentials: %w", err)
	}
	return u, nil
}

// WellFormedToken says whether t has the form of a workspace token, so a
// caller without the database can refuse a typo or another system's token.
func WellFormedToken(t string) bool { return wellFormed(t) }
