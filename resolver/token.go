package resolver

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// TokenPrefix starts every workspace-scoped token, so secret scanners and
// people recognise one.
const TokenPrefix = "tgw_"

const (
	// tokenRandomBytes is the token's entropy: 256 bits.
	tokenRandomBytes = 32
	// tokenLen is the full token length: prefix plus unpadded base64url.
	tokenLen = len(TokenPrefix) + (tokenRandomBytes*8+5)/6
	// displayPrefixLen is how much of a token listings show: the prefix
	// and four characters, enough to tell tokens apart, far too little to
	// guess one.
	displayPrefixLen = 8
	// DefaultTokenTTL is a token's lifetime when TokenSpec.TTL is zero: a
	// working day, like SAM's workspace tokens.
	DefaultTokenTTL = 24 * time.Hour
	// MaxTokenTTL bounds a token's lifetime, so a leaked token dies.
	MaxTokenTTL = 30 * 24 * time.Hour
)

// TokenSpec describes a token to issue.
type TokenSpec struct {
	// Workspace the token is for. Required.
	Workspace string
	// Project the workspace belongs to; empty skips the project tier.
	Project string
	// User who owns the workspace. Required.
	User string
	// Harness optionally ties the token to one harness of the registry.
	Harness string
	// TTL is the token's lifetime: DefaultTokenTTL when zero, at most
	// MaxTokenTTL.
	TTL time.Duration
}

