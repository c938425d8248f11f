package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidQuery is the error (errors.Is) of a query the caller can fix;
// its message names the parameter at fault.
var ErrInvalidQuery = errors.New("invalid audit query")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidQuery, fmt.Sprintf(format, args...))
}

// Page sizes: a query returns at most MaxLimit entries, DefaultLimit
// unless it asks.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Filter narrows a query; zero fields match everything.
type Filter struct {
	// ActorKind is api, cli or console.
	ActorKind string
	// Actor is an actor id: a token fingerprint, an OS user, a session prefix.
	Actor string
	// Action matches actions starting with it: "credential" or
	// "credential." every credential write, "binding.bind" only binds.
	Action string
	// Target is an entry's target, exactly.
	Target string
	// From is inclusive, To exclusive.
	From, To time.Time
	// Limit is the page size, DefaultLimit when 0, at most MaxLimit.
	Limit int
	// Cursor is a previous page's Next: the page after it.
	Cursor string
}

// Page is one page of entries, newest first.
type Page struct {
	Entries []Entry `json:"entries"`
	// Next is the cursor of the following (older) page; empty on the last.
	Next string `json:"next_cursor,omitempty"`
}

// Params are the query parameters ParseFilter reads, in the order help
// texts list them.
var Params = []string{"actor_kind", "actor", "action", "target", "from", "to", "limit", "cursor"}

// ParseFilter reads a Filter from named text values, as the admin API's
// query string and the CLI's flags give them: one reading for both. A
// name outside Params is refused, naming it. from and to are RFC 3339
// times or dates; a date as to includes that whole UTC day.
func ParseFilter(vals map[string]string) (Filter, error) {
	var unknown []string
	for k := range vals {
		if !slices.Contains(Params, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return Filter{}, invalid("unknown parameter %s: the audit log takes %s", strings.Join(unknown, ", "), strings.Join(Params, ", "))
	}
	f := Filter{ActorKind: vals["actor_kind"], Actor: vals["actor"], Action: vals["action"], Target: vals["target"], Cursor: vals["cursor"]}
	var probs []string
	var err error
	if f.From, err = parseTime(vals["from"], false); err != nil {
		probs = append(probs, "from: "+err.Error())
	}
	if f.To, err = parseTime(vals["to"], true); err != nil {
		probs = append(probs, "to: "+err.Error())
	}
	if s := vals["limit"]; s != "" {
		if f.Limit, err = strconv.Atoi(s); err != nil {
			probs = append(probs, fmt.Sprintf("limit %q is not a whole number", s))
		}
	}
	if len(probs) > 0 {
		return Filter{}, invalid("%s", strings.Join(probs, "; "))
	}
	return f, f.validate()
}

func parseTime(s string, end bool) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a date (2026-11-01) nor an RFC 3339 time", s)
	}
	if end {
		d = d.AddDate(0, 0, 1)
	}
	return d, nil
}

func (f Filter) validate() error {
	var probs []string
	switch f.ActorKind {
	case "", KindAPI, KindCLI, KindConsole, KindUnknown:
	default:
		probs = append(probs, fmt.Sprintf("actor_kind %q: use %s, %s or %s", f.ActorKind, KindAPI, KindCLI, KindConsole))
	}
	if f.Limit < 0 || f.Limit > MaxLimit {
		probs = append(probs, fmt.Sprintf("limit %d: a page holds 1 to %d entries", f.Limit, MaxLimit))
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		probs = append(probs, "from must be before to")
	}
	if f.Cursor != "" {
		if _, _, err := parseCursor(f.Cursor); err != nil {
			probs = append(probs, err.Error())
		}
	}
	if len(probs) > 0 {
		return invalid("%s", strings.Join(probs, "; "))
	}
	return nil
}

// A cursor is the last entry's at_us and id: entries are ordered by both,
// so the next page starts strictly after it even when times tie.
func cursorOf(e Entry) string { return strconv.FormatInt(e.At.UnixMicro(), 10) + "_" + e.ID }

func parseCursor(c string) (int64, string, error) {
	at, id, ok := strings.Cut(c, "_")
	n, err := strconv.ParseInt(at, 10, 64)
	if !ok || err != nil || !strings.HasPrefix(id, "aud_") {
		return 0, "", fmt.Errorf("cursor %q is not one this log returned: pass next_cursor as it came", c)
	}
	return n, id, nil
}

// Query returns the newest entries f matches, and the cursor of the next page.
func (l *Log) Query(ctx context.Context, f Filter) (Page, error) {
	if err := f.validate(); err != nil {
		return Page{}, err
	}
	limit := f.Limit
	if limit == 0 {
		limit = DefaultLimit
	}
	var conds []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.ActorKind != "" {
		conds = append(conds, "actor_kind = "+arg(f.ActorKind))
	}
	if f.Actor != "" {
		conds = append(conds, "actor_id = "+arg(f.Actor))
	}
	if f.Action != "" {
		// SUBSTR rather than LIKE: LIKE's wildcards would need escaping,
		// and SQLite's is case-insensitive where PostgreSQL's is not.
		conds = append(conds, "SUBSTR(action, 1, "+arg(len(f.Action))+") = "+arg(f.Action))
	}
	if f.Target != "" {
		conds = append(conds, "target = "+arg(f.Target))
	}
	if !f.From.IsZero() {
		conds = append(conds, "at_us >= "+arg(f.From.UnixMicro()))
	}
	if !f.To.IsZero() {
		conds = append(conds, "at_us < "+arg(f.To.UnixMicro()))
	}
	if f.Cursor != "" {
		at, id, _ := parseCursor(f.Cursor)
		a, i := arg(at), arg(id)
		conds = append(conds, "(at_us < "+a+" OR (at_us = "+a+" AND id < "+i+"))")
	}
	q := `SELECT id, at_us, actor_kind, actor_id, source, action, target, change_json FROM audit_log`
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	q += " ORDER BY at_us DESC, id DESC LIMIT " + arg(limit+1)
	rows, err := l.db.QueryContext(ctx, q, args...)
	if err != nil {
		return Page{}, fmt.Errorf("audit: query: %w", err)
	}
	defer rows.Close()
	p := Page{Entries: []Entry{}}
	for rows.Next() {
		var e Entry
		var at int64
		var change string
		if err := rows.Scan(&e.ID, &at, &e.Actor.Kind, &e.Actor.ID, &e.Source, &e.Action, &e.Target, &change); err != nil {
			return Page{}, fmt.Errorf("audit: query: %w", err)
		}
		e.At = time.UnixMicro(at).UTC()
		if err := json.Unmarshal([]byte(change), &e.Change); err != nil {
			return Page{}, fmt.Errorf("audit: entry %s: %w", e.ID, err)
		}
		p.Entries = append(p.Entries, e)
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("audit: query: %w", err)
	}
	if len(p.Entries) > limit {
		p.Entries = p.Entries[:limit]
		p.Next = cursorOf(p.Entries[limit-1])
	}
	return p, nil
}

// normalise turns a value of any type into what its JSON decodes to, so
// scrubValue sees only maps, slices and scalars.
func normalise(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return Redacted
	}
	var out any
	if json.Unmarshal(b, &out) != nil {
		return Redacted
	}
	return out
}
