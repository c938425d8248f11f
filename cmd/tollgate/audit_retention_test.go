package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// TestServeAuditRetention: with TOLLGATE_AUDIT_RETENTION, serve deletes the
// audit entries older than it (and logs how many), and keeps the younger.
func TestServeAuditRetention(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	db, err := store.Open(ctx, c.env["TOLLGATE_DB"])
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l, err := audit.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for target, age := range map[string]time.Duration{"tok_old": 31 * 24 * time.Hour, "tok_young": 29 * 24 * time.Hour} {
		if err := l.Append(ctx, audit.Entry{At: now.Add(-age), Actor: audit.Actor{Kind: audit.KindCLI, ID: "ops"}, Source: audit.SourceCLI, Action: "token.revoke", Target: target}); err != nil {
			t.Fatal(err)
		}
	}
	c.env["TOLLGATE_AUDIT_RETENTION"] = "30d"
	s := startServe(t, c)
	s.line(t, "listening on ")
	go io.Copy(io.Discard, s.out)
	targets := func() string {
		p, err := l.Query(ctx, audit.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		var ts []string
		for _, e := range p.Entries {
			ts = append(ts, e.Target)
		}
		return strings.Join(ts, ",")
	}
	testkit.Eventually(t, 10*time.Second, "the 31-day-old entry pruned", func() bool { return targets() == "tok_young" })
	testkit.Eventually(t, 5*time.Second, "the prune logged", func() bool { return strings.Contains(s.logs.String(), "audit log pruned") })
}
