package main

import (
	"context"
	"encoding/csv"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

// TestUsageCommandFiltersAndGroups: the CLI takes every filter the API
// does, groups by token, credential and session, keeps a to date inclusive, and
// echoes a bad range as typed.
func TestUsageCommandFiltersAndGroups(t *testing.T) {
	ctx := context.Background()
	c := newCLI(t, "http://127.0.0.1:1")
	db, err := store.Open(ctx, c.env["TOLLGATE_DB"])
	if err != nil {
		t.Fatal(err)
	}
	st, err := ledger.OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 5, 4, 15, 0, 0, 0, time.UTC)
	rec := func(id, ws, user, tier, tok, cred string, out int64) *metering.Record {
		return &metering.Record{RequestID: id, Start: day, Workspace: ws, Project: "p", User: user, TokenID: tok,
			CredentialID: cred, Harness: "codex", Provider: "openai", ModelServed: "gpt-5", Status: 200,
			Outcome: metering.OutcomeOK, Source: metering.SourceUpstream, ServiceTier: tier,
			Usage: &metering.Usage{InputUncached: 10, Output: out}}
	}
	recs := []*metering.Record{
		rec("a", "ws1", "u1", "flex", "tok-a", "cred-1", 1),
		rec("b", "ws1", "u1", "", "tok-b", "cred-1", 10),
		rec("c", "ws2", "u2", "flex", "tok-a", "cred-2", 100),
	}
	recs[0].Session, recs[1].Session, recs[2].Session = "sess-1", "sess-1", "sess-2"
	if _, err := st.InsertBatch(ctx, recs); err != nil {
		t.Fatal(err)
	}
	db.Close()

	csvRows := func(args ...string) [][]string {
		t.Helper()
		out, errs, code := c.run(ctx, "", append([]string{"usage", "--from", "2026-05-04", "--to", "2026-05-04", "--format", "csv"}, args...)...)
		if code != 0 {
			t.Fatalf("usage %v: %d %s", args, code, errs)
		}
		rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		return rows
	}
	for _, tc := range []struct {
		args []string
		want string // first column and output of each row after the header
	}{
		{[]string{"--group-by", "token", "--user", "u1"}, "tok-a:1 tok-b:10"},
		{[]string{"--group-by", "credential", "--workspace", "ws2"}, "cred-2:100"},
		{[]string{"--group-by", "token", "--service-tier", "flex"}, "tok-a:101"},
		{[]string{"--group-by", "credential"}, "cred-1:11 cred-2:100"},
		{[]string{"--group-by", "session"}, "sess-1:11 sess-2:100"},
		{[]string{"--group-by", "token", "--session", "sess-1"}, "tok-a:1 tok-b:10"},
	} {
		rows := csvRows(tc.args...)
		out := slices.Index(rows[0], "output")
		var got []string
		for _, r := range rows[1:] {
			got = append(got, r[0]+":"+r[out])
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("usage %v: %v, want %s", tc.args, got, tc.want)
		}
	}
	_, errs, code := c.run(ctx, "", "usage", "--from", "2026-05-05", "--to", "2026-05-04")
	if code != 2 || !strings.Contains(errs, `"2026-05-04"`) {
		t.Errorf("inverted range: exit %d, %s; want exit 2 quoting the --to typed", code, errs)
	}
}
