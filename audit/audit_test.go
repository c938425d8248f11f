package audit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
)

// forEachEngine runs f on a SQLite file and, with TOLLGATE_TEST_POSTGRES,
// on a fresh PostgreSQL schema.
func forEachEngine(t *testing.T, f func(t *testing.T, l *Log)) {
	open := func(t *testing.T, dsn string) *Log {
		db, err := store.Open(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		l, err := Open(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	t.Run("sqlite", func(t *testing.T) { f(t, open(t, filepath.Join(t.TempDir(), "audit.db"))) })
	t.Run("postgres", func(t *testing.T) {
		url := os.Getenv("TOLLGATE_TEST_POSTGRES")
		if url == "" {
			t.Skip("TOLLGATE_TEST_POSTGRES is not set")
		}
		f(t, open(t, testkit.PostgresSchema(t, url, "audit_")))
	})
}

// clock is a Log's now, stepped by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// TestRecordStoresWhoWhatAndWhen: an entry read back is the one written,
// with the actor and source of its context and its change as JSON.
func TestRecordStoresWhoWhatAndWhen(t *testing.T) {
	forEachEngine(t, func(t *testing.T, l *Log) {
		c := &clock{t: time.Date(2026, 12, 3, 10, 0, 0, 123456789, time.UTC)}
		l.now = c.now
		ctx := WithActor(context.Background(), Actor{Kind: KindAPI, ID: Fingerprint("admin-secret")}, "10.0.0.7")
		if err := l.Record(ctx, "credential.create", "cred_1", map[string]any{"provider": "anthropic", "name": "team", "n": 3}); err != nil {
			t.Fatal(err)
		}
		if err := l.Record(context.Background(), "token.revoke", "tok_1", nil); err != nil {
			t.Fatal(err)
		}
		p, err := l.Query(context.Background(), Filter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Entries) != 2 || p.Next != "" {
			t.Fatalf("entries: %+v", p)
		}
		var got Entry
		for _, e := range p.Entries {
			if e.Action == "credential.create" {
				got = e
			}
		}
		if got.Actor != (Actor{Kind: KindAPI, ID: Fingerprint("admin-secret")}) || got.Source != "10.0.0.7" || got.Target != "cred_1" ||
			!got.At.Equal(c.t.Truncate(time.Microsecond)) || got.Change["provider"] != "anthropic" || got.Change["n"] != float64(3) ||
			!strings.HasPrefix(got.ID, "aud_") {
			t.Errorf("entry: %+v", got)
		}
		if len(Fingerprint("admin-secret")) != 8 || Fingerprint("admin-secret") == Fingerprint("admin-secres") {
			t.Errorf("fingerprint %q", Fingerprint("admin-secret"))
		}
		for _, e := range p.Entries {
			if e.Action == "token.revoke" && (e.Actor.Kind != KindUnknown || e.Change == nil) {
				t.Errorf("entry without an actor: %+v", e)
			}
		}
	})
}

// TestQueryFiltersAndPages: each filter narrows, pages follow one another
// without a gap or a repeat, even when entries share a microsecond.
func TestQueryFiltersAndPages(t *testing.T) {
	forEachEngine(t, func(t *testing.T, l *Log) {
		ctx := context.Background()
		c := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
		l.now = c.now
		api := WithActor(ctx, Actor{Kind: KindAPI, ID: "ab12cd34"}, "127.0.0.1")
		cli := WithActor(ctx, Actor{Kind: KindCLI, ID: "ops"}, SourceCLI)
		writes := []struct {
			ctx            context.Context
			action, target string
		}{
			{api, "credential.create", "cred_a"},
			{api, "credential.delete", "cred_a"},
			{cli, "credential.create", "cred_b"},
			{cli, "binding.bind", "user:u1/anthropic-messages"},
			{api, "token.issue", "tok_1"},
			{cli, "token.revoke", "tok_1"},
		}
		for i, w := range writes {
			if i%2 == 0 { // pairs share a time: the cursor must order by id too
				c.t = c.t.Add(time.Hour)
			}
			if err := l.Record(w.ctx, w.action, w.target, nil); err != nil {
				t.Fatal(err)
			}
		}
		count := func(f Filter) int {
			t.Helper()
			p, err := l.Query(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			return len(p.Entries)
		}
		start := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
		for name, tc := range map[string]struct {
			f    Filter
			want int
		}{
			"actor kind":         {Filter{ActorKind: KindCLI}, 3},
			"actor":              {Filter{Actor: "ab12cd34"}, 3},
			"action prefix":      {Filter{Action: "credential."}, 3},
			"action noun":        {Filter{Action: "token"}, 2},
			"action exact":       {Filter{Action: "credential.create"}, 2},
			"action other case":  {Filter{Action: "Credential"}, 0},
			"target":             {Filter{Target: "cred_a"}, 2},
			"from inclusive":     {Filter{From: start.Add(2 * time.Hour)}, 4},
			"to exclusive":       {Filter{To: start.Add(2 * time.Hour)}, 2},
			"from and to":        {Filter{From: start.Add(2 * time.Hour), To: start.Add(3 * time.Hour)}, 2},
			"several":            {Filter{ActorKind: KindCLI, Action: "token"}, 1},
			"nothing matches":    {Filter{Target: "cred_zzz"}, 0},
			"everything, capped": {Filter{Limit: 4}, 4},
		} {
			if got := count(tc.f); got != tc.want {
				t.Errorf("%s: %d entries, want %d", name, got, tc.want)
			}
		}

		var seen []string
		f := Filter{Limit: 2}
		for range 10 {
			p, err := l.Query(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range p.Entries {
				if slices.Contains(seen, e.ID) {
					t.Fatalf("entry %s repeated across pages", e.ID)
				}
				seen = append(seen, e.ID)
			}
			if p.Next == "" {
				break
			}
			f.Cursor = p.Next
		}
		if len(seen) != len(writes) {
			t.Fatalf("paged through %d entries, want %d: %v", len(seen), len(writes), seen)
		}
		all, _ := l.Query(ctx, Filter{})
		for i, e := range all.Entries {
			if seen[i] != e.ID {
				t.Fatalf("page order %v differs from one query's", seen)
			}
			if i > 0 && e.At.After(all.Entries[i-1].At) {
				t.Fatalf("not newest first: %v", all.Entries)
			}
		}
	})
}

// TestParseFilterIsStrict: an unknown parameter is refused by name, and
// each bad value names its parameter; dates read as whole UTC days.
func TestParseFilterIsStrict(t *testing.T) {
	f, err := ParseFilter(map[string]string{"actor_kind": "cli", "action": "binding", "from": "2026-11-01", "to": "2026-11-30", "limit": "50"})
	if err != nil {
		t.Fatal(err)
	}
	if f.ActorKind != "cli" || f.Action != "binding" || f.Limit != 50 ||
		!f.From.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) || !f.To.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("filter: %+v", f)
	}
	for in, want := range map[string]map[string]string{
		"unknown parameter actr, user":    {"actr": "x", "user": "u"},
		"actor_kind \"robot\"":            {"actor_kind": "robot"},
		"limit 5000":                      {"limit": "5000"},
		"limit \"ten\"":                   {"limit": "ten"},
		"from: \"yesterday\"":             {"from": "yesterday"},
		"from must be before to":          {"from": "2026-11-02", "to": "2026-11-01"},
		"cursor \"12\" is not one":        {"cursor": "12"},
		"to: \"2026-13-01\" is neither a": {"to": "2026-13-01"},
	} {
		_, err := ParseFilter(want)
		if !errors.Is(err, ErrInvalidQuery) || !strings.Contains(err.Error(), in) {
			t.Errorf("%v: %v, want it to name %q", want, err, in)
		}
	}
}

// TestAppendTxCommitsWithTheWrite: an entry appended in a transaction
// exists only if the transaction commits.
func TestAppendTxCommitsWithTheWrite(t *testing.T) {
	forEachEngine(t, func(t *testing.T, l *Log) {
		ctx := context.Background()
		for _, commit := range []bool{false, true} {
			tx, err := l.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.AppendTx(ctx, tx, Entry{Actor: Actor{Kind: KindCLI, ID: "ops"}, Source: SourceCLI, Action: "token.issue", Target: "tok_1"}); err != nil {
				t.Fatal(err)
			}
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		p, err := l.Query(ctx, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Entries) != 1 {
			t.Fatalf("%d entries, want the committed one", len(p.Entries))
		}
		if err := l.Append(ctx, Entry{Target: "x"}); err == nil {
			t.Error("an entry without an action was stored")
		}
	})
}
