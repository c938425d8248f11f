// Package audit keeps the audit log: one durable entry per administrative
// write (a token issued or revoked, a credential created or changed, a
// binding or a policy changed), made through the admin API, the CLI or the
// console, naming who made it, from where, when, and what changed. An
// entry never holds a secret: Append scrubs every string it is given
// (scrub.go), whatever the caller passed.
//
// The writes it records are made by the resolver and governance, whose
// transactions are their own, so an entry is appended right after the
// write has committed: a crash in between loses the entry, never invents
// one for a write that did not happen. AppendTx is there for a write whose
// transaction the caller holds.
package audit

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// Actor kinds: who made a write.
const (
	// KindAPI is the admin API; the actor id is the admin token's Fingerprint.
	KindAPI = "api"
	// KindCLI is the tollgate CLI; the actor id is the OS user.
	KindCLI = "cli"
	// KindConsole is the web console; the actor id is a prefix of its
	// session id.
	KindConsole = "console"
	// KindUnknown marks a write whose context named no actor: it is
	// recorded all the same, so a missed hook shows rather than hides.
	KindUnknown = "unknown"
)

// SourceCLI is the source of every CLI entry: it has no remote address.
const SourceCLI = "cli"

// Actor is who made a write.
type Actor struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

// Entry is one recorded write.
type Entry struct {
	ID    string    `json:"id"`
	At    time.Time `json:"at"`
	Actor Actor     `json:"actor"`
	// Source is the client's address for the API and the console, SourceCLI
	// for the CLI.
	Source string `json:"source"`
	// Action is noun.verb: token.issue, credential.create, binding.bind...
	Action string `json:"action"`
	// Target is the id of what was written: a token, credential or policy
	// id, or a binding's key as BindingTarget renders it.
	Target string `json:"target"`
	// Change holds the fields the write set, never a secret.
	Change map[string]any `json:"change"`
}

// Fingerprint names a bearer secret without revealing it: the first 8 hex
// characters of its SHA-256, enough to tell two admin tokens apart.
func Fingerprint(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:4])
}

// migrations are the audit log's tables, applied under the component
// "audit". Append only. at_us is microseconds since the epoch: an integer
// sorts and compares alike on both engines, where a TIMESTAMP stored as
// text by SQLite does not once fractions differ in length.
var migrations = []string{
	`CREATE TABLE audit_log (
		id TEXT PRIMARY KEY,
		at_us BIGINT NOT NULL,
		actor_kind TEXT NOT NULL,
		actor_id TEXT NOT NULL,
		source TEXT NOT NULL,
		action TEXT NOT NULL,
		target TEXT NOT NULL,
		change_json TEXT NOT NULL);
CREATE INDEX audit_log_at ON audit_log (at_us, id);
CREATE INDEX audit_log_target ON audit_log (target, at_us)`,
}

// Log is the audit log in the SQL database.
type Log struct {
	db  *store.DB
	now func() time.Time
	// batch and pass, when set, replace pruneBatch and prunePass (tests).
	batch, pass int
}

// Open applies the audit log's migrations to db.
func Open(ctx context.Context, db *store.DB) (*Log, error) {
	if err := db.Migrate(ctx, "audit", migrations); err != nil {
		return nil, err
	}
	return &Log{db: db, now: time.Now}, nil
}

type ctxKey struct{}

type who struct {
	actor  Actor
	source string
}

// WithActor returns ctx carrying the actor and source Record attributes
// its writes to. The admin API, the CLI and the console each set theirs
// once, where they know the caller.
func WithActor(ctx context.Context, a Actor, source string) context.Context {
	return context.WithValue(ctx, ctxKey{}, who{actor: a, source: source})
}

// ActorFrom is the actor and source WithActor put in ctx.
func ActorFrom(ctx context.Context) (Actor, string, bool) {
	w, ok := ctx.Value(ctxKey{}).(who)
	return w.actor, w.source, ok
}

// Record appends an entry for action on target by ctx's actor. secrets are
// values the write handled (a key, a token): any string of the entry that
// holds one, in any common encoding, is redacted, on top of the scrubbing
// every entry gets.
func (l *Log) Record(ctx context.Context, action, target string, change map[string]any, secrets ...string) error {
	a, src, ok := ActorFrom(ctx)
	if !ok {
		a = Actor{Kind: KindUnknown}
	}
	return l.Append(ctx, Entry{Actor: a, Source: src, Action: action, Target: target, Change: change}, secrets...)
}

// Append stores e in its own statement. A zero ID or At is filled in.
func (l *Log) Append(ctx context.Context, e Entry, secrets ...string) error {
	return l.append(ctx, l.db, e, secrets)
}

// AppendTx stores e in tx, so the entry commits with the write or not at all.
func (l *Log) AppendTx(ctx context.Context, tx *sql.Tx, e Entry, secrets ...string) error {
	return l.append(ctx, tx, e, secrets)
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (l *Log) append(ctx context.Context, ex execer, e Entry, secrets []string) error {
	if e.Action == "" {
		return errors.New("audit: an entry needs an action")
	}
	e = scrubEntry(e, secrets)
	if e.ID == "" {
		e.ID = newID()
	}
	if e.At.IsZero() {
		e.At = l.now()
	}
	change := e.Change
	if change == nil {
		change = map[string]any{}
	}
	js, err := json.Marshal(change)
	if err != nil {
		return fmt.Errorf("audit: change of %s: %w", e.Action, err)
	}
	_, err = ex.ExecContext(ctx, `INSERT INTO audit_log (id, at_us, actor_kind, actor_id, source, action, target, change_json)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		e.ID, e.At.UnixMicro(), e.Actor.Kind, e.Actor.ID, e.Source, e.Action, e.Target, string(js))
	if err != nil {
		return fmt.Errorf("audit: append %s: %w", e.Action, err)
	}
	return nil
}

// newID returns "aud_" and 16 random lower-case base32 characters.
func newID() string {
	var b [10]byte
	rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return "aud_" + strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}

// BindingTarget renders a binding's key as an entry's target:
// "platform/DIALECT", "project:P/DIALECT" or "user:U/DIALECT", with
// "/HARNESS" when the binding is narrowed to one harness.
func BindingTarget(tier, scopeID, dialect, harness string) string {
	t := tier
	if scopeID != "" {
		t += ":" + scopeID
	}
	t += "/" + dialect
	if harness != "" {
		t += "/" + harness
	}
	return t
}
