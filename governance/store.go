package governance

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base32"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// NotifyChannel is the PostgreSQL channel a policy write notifies, so every
// replica reloads at once (the same propagation as token revocation).
const NotifyChannel = "tollgate_governance"

// policyMigrations are governance's policy tables, applied under the component
// "governance". Append only. The SQL runs unchanged on SQLite and
// PostgreSQL: "limit" and "window" are PostgreSQL keywords, hence
// limit_value and window_spec. gov_version is a one-row counter bumped by
// every write, so a poll reads one integer to know whether anything
// changed. The ledger's tables (counters, reservations) are its own.
var policyMigrations = []string{
	`CREATE TABLE gov_budgets (
		id TEXT PRIMARY KEY,
		scope_type TEXT NOT NULL,
		scope_id TEXT NOT NULL,
		model TEXT NOT NULL,
		harness TEXT NOT NULL,
		metric TEXT NOT NULL,
		limit_value BIGINT NOT NULL,
		window_spec TEXT NOT NULL,
		mode TEXT NOT NULL,
		unpriced TEXT NOT NULL,
		alert_thresholds TEXT NOT NULL,
		created_at TIMESTAMP NOT NULL,
		updated_at TIMESTAMP NOT NULL);
CREATE INDEX gov_budgets_scope ON gov_budgets (scope_type, scope_id);
CREATE TABLE gov_limits (
		id TEXT PRIMARY KEY,
		scope_type TEXT NOT NULL,
		scope_id TEXT NOT NULL,
		model TEXT NOT NULL,
		harness TEXT NOT NULL,
		rpm BIGINT NOT NULL,
		tpm BIGINT NOT NULL,
		concurrency BIGINT NOT NULL,
		mode TEXT NOT NULL,
		created_at TIMESTAMP NOT NULL,
		updated_at TIMESTAMP NOT NULL);
CREATE INDEX gov_limits_scope ON gov_limits (scope_type, scope_id);
CREATE TABLE gov_model_rules (
		id TEXT PRIMARY KEY,
		scope_type TEXT NOT NULL,
		scope_id TEXT NOT NULL,
		kind TEXT NOT NULL,
		pattern TEXT NOT NULL,
		target TEXT NOT NULL,
		created_at TIMESTAMP NOT NULL,
		updated_at TIMESTAMP NOT NULL);
CREATE INDEX gov_model_rules_scope ON gov_model_rules (scope_type, scope_id);
CREATE TABLE gov_version (
		id INTEGER PRIMARY KEY,
		version BIGINT NOT NULL);
INSERT INTO gov_version (id, version) VALUES (1, 0)`,
}

// Store keeps budgets, limits and model rules in the SQL database, shared by
// the admin API and the CLI (one implementation behind both).
type Store struct {
	db  *store.DB
	now func() time.Time
}

// OpenStore applies governance's policy migrations to db.
func OpenStore(ctx context.Context, db *store.DB) (*Store, error) {
	if err := db.Migrate(ctx, "governance", policyMigrations); err != nil {
		return nil, err
	}
	return &Store{db: db, now: time.Now}, nil
}

// Filter narrows a list: empty fields match everything.
type Filter struct {
	ScopeType ScopeType
	ScopeID   string
}

// where renders f as a WHERE clause over scope_type and scope_id.
func (f Filter) where() (string, []any) {
	q, args := " WHERE 1 = 1", []any(nil)
	if f.ScopeType != "" {
		args = append(args, string(f.ScopeType))
		q += " AND scope_type = $" + strconv.Itoa(len(args))
	}
	if f.ScopeID != "" {
		args = append(args, f.ScopeID)
		q += " AND scope_id = $" + strconv.Itoa(len(args))
	}
	return q + " ORDER BY id", args
}

// stamp is the store's clock in UTC, truncated to the microsecond so a
// time read back from PostgreSQL equals the one written.
func (s *Store) stamp() time.Time { return s.now().UTC().Truncate(time.Microsecond) }

// newPolicyID returns prefix and 16 random lower-case base32 characters.
func newPolicyID(prefix string) string {
	var b [10]byte
	rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return prefix + strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}