// TokenInfo describes an issued token. It never holds the token itself.
type TokenInfo struct {
	ID        string `json:"id"`
	Workspace string `json:"workspace"`
	Project   string `json:"project,omitempty"`
	User      string `json:"user"`
	Harness   string `json:"harness,omitempty"`
	// Prefix is the token's first characters, for telling tokens apart.
	Prefix    string    `json:"prefix"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// RevokedAt is zero unless the token was revoked.
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	// LastUsedAt is zero until the token is first used. It includes uses
	// not yet flushed to the database by this process.
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
}

// TokenRefusedError is Authenticate's error for a token that exists but may
// not be used: Err is ErrTokenRevoked or ErrTokenExpired. It names the
// token and its workspace so the refusal stays traceable; Authenticate
// still returns no Identity, so nothing can act on the caller's behalf.
type TokenRefusedError struct {
	TokenID, Workspace string
	Err                error
}

func (e *TokenRefusedError) Error() string { return e.Err.Error() }
func (e *TokenRefusedError) Unwrap() error { return e.Err }

// Identity is who is calling, as established by a token.
type Identity struct {
	TokenID   string
	Workspace string
	Project   string
	User      string
	Harness   string
}

// TokenFilter narrows ListTokens; empty fields match everything.
type TokenFilter struct {
	Workspace string
	Project   string
	User      string
	// IncludeRevoked lists revoked tokens too.
	IncludeRevoked bool
}

// tokenQuery reads a token's row by its HMAC.
const tokenQuery = `SELECT id, workspace, project, user_id, harness, expires_at, revoked_at
	FROM resolver_tokens WHERE hash = $1`

// tokenEntry is a cached Authenticate answer.
type tokenEntry struct {
	gen     uint64
	until   time.Time // the entry's own deadline, on the injectable clock
	id      Identity
	expires time.Time
	err     error // nil for an accepted token
	// refreshing is set while a background refresh of this entry runs
	// (dueForRefresh); the rest of the entry is immutable once cached.
	refreshing atomic.Bool
}

// CheckTokenSpec reports every problem IssueToken would refuse spec for,
// so a caller can check before doing work that must not follow a refusal.
func (s *Service) CheckTokenSpec(spec TokenSpec) error {
	var p argProblems
	if spec.Workspace == "" {
		p.addf("workspace is required")
	}
	if spec.User == "" {
		p.addf("user is required")
	}
	if spec.TTL < 0 || spec.TTL > MaxTokenTTL {
		p.addf("ttl %s is not in (0, %s]", spec.TTL, MaxTokenTTL)
	}
	if spec.Harness != "" {
		p.checkHarness(s.reg.Current(), spec.Harness)
	}
	return p.err()
}

// IssueToken creates a token for spec. The token is returned once and
// stored only as an HMAC-SHA256 under a key derived from the master key.
func (s *Service) IssueToken(ctx context.Context, spec TokenSpec) (string, TokenInfo, error) {
	if err := s.CheckTokenSpec(spec); err != nil {
		return "", TokenInfo{}, fmt.Errorf("issue token: %w", err)
	}
	ttl := spec.TTL
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	var raw [tokenRandomBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", TokenInfo{}, fmt.Errorf("issue token: %w", err)
	}
	token := TokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	mac := s.keys.Load().current.mac.sum(token)
	id, err := newID("tok_")
	if err != nil {
		return "", TokenInfo{}, fmt.Errorf("issue token: %w", err)
	}
	now := s.now()
	info := TokenInfo{
		ID: id, Workspace: spec.Workspace, Project: spec.Project, User: spec.User, Harness: spec.Harness,
		Prefix: token[:displayPrefixLen], CreatedAt: now, ExpiresAt: now.Add(ttl),
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO resolver_tokens
		(id, hash, display_prefix, workspace, project, user_id, harness, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		info.ID, hex.EncodeToString(mac[:]), info.Prefix, info.Workspace, info.Project, info.User, info.Harness, info.CreatedAt, info.ExpiresAt)
	if err != nil {
		return "", TokenInfo{}, fmt.Errorf("issue token: %w", err)
	}
	return token, info, nil
}

// wellFormed checks the token's shape without allocating.
func wellFormed(t string) bool {
	if len(t) != tokenLen || !strings.HasPrefix(t, TokenPrefix) {
		return false
	}
	for i := len(TokenPrefix); i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Authenticate returns the identity token stands for. It returns
// ErrTokenMissing for an empty token, ErrTokenInvalid for a malformed or
// unknown one, ErrTokenExpired and ErrTokenRevoked, and, while Start runs,
// ErrUnavailable when this process cannot vouch for its view (see
// Config.MaxStaleness) or a cache miss cannot reach the database. Answers
// are cached by the token's HMAC (never the token): accepted tokens for
// Config.TokenCacheTTL (with Start, until a change names them; expiry is
// still checked on every call), refusals for Config.NegativeTTL. With
// Start, an expired entry whose refresh cannot reach the database is
// served while within the bound. A revocation through this Service applies
// at once. The cached path does not allocate or touch the database: the
// last-used time is kept in memory and flushed in batches.
func (s *Service) Authenticate(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, ErrTokenMissing
	}
	if !wellFormed(token) {
		return Identity{}, ErrTokenInvalid
	}
	now := s.now()
	if err := s.checkFresh(ctx, now); err != nil {
		return Identity{}, fmt.Errorf("authenticate: %w", err)
	}
	kr := s.keys.Load()
	mac := kr.current.mac.sum(token)
	var stale *tokenEntry
	if e, ok := s.tokens.Get(mac); ok {
		if now.Before(e.until) {
			if s.dueForRefresh(e.until, now, &e.refreshing) {
				// The token may be a view into a reused request buffer.
				go s.refreshToken(e, kr, strings.Clone(token), mac)
			}
			return s.accept(e, now)
		}
		stale = e
	}
	if e, ok := s.tokensNeg.Get(mac); ok {
		if now.Before(e.until) {
			return Identity{}, e.err
		}
		stale = e
	}
	e, err := s.tokenMiss(ctx, kr, token, mac, now)
	if err != nil {
		if stale == nil || !s.serveStale(err) {
			return Identity{}, fmt.Errorf("authenticate: %w", err)
		}
		e = stale
	}
	if e.err != nil {
		return Identity{}, e.err
	}
	return s.accept(e, now)
}

// tokenMiss answers a cache miss from the database and caches the answer.
// Apart from Authenticate so that the cached path allocates nothing.
func (s *Service) tokenMiss(ctx context.Context, kr *keyring, token string, mac [32]byte, now time.Time) (*tokenEntry, error) {
	// The gen is part of the flight's key: a caller that arrives after an
	// invalidation must not join a read that began before it.
	gen := s.tokGen.Load()
	v, err := s.miss(ctx, "tok:"+strconv.FormatUint(gen, 10)+":"+string(mac[:]), func(ctx context.Context) (any, error) {
		e, err := s.lookupToken(ctx, kr, token, mac, now)
		if err != nil {
			return nil, err
		}
		if s.hookBeforeCache != nil {
			s.hookBeforeCache()
		}
		e.gen = gen
		if e.err != nil {
			e.until = now.Add(s.cfg.NegativeTTL)
			s.cacheToken(s.tokensNeg, mac, e)
		} else {
			e.until = now.Add(s.positiveTTL(s.cfg.TokenCacheTTL))
			s.cacheToken(s.tokens, mac, e)
		}
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tokenEntry), nil
}

// refreshToken renews a hot entry before its deadline (dueForRefresh).
func (s *Service) refreshToken(e *tokenEntry, kr *keyring, token string, mac [32]byte) {
	if _, err := s.tokenMiss(context.Background(), kr, token, mac, s.now()); err != nil {
		e.refreshing.Store(false)
	}
}

func (s *Service) accept(e *tokenEntry, now time.Time) (Identity, error) {
	if !now.Before(e.expires) {
		return Identity{}, &TokenRefusedError{TokenID: e.id.TokenID, Workspace: e.id.Workspace, Err: ErrTokenExpired}
	}
	s.usage.markToken(e.id.TokenID, now)
	return e.id, nil
}

// lookupToken reads the token's row. A token issued under a previous
// master key is found by that key's HMAC and re-hashed under the current
// one, so a rotation does not log every workspace out.
func (s *Service) lookupToken(ctx context.Context, kr *keyring, token string, mac [32]byte, now time.Time) (*tokenEntry, error) {
	for _, k := range kr.all {
		m := mac
		if k != kr.current {
			m = k.mac.sum(token)
		}
		hash := hex.EncodeToString(m[:])
		e := &tokenEntry{}
		var revoked sql.NullTime
		err := s.stmtToken.QueryRowContext(ctx, hash).
			Scan(&e.id.TokenID, &e.id.Workspace, &e.id.Project, &e.id.User, &e.id.Harness, &e.expires, &revoked)
		if isNoRows(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if k != kr.current {
			if _, err := s.db.ExecContext(ctx, `UPDATE resolver_tokens SET hash = $1 WHERE id = $2`, hex.EncodeToString(mac[:]), e.id.TokenID); err != nil {
				s.log.Warn("re-hashing a token under the current master key failed", "token_id", e.id.TokenID, "err", err)
			}
		}
		switch {
		case revoked.Valid:
			e.err = &TokenRefusedError{TokenID: e.id.TokenID, Workspace: e.id.Workspace, Err: ErrTokenRevoked}
		case !now.Before(e.expires):
			e.err = &TokenRefusedError{TokenID: e.id.TokenID, Workspace: e.id.Workspace, Err: ErrTokenExpired}
		}
		return e, nil
	}
	return &tokenEntry{err: ErrTokenInvalid}, nil
}

// RevokeToken revokes the token with id, in every process: at once here,
// within Config.PollInterval elsewhere. Revoking a revoked token is a no-op;
// an unknown id gives ErrTokenNotFound.
func (s *Service) RevokeToken(ctx context.Context, id string) error {
	err := s.write(ctx, change{changeToken, id}, func(tx *sql.Tx) error {
		var revoked sql.NullTime
		if err := tx.QueryRowContext(ctx, `SELECT revoked_at FROM resolver_tokens WHERE id = $1`, id).Scan(&revoked); err != nil {
			if isNoRows(err) {
				return ErrTokenNotFound
			}
			return err
		}
		if revoked.Valid {
			return nil
		}
		_, err := tx.ExecContext(ctx, `UPDATE resolver_tokens SET revoked_at = $1 WHERE id = $2`, s.now(), id)
		return err
	})
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	return nil
}

// RevokeWorkspaceTokens revokes every live token of workspace (a stopped
// workspace gets 401) and returns how many it revoked.
func (s *Service) RevokeWorkspaceTokens(ctx context.Context, workspace string) (int, error) {
	if workspace == "" {
		return 0, fmt.Errorf("revoke tokens: %w: workspace is required", ErrInvalidArgument)
	}
	var n int64
	err := s.write(ctx, change{changeWorkspace, workspace}, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE resolver_tokens SET revoked_at = $1 WHERE workspace = $2 AND revoked_at IS NULL`, s.now(), workspace)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("revoke tokens of workspace %q: %w", workspace, err)
	}
	return int(n), nil
}

