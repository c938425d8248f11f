package audit

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestPruneDeletesOnlyOlderEntries: Prune deletes the entries older than
// its cutoff, in batches over passes, and keeps the rest; again it
// deletes nothing.
func TestPruneDeletesOnlyOlderEntries(t *testing.T) {
	forEachEngine(t, func(t *testing.T, l *Log) {
		ctx := context.Background()
		cut := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
		// More old entries than one pass takes, in one statement: the rows
		// matter here, not the scrubbing Append does.
		l.batch, l.pass = 50, 4
		old := l.batch*l.pass + 3
		if _, err := l.db.ExecContext(ctx, `WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < CAST($1 AS BIGINT))
			INSERT INTO audit_log (id, at_us, actor_kind, actor_id, source, action, target, change_json)
			SELECT 'aud_old_' || i, CAST($2 AS BIGINT) - i * 1000000, 'cli', 'ops', 'cli', 'token.revoke', 'tok', '{}' FROM n`, old, cut.UnixMicro()); err != nil {
			t.Fatal(err)
		}
		for i, at := range []time.Time{cut, cut.Add(time.Hour)} {
			if err := l.Append(ctx, Entry{At: at, Actor: Actor{Kind: KindCLI, ID: "ops"}, Action: "token.revoke", Target: fmt.Sprintf("kept_%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		n, err := l.Prune(ctx, cut)
		if err != nil || n != l.batch*l.pass {
			t.Fatalf("first pass pruned %d (%v), want a full pass of %d", n, err, l.batch*l.pass)
		}
		if n, err := l.Prune(ctx, cut); err != nil || n != 3 {
			t.Fatalf("second pass pruned %d (%v), want 3", n, err)
		}
		if n, err := l.Prune(ctx, cut); err != nil || n != 0 {
			t.Fatalf("third pass pruned %d (%v), want 0", n, err)
		}
		p, err := l.Query(ctx, Filter{Limit: MaxLimit})
		if err != nil {
			t.Fatal(err)
		}
		var targets []string
		for _, e := range p.Entries {
			targets = append(targets, e.Target)
		}
		if strings.Join(targets, ",") != "kept_1,kept_0" {
			t.Errorf("left %v, want kept_1 and kept_0 (the entry at the cutoff is not older)", targets)
		}
	})
}

// TestKeepPrunesUntilStopped: Keep prunes at once what is older than the
// retention, logs the count, and returns when its context ends; a zero
// retention keeps everything.
func TestKeepPrunesUntilStopped(t *testing.T) {
	forEachEngine(t, func(t *testing.T, l *Log) {
		ctx := context.Background()
		c := &clock{t: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
		l.now = c.now
		for i, age := range []time.Duration{100 * 24 * time.Hour, 89 * 24 * time.Hour} {
			if err := l.Append(ctx, Entry{At: c.t.Add(-age), Action: "budget.set", Target: fmt.Sprintf("bud_%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		l.Keep(ctx, 0, slog.Default()) // returns at once
		var buf bytes.Buffer
		// Read only once Keep has returned.
		log := slog.New(slog.NewTextHandler(&buf, nil))
		kctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); l.Keep(kctx, 90*24*time.Hour, log) }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			p, err := l.Query(ctx, Filter{})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Entries) == 1 {
				if p.Entries[0].Target != "bud_1" {
					t.Fatalf("kept %s, want bud_1", p.Entries[0].Target)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d entries after 10 s, want the 100-day-old one pruned", len(p.Entries))
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		<-done
		if s := buf.String(); !strings.Contains(s, "audit log pruned") || !strings.Contains(s, "entries=1") {
			t.Errorf("log %q, want the pruned count", s)
		}
	})
}

// TestParseRetention: durations with a unit and whole days are accepted;
// a bare number, a typo, zero and less than a day are refused, saying why.
func TestParseRetention(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"90d", 90 * 24 * time.Hour, ""},
		{" 2160h ", 2160 * time.Hour, ""},
		{"1d", 24 * time.Hour, ""},
		{"90", 0, "did you mean 90d?"},
		{"ninety days", 0, "use e.g. 90d"},
		{"0d", 0, "not a number of days"},
		{"-5d", 0, "not a number of days"},
		{"1.5d", 0, "not a number of days"},
		{"12h", 0, "at least 24h0m0s"},
		{"-1h", 0, "at least"},
	} {
		got, err := ParseRetention(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("%q: %v (%v), want %v", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: %v (%v), want an error containing %q", tc.in, got, err, tc.err)
		}
	}
}