// write runs fn in a transaction that also bumps gov_version and, on
// PostgreSQL, notifies NotifyChannel with the new version (delivered only
// if the transaction commits). The version is bumped first: its row lock
// queues concurrent writers for the whole transaction, so versions commit
// in order and a Set's look-up of the policy it updates cannot race
// another writer's insert of it (SQLite's BEGIN IMMEDIATE does the same).
// fn returning errUnchanged rolls back without an error: nothing changed,
// and the version does not move.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var v int64
	if err := tx.QueryRowContext(ctx, `UPDATE gov_version SET version = version + 1 WHERE id = 1 RETURNING version`).Scan(&v); err != nil {
		return fmt.Errorf("policy version: %w", err)
	}
	if err := fn(tx); err != nil {
		if errors.Is(err, errUnchanged) {
			return nil
		}
		return err
	}
	if err := s.db.Notify(ctx, tx, NotifyChannel, strconv.FormatInt(v, 10)); err != nil {
		return err
	}
	return tx.Commit()
}

// errUnchanged is a write's fn saying there is nothing to write.
var errUnchanged = errors.New("unchanged")

// SetResult is what a Set call did.
type SetResult string

const (
	// SetCreated: no policy had the same identity; a new one (a new id)
	// was stored.
	SetCreated SetResult = "created"
	// SetUpdated: the policy with the same identity was updated in place,
	// keeping its id, so its counters and spend.
	SetUpdated SetResult = "updated"
	// SetUnchanged: that policy already said exactly this; nothing was
	// written.
	SetUnchanged SetResult = "unchanged"
)

