package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// Sessions live in the database, not in signed cookies: a load balancer
// may send each request of a browser to another replica, and sign-out
// (or an expiry) must end the session on all of them at once. A signed
// cookie would need a revocation list in the database anyway, read on
// every request, so the row itself is the simpler truth. The row holds
// SHA-256 of the session id, never the id: a database dump signs nobody in.
// Times are Unix seconds (BIGINT), identical on SQLite and PostgreSQL.
var migrations = []string{
	`CREATE TABLE console_sessions (
		id_hash TEXT PRIMARY KEY,
		admin_fp TEXT NOT NULL,
		created_at BIGINT NOT NULL,
		seen_at BIGINT NOT NULL);
CREATE INDEX console_sessions_seen ON console_sessions (seen_at)`,
}

// Session lifetimes.
const (
	// DefaultIdleTimeout ends a session nobody used for a working day's
	// pause; DefaultMaxAge ends any session, used or not.
	DefaultIdleTimeout = 8 * time.Hour
	DefaultMaxAge      = 12 * time.Hour
	// touchEvery bounds the writes a busy session costs: its seen time is
	// refreshed at most this often, so idle expiry is exact to it.
	touchEvery = time.Minute
	// sessionIDBytes of randomness: unguessable, as a bearer token is.
	sessionIDBytes = 32
)

var errNoSession = errors.New("no session")

// session is a signed-in browser. id is the cookie's value; csrf is the
// token its forms carry, derived from id so no replica needs to store it.
type session struct {
	id   string
	csrf string
}

type sessions struct {
	db   *store.DB
	idle time.Duration
	max  time.Duration
}

func openSessions(ctx context.Context, db *store.DB, idle, max time.Duration) (*sessions, error) {
	if err := db.Migrate(ctx, "console", migrations); err != nil {
		return nil, fmt.Errorf("console sessions: %w", err)
	}
	return &sessions{db: db, idle: idle, max: max}, nil
}

func hashID(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:])
}

// adminFingerprint ties a session to the admin token it was opened with,
// salted by the session id: rotating TOLLGATE_ADMIN_TOKEN signs every
// browser out, and the stored value helps no offline guess at the token.
func adminFingerprint(id, adminToken string) string {
	h := sha256.New()
	h.Write([]byte("tollgate/console/admin\x00"))
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(adminToken))
	return hex.EncodeToString(h.Sum(nil))
}

func csrfToken(id string) string {
	h := sha256.Sum256([]byte("tollgate/console/csrf\x00" + id))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// fingerprint names the session in logs (and, later, the audit log): a
// prefix of the stored hash, which no one can sign in with.
func (s session) fingerprint() string { return hashID(s.id)[:12] }

func newSession(id string) session { return session{id: id, csrf: csrfToken(id)} }

// create opens a session and deletes the expired ones, so the table holds
// only live sessions without a sweeper of its own.
func (s *sessions) create(ctx context.Context, adminToken string, now time.Time) (session, error) {
	b := make([]byte, sessionIDBytes)
	if _, err := rand.Read(b); err != nil {
		return session{}, err
	}
	id := base64.RawURLEncoding.EncodeToString(b)
	if _, err := s.db.ExecContext(ctx, `DELETE FROM console_sessions WHERE seen_at < $1 OR created_at < $2`,
		now.Add(-s.idle).Unix(), now.Add(-s.max).Unix()); err != nil {
		return session{}, fmt.Errorf("console sessions: %w", err)
	}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO console_sessions (id_hash, admin_fp, created_at, seen_at) VALUES ($1, $2, $3, $3)`,
		hashID(id), adminFingerprint(id, adminToken), now.Unix()); err != nil {
		return session{}, fmt.Errorf("console sessions: %w", err)
	}
	return newSession(id), nil
}

// check returns the live session of id, refreshing its idle clock; an
// expired one, or one opened under another admin token, is deleted.
func (s *sessions) check(ctx context.Context, id, adminToken string, now time.Time) (session, error) {
	if id == "" {
		return session{}, errNoSession
	}
	var fp string
	var created, seen int64
	err := s.db.QueryRowContext(ctx, `SELECT admin_fp, created_at, seen_at FROM console_sessions WHERE id_hash = $1`, hashID(id)).Scan(&fp, &created, &seen)
	if errors.Is(err, sql.ErrNoRows) {
		return session{}, errNoSession
	}
	if err != nil {
		return session{}, fmt.Errorf("console sessions: %w", err)
	}
	if now.Sub(time.Unix(seen, 0)) > s.idle || now.Sub(time.Unix(created, 0)) > s.max ||
		subtle.ConstantTimeCompare([]byte(fp), []byte(adminFingerprint(id, adminToken))) != 1 {
		_ = s.delete(ctx, id)
		return session{}, errNoSession
	}
	if now.Sub(time.Unix(seen, 0)) >= touchEvery {
		if _, err := s.db.ExecContext(ctx, `UPDATE console_sessions SET seen_at = $1 WHERE id_hash = $2`, now.Unix(), hashID(id)); err != nil {
			return session{}, fmt.Errorf("console sessions: %w", err)
		}
	}
	return newSession(id), nil
}

func (s *sessions) delete(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM console_sessions WHERE id_hash = $1`, hashID(id))
	return err
}