// ListTokens lists tokens matching f, newest first. It never returns a
// token, only its display prefix.
func (s *Service) ListTokens(ctx context.Context, f TokenFilter) ([]TokenInfo, error) {
	q := `SELECT id, workspace, project, user_id, harness, display_prefix, created_at, expires_at, revoked_at, last_used_at
		FROM resolver_tokens WHERE 1 = 1`
	var args []any
	add := func(col, v string) {
		if v != "" {
			args = append(args, v)
			q += fmt.Sprintf(" AND %s = $%d", col, len(args))
		}
	}
	add("workspace", f.Workspace)
	add("project", f.Project)
	add("user_id", f.User)
	if !f.IncludeRevoked {
		q += " AND revoked_at IS NULL"
	}
	q += " ORDER BY created_at DESC, id"
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	var out []TokenInfo
	for rows.Next() {
		var t TokenInfo
		var revoked, used sql.NullTime
		if err := rows.Scan(&t.ID, &t.Workspace, &t.Project, &t.User, &t.Harness, &t.Prefix, &t.CreatedAt, &t.ExpiresAt, &revoked, &used); err != nil {
			return nil, fmt.Errorf("list tokens: %w", err)
		}
		t.CreatedAt, t.ExpiresAt = t.CreatedAt.UTC(), t.ExpiresAt.UTC()
		if revoked.Valid {
			t.RevokedAt = revoked.Time.UTC()
		}
		if used.Valid {
			t.LastUsedAt = used.Time.UTC()
		}
		if p, ok := s.usage.pendingToken(t.ID); ok && p.After(t.LastUsedAt) {
			t.LastUsedAt = p
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return out, nil
}

// newID returns prefix followed by 16 random hex digits.
func newID(prefix string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return prefix + hex.EncodeToString(b[:]), nil
}