// putTx inserts a new row (id "") or updates the row id, in tx. It
// returns the id and created_at stored; an update of an id that does not
// exist is ErrNotFound. cols and vals exclude id and the timestamps.
func putTx(ctx context.Context, tx *sql.Tx, table, prefix, id string, cols []string, vals []any, now time.Time) (string, time.Time, error) {
	if id == "" {
		id = newPolicyID(prefix)
		ph := make([]string, len(cols)+3)
		for i := range ph {
			ph[i] = "$" + strconv.Itoa(i+1)
		}
		q := "INSERT INTO " + table + " (id, " + strings.Join(cols, ", ") + ", created_at, updated_at) VALUES (" + strings.Join(ph, ", ") + ")"
		_, err := tx.ExecContext(ctx, q, append(append([]any{id}, vals...), now, now)...)
		return id, now, err
	}
	set := make([]string, len(cols))
	for i, c := range cols {
		set[i] = c + " = $" + strconv.Itoa(i+1)
	}
	n := len(cols)
	q := "UPDATE " + table + " SET " + strings.Join(set, ", ") + ", updated_at = $" + strconv.Itoa(n+1) +
		" WHERE id = $" + strconv.Itoa(n+2) + " RETURNING created_at"
	var created time.Time
	err := tx.QueryRowContext(ctx, q, append(vals, now, id)...).Scan(&created)
	if errors.Is(err, sql.ErrNoRows) {
		return id, created, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return id, created.UTC(), err
}

// existing is the policy a Set updates: the row id when given (ErrNotFound
// if there is none), else the oldest row of the same identity (where, an
// AND of column = value), or nil for a create. The oldest, because a
// database written before Set existed may hold duplicates, and the first
// one is what its counters most likely grew under.
func existing[T any](ctx context.Context, tx *sql.Tx, sel, id string, where []string, args []any, scan func(*sql.Rows) (T, error)) (*T, error) {
	if id != "" {
		v, err := oneRow(ctx, tx, sel, id, scan)
		if err != nil {
			return nil, err
		}
		return &v, nil
	}
	conds := make([]string, len(where))
	for i, c := range where {
		conds[i] = c + " = $" + strconv.Itoa(i+1)
	}
	vs, err := listRows(ctx, tx, sel+" WHERE "+strings.Join(conds, " AND ")+" ORDER BY created_at, id LIMIT 1", args, scan)
	if err != nil || len(vs) == 0 {
		return nil, err
	}
	return &vs[0], nil
}

// policyTable is one kind of policy as setPolicy and putPolicy store it.
type policyTable[T any] struct {
	table, prefix, sel string
	cols               []string
	scan               func(*sql.Rows) (T, error)
	vals               func(T) []any
	id                 func(T) string
	// stamp sets the id and times a write gave v.
	stamp func(v *T, id string, created, updated time.Time)
	// identity is what makes two policies the same one, which Set updates
	// rather than duplicates: columns, v's values in them, and the words
	// that name them in a message.
	identity func(v T) (cols []string, vals []any, words string)
}

var (
	budgetTable = policyTable[Budget]{"gov_budgets", "bud_", budgetSelect, budgetCols, scanBudget, budgetVals,
		func(b Budget) string { return b.ID }, func(b *Budget, id string, c, u time.Time) { b.ID, b.CreatedAt, b.UpdatedAt = id, c, u },
		func(b Budget) ([]string, []any, string) {
			return []string{"scope_type", "scope_id", "model", "harness", "metric", "window_spec"},
				[]any{string(b.ScopeType), b.ScopeID, b.Model, b.Harness, string(b.Metric), b.Window.String()}, "scope, model, harness, metric and window"
		}}
	limitTable = policyTable[Limit]{"gov_limits", "lim_", limitSelect, limitCols, scanLimit, limitVals,
		func(l Limit) string { return l.ID }, func(l *Limit, id string, c, u time.Time) { l.ID, l.CreatedAt, l.UpdatedAt = id, c, u },
		func(l Limit) ([]string, []any, string) {
			return []string{"scope_type", "scope_id", "model", "harness"}, []any{string(l.ScopeType), l.ScopeID, l.Model, l.Harness}, "scope, model and harness"
		}}
	ruleTable = policyTable[ModelRule]{"gov_model_rules", "rule_", ruleSelect, ruleCols, scanRule, ruleVals,
		func(r ModelRule) string { return r.ID }, func(r *ModelRule, id string, c, u time.Time) { r.ID, r.CreatedAt, r.UpdatedAt = id, c, u },
		func(r ModelRule) ([]string, []any, string) {
			return []string{"scope_type", "scope_id", "kind", "pattern"}, []any{string(r.ScopeType), r.ScopeID, string(r.Kind), r.Pattern}, "scope, kind and pattern"
		}}
)

// putPolicy stores v: a new policy (no id), or the replacement of the one
// with v's id, which is refused (ErrInvalid) if another policy already
// has v's identity: the two would count the same requests twice.
func putPolicy[T any](ctx context.Context, s *Store, pt policyTable[T], v T) (T, error) {
	now := s.stamp()
	err := s.write(ctx, func(tx *sql.Tx) error {
		id := pt.id(v)
		if id != "" {
			if err := noTwin(ctx, tx, pt, v); err != nil {
				return err
			}
		}
		id, created, err := putTx(ctx, tx, pt.table, pt.prefix, id, pt.cols, pt.vals(v), now)
		pt.stamp(&v, id, created, now)
		return err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

// noTwin refuses (ErrInvalid) to give the policy v, which has an id,
// an identity another policy already has. A policy that has its identity
// already keeps it, even beside a duplicate written before Set existed.
func noTwin[T any](ctx context.Context, tx *sql.Tx, pt policyTable[T], v T) error {
	cols, vals, words := pt.identity(v)
	twin, err := existing(ctx, tx, pt.sel, "", cols, vals, pt.scan)
	if err != nil || twin == nil || pt.id(*twin) == pt.id(v) {
		return err
	}
	cur, err := existing(ctx, tx, pt.sel, pt.id(v), nil, nil, pt.scan)
	if err != nil {
		return err
	}
	if _, curVals, _ := pt.identity(*cur); slices.Equal(curVals, vals) {
		return nil
	}
	return fmt.Errorf("%w: %s already has this %s; change or delete that one", ErrInvalid, pt.id(*twin), words)
}

// setPolicy is a Set, in one write: the policy v updates is looked up (its
// id, or the oldest of the same identity: existing), merge fills v
// from it (nil: a create) and validates it; if v then stores what the old
// one does, nothing is written; else v is updated in place or inserted.
func setPolicy[T any](ctx context.Context, s *Store, pt policyTable[T], v T,
	merge func(v T, old *T) (T, error), same func(a, b T) bool) (T, SetResult, error) {
	now := s.stamp()
	res := SetCreated
	cols, vals, _ := pt.identity(v)
	err := s.write(ctx, func(tx *sql.Tx) error {
		old, err := existing(ctx, tx, pt.sel, pt.id(v), cols, vals, pt.scan)
		if err != nil {
			return err
		}
		if v, err = merge(v, old); err != nil {
			return err
		}
		if pt.id(v) != "" {
			// Updated by id, it may have been given another's identity.
			if err := noTwin(ctx, tx, pt, v); err != nil {
				return err
			}
		}
		if old != nil {
			res = SetUpdated
			if same(*old, v) {
				v, res = *old, SetUnchanged
				return errUnchanged
			}
		}
		stored := "" // a new id
		if old != nil {
			stored = pt.id(*old)
		}
		var created time.Time
		stored, created, err = putTx(ctx, tx, pt.table, pt.prefix, stored, pt.cols, pt.vals(v), now)
		pt.stamp(&v, stored, created, now)
		return err
	})
	if err != nil {
		var zero T
		return zero, "", err
	}
	return v, res, nil
}

// del deletes the row id of table in one write, or returns ErrNotFound.
func (s *Store) del(ctx context.Context, table, id string) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM "+table+" WHERE id = $1", id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil
	})
}

type policyQueryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// listRows reads rows of q with scan, one value per row.
func listRows[T any](ctx context.Context, db policyQueryer, q string, args []any, scan func(*sql.Rows) (T, error)) ([]T, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// oneRow returns the single row of q with id, or ErrNotFound.
func oneRow[T any](ctx context.Context, db policyQueryer, q, id string, scan func(*sql.Rows) (T, error)) (T, error) {
	vs, err := listRows(ctx, db, q+" WHERE id = $1", []any{id}, scan)
	if err == nil && len(vs) == 0 {
		err = fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		var zero T
		return zero, err
	}
	return vs[0], nil
}

// Budgets.

const budgetSelect = `SELECT id, scope_type, scope_id, model, harness, metric, limit_value, window_spec, mode, unpriced, alert_thresholds, created_at, updated_at FROM gov_budgets`

var budgetCols = []string{"scope_type", "scope_id", "model", "harness", "metric", "limit_value", "window_spec", "mode", "unpriced", "alert_thresholds"}

func scanBudget(r *sql.Rows) (Budget, error) {
	var b Budget
	var window, alerts string
	if err := r.Scan(&b.ID, &b.ScopeType, &b.ScopeID, &b.Model, &b.Harness, &b.Metric, &b.Limit, &window, &b.Mode, &b.Unpriced, &alerts, &b.CreatedAt, &b.UpdatedAt); err != nil {
		return b, err
	}
	w, err := ParseWindow(window)
	if err != nil {
		return b, fmt.Errorf("budget %s: stored %w", b.ID, err)
	}
	b.Window = w
	if b.Alerts, err = parseAlerts(alerts); err != nil {
		return b, fmt.Errorf("budget %s: stored alert_thresholds: %w", b.ID, err)
	}
	b.CreatedAt, b.UpdatedAt = b.CreatedAt.UTC(), b.UpdatedAt.UTC()
	return b, nil
}

// formatAlerts stores thresholds as "50,80,100"; "" is none.
func formatAlerts(a []int) string {
	s := make([]string, len(a))
	for i, v := range a {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

// parseAlerts reads formatAlerts. None is an empty, not nil, list, so that
// Normalize on a budget read back does not put the defaults in again.
func parseAlerts(s string) ([]int, error) {
	out := []int{}
	for _, p := range strings.Split(s, ",") {
		if p == "" {
			continue
		}
		v, err := strconv.Atoi(p)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// PutBudget creates b (empty ID: a new id is assigned) or replaces the
// budget with b.ID. It validates b and returns it as stored. Editing a
// budget's limit, mode or selector never resets its spend: the id, which
// the ledger's counters are keyed by, stays.
func (s *Store) PutBudget(ctx context.Context, b Budget) (Budget, error) {
	if err := normalizeBudget(&b); err != nil {
		return Budget{}, err
	}
	return putPolicy(ctx, s, budgetTable, b)
}

// normalizeBudget fills b's defaults, validates it and puts its alert
// thresholds in the order they are stored in.
func normalizeBudget(b *Budget) error {
	b.Normalize()
	if err := b.Validate(); err != nil {
		return err
	}
	b.Alerts = slices.Clone(b.Alerts)
	slices.Sort(b.Alerts)
	b.Alerts = slices.Compact(b.Alerts)
	return nil
}

func budgetVals(b Budget) []any {
	return []any{string(b.ScopeType), b.ScopeID, b.Model, b.Harness, string(b.Metric), b.Limit, b.Window.String(), string(b.Mode), b.Unpriced, formatAlerts(b.Alerts)}
}

// SetBudget is "budget set": it updates, in place, the budget with the
// same scope, model, harness, metric and window (or b.ID when given), and
// creates one only when there is none, so setting a budget twice never
// makes two that would both count the same spend. An update keeps the id,
// and so the spend; fields b leaves empty (mode, unpriced, nil alert
// thresholds) keep the updated budget's values. The look-up and the write
// are one transaction, so concurrent Sets of one budget make one.
func (s *Store) SetBudget(ctx context.Context, b Budget) (Budget, SetResult, error) {
	if err := b.Validate(); err != nil {
		return Budget{}, "", err
	}
	return setPolicy(ctx, s, budgetTable, b,
		func(b Budget, old *Budget) (Budget, error) {
			if old != nil {
				if b.Mode == "" {
					b.Mode = old.Mode
				}
				if b.Unpriced == "" && b.Metric == old.Metric {
					b.Unpriced = old.Unpriced
				}
				if b.Alerts == nil {
					b.Alerts = old.Alerts
				}
			}
			return b, normalizeBudget(&b)
		}, sameBudget)
}

// sameBudget reports whether a and b store the same values.
func sameBudget(a, b Budget) bool {
	return a.Selector == b.Selector && a.Metric == b.Metric && a.Limit == b.Limit && a.Window == b.Window &&
		a.Mode == b.Mode && a.Unpriced == b.Unpriced && slices.Equal(a.Alerts, b.Alerts)
}

// Budget returns one budget, or ErrNotFound.
func (s *Store) Budget(ctx context.Context, id string) (Budget, error) {
	return oneRow(ctx, s.db, budgetSelect, id, scanBudget)
}

// ListBudgets returns budgets matching f (zero value: all), sorted by id.
func (s *Store) ListBudgets(ctx context.Context, f Filter) ([]Budget, error) {
	w, args := f.where()
	return listRows(ctx, s.db, budgetSelect+w, args, scanBudget)
}

// DeleteBudget deletes a budget, or returns ErrNotFound. Its counters stay
// in the ledger; a new budget gets a new id and starts at zero.
func (s *Store) DeleteBudget(ctx context.Context, id string) error {
	return s.del(ctx, "gov_budgets", id)
}

// Rate limits.

const limitSelect = `SELECT id, scope_type, scope_id, model, harness, rpm, tpm, concurrency, mode, created_at, updated_at FROM gov_limits`

var limitCols = []string{"scope_type", "scope_id", "model", "harness", "rpm", "tpm", "concurrency", "mode"}

func scanLimit(r *sql.Rows) (Limit, error) {
	var l Limit
	err := r.Scan(&l.ID, &l.ScopeType, &l.ScopeID, &l.Model, &l.Harness, &l.RPM, &l.TPM, &l.Concurrency, &l.Mode, &l.CreatedAt, &l.UpdatedAt)
	l.CreatedAt, l.UpdatedAt = l.CreatedAt.UTC(), l.UpdatedAt.UTC()
	return l, err
}

// PutLimit creates l (empty ID) or replaces the limit with l.ID.
func (s *Store) PutLimit(ctx context.Context, l Limit) (Limit, error) {
	l.Normalize()
	if err := l.Validate(); err != nil {
		return Limit{}, err
	}
	return putPolicy(ctx, s, limitTable, l)
}

// KeepRate is a rate SetLimit leaves as it is: an updated limit keeps its
// value, a new limit has none (0). "limit set --tpm 100" thus changes
// the TPM alone, and an admin POST that omits rpm keeps it.
const KeepRate int64 = -1

// SetLimit is "limit set": it updates, in place, the rate limit with the
// same scope, model and harness (or l.ID when given), and creates one
// only when there is none. An update keeps the id (so its buckets) and,
// for a rate given as KeepRate or a mode left empty, the updated limit's
// value.
func (s *Store) SetLimit(ctx context.Context, l Limit) (Limit, SetResult, error) {
	if probs := l.Selector.problems(); len(probs) > 0 {
		return Limit{}, "", invalid(probs)
	}
	return setPolicy(ctx, s, limitTable, l,
		func(l Limit, old *Limit) (Limit, error) {
			var prev Limit
			if old != nil {
				prev = *old
				if l.Mode == "" {
					l.Mode = old.Mode
				}
			}
			for _, r := range []struct{ v, old *int64 }{{&l.RPM, &prev.RPM}, {&l.TPM, &prev.TPM}, {&l.Concurrency, &prev.Concurrency}} {
				if *r.v == KeepRate {
					*r.v = *r.old
				}
			}
			l.Normalize()
			return l, l.Validate()
		},
		func(a, b Limit) bool {
			return a.Selector == b.Selector && a.RPM == b.RPM && a.TPM == b.TPM && a.Concurrency == b.Concurrency && a.Mode == b.Mode
		})
}

func limitVals(l Limit) []any {
	return []any{string(l.ScopeType), l.ScopeID, l.Model, l.Harness, l.RPM, l.TPM, l.Concurrency, string(l.Mode)}
}

// Limit returns one rate limit, or ErrNotFound.
func (s *Store) Limit(ctx context.Context, id string) (Limit, error) {
	return oneRow(ctx, s.db, limitSelect, id, scanLimit)
}

// ListLimits returns rate limits matching f, sorted by id.
func (s *Store) ListLimits(ctx context.Context, f Filter) ([]Limit, error) {
	w, args := f.where()
	return listRows(ctx, s.db, limitSelect+w, args, scanLimit)
}

// DeleteLimit deletes a rate limit, or returns ErrNotFound.
func (s *Store) DeleteLimit(ctx context.Context, id string) error {
	return s.del(ctx, "gov_limits", id)
}

// Model rules.

const ruleSelect = `SELECT id, scope_type, scope_id, kind, pattern, target, created_at, updated_at FROM gov_model_rules`

var ruleCols = []string{"scope_type", "scope_id", "kind", "pattern", "target"}

func scanRule(r *sql.Rows) (ModelRule, error) {
	var m ModelRule
	err := r.Scan(&m.ID, &m.ScopeType, &m.ScopeID, &m.Kind, &m.Pattern, &m.Target, &m.CreatedAt, &m.UpdatedAt)
	m.CreatedAt, m.UpdatedAt = m.CreatedAt.UTC(), m.UpdatedAt.UTC()
	return m, err
}

// PutRule creates r (empty ID) or replaces the rule with r.ID.
func (s *Store) PutRule(ctx context.Context, r ModelRule) (ModelRule, error) {
	if err := r.Validate(); err != nil {
		return ModelRule{}, err
	}
	return putPolicy(ctx, s, ruleTable, r)
}

// SetRule is "models allow|deny|alias": the scope's rule of the same kind
// and pattern (or r.ID when given) is updated in place, its target being
// the only thing an alias can change; an identical rule is left as it is.
// A rule is created only when the scope has none of that kind and
// pattern, so adding a rule twice never makes two.
func (s *Store) SetRule(ctx context.Context, r ModelRule) (ModelRule, SetResult, error) {
	if err := r.Validate(); err != nil {
		return ModelRule{}, "", err
	}
	return setPolicy(ctx, s, ruleTable, r,
		func(r ModelRule, _ *ModelRule) (ModelRule, error) { return r, nil },
		func(a, b ModelRule) bool {
			return a.ScopeType == b.ScopeType && a.ScopeID == b.ScopeID && a.Kind == b.Kind && a.Pattern == b.Pattern && a.Target == b.Target
		})
}

func ruleVals(r ModelRule) []any {
	return []any{string(r.ScopeType), r.ScopeID, string(r.Kind), r.Pattern, r.Target}
}

// Rule returns one model rule, or ErrNotFound.
func (s *Store) Rule(ctx context.Context, id string) (ModelRule, error) {
	return oneRow(ctx, s.db, ruleSelect, id, scanRule)
}

// ListRules returns model rules matching f, sorted by id.
func (s *Store) ListRules(ctx context.Context, f Filter) ([]ModelRule, error) {
	w, args := f.where()
	return listRows(ctx, s.db, ruleSelect+w, args, scanRule)
}

// DeleteRule deletes a model rule, or returns ErrNotFound.
func (s *Store) DeleteRule(ctx context.Context, id string) error {
	return s.del(ctx, "gov_model_rules", id)
}

// Snapshots.

// Version is the policy version: it moves with every write.
func (s *Store) Version(ctx context.Context) (int64, error) {
	var v int64
	err := s.db.QueryRowContext(ctx, `SELECT version FROM gov_version WHERE id = 1`).Scan(&v)
	return v, err
}

// Load reads every policy as one consistent snapshot: one read-only
// transaction, REPEATABLE READ on PostgreSQL so its four statements see the
// same commit (SQLite's deferred read transaction does that already).
func (s *Store) Load(ctx context.Context) (*Policies, error) {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.db.Engine == store.Postgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := s.db.BeginTx(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	defer tx.Rollback()
	p := &Policies{}
	if err := tx.QueryRowContext(ctx, `SELECT version FROM gov_version WHERE id = 1`).Scan(&p.Version); err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	if p.Budgets, err = listRows(ctx, tx, budgetSelect+" ORDER BY id", nil, scanBudget); err != nil {
		return nil, fmt.Errorf("load budgets: %w", err)
	}
	if p.Limits, err = listRows(ctx, tx, limitSelect+" ORDER BY id", nil, scanLimit); err != nil {
		return nil, fmt.Errorf("load limits: %w", err)
	}
	if p.Rules, err = listRows(ctx, tx, ruleSelect+" ORDER BY id", nil, scanRule); err != nil {
		return nil, fmt.Errorf("load model rules: %w", err)
	}
	return p, nil
}

// InForce lists the policies of p that apply to sc, without headroom: the
// effective view when no ledger is at hand (the CLI's resolve, the admin
// API without a Governor). An empty model or harness is a view over all of
// them, so a policy narrowed to one model or harness is listed too.
func (p *Policies) InForce(sc Scope, model string) []PolicyState {
	if p == nil {
		return nil
	}
	applies := func(s Selector) bool {
		if model == "" {
			s.Model = ""
		}
		if sc.Harness == "" {
			s.Harness = ""
		}
		return s.Matches(sc, model)
	}
	var out []PolicyState
	for i := range p.Rules {
		r := p.Rules[i]
		if applies(Selector{ScopeType: r.ScopeType, ScopeID: r.ScopeID}) {
			out = append(out, PolicyState{Kind: "model_rule", Rule: &r})
		}
	}
	for i := range p.Limits {
		if l := p.Limits[i]; applies(l.Selector) {
			out = append(out, PolicyState{Kind: "limit", Limit: &l})
		}
	}
	for i := range p.Budgets {
		if b := p.Budgets[i]; applies(b.Selector) {
			out = append(out, PolicyState{Kind: "budget", Budget: &b})
		}
	}
	// Widest scope first within each kind, then by id: a stable order for
	// readers and tests.
	level := func(ps PolicyState) int {
		switch {
		case ps.Rule != nil:
			return slices.Index(ScopeTypes, ps.Rule.ScopeType)
		case ps.Limit != nil:
			return slices.Index(ScopeTypes, ps.Limit.ScopeType)
		}
		return slices.Index(ScopeTypes, ps.Budget.ScopeType)
	}
	rank := map[string]int{"model_rule": 0, "limit": 1, "budget": 2}
	slices.SortStableFunc(out, func(a, b PolicyState) int {
		return cmp.Or(rank[a.Kind]-rank[b.Kind], level(a)-level(b))
	})
	return out
}
