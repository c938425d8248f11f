package main

import (
	"context"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

func TestUsageRefusalsListsTheAggregate(t *testing.T) {
	c := newCLI(t, "http://127.0.0.1:1")
	ctx := context.Background()
	if _, errs, code := c.run(ctx, "", "usage"); code != 0 {
		t.Fatalf("usage: %s", errs)
	}
	db, err := store.Open(ctx, c.env["TOLLGATE_DB"])
	if err != nil {
		t.Fatal(err)
	}
	st, err := ledger.OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	rc := ledger.NewRefusalCounter(st, nil)
	for range 3 {
		rc.Add(ledger.Refusal{Client: "192.0.2.7", TokenID: "tok_rev", Workspace: "ws-r", Reason: "revoked", Dialect: "openai-chat"})
	}
	rc.Add(ledger.Refusal{Client: "192.0.2.8", Reason: "invalid", Dialect: "gemini"})
	if err := rc.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	db.Close()

	out, errs, code := c.run(ctx, "", "usage", "--refusals")
	if code != 0 {
		t.Fatalf("usage --refusals: %s", errs)
	}
	for _, want := range []string{"CLIENT", "192.0.2.7", "revoked", "ws-r", "tok_rev", "192.0.2.8", "invalid"} {
		if !strings.Contains(out, want) {
			t.Errorf("usage --refusals lacks %q:\n%s", want, out)
		}
	}
	out, _, _ = c.run(ctx, "", "usage", "--refusals", "--workspace", "ws-r", "--format", "json")
	if !strings.Contains(out, `"token_id": "tok_rev"`) || strings.Contains(out, "192.0.2.8") || !strings.Contains(out, `"count": 3`) {
		t.Errorf("usage --refusals --workspace ws-r --format json:\n%s", out)
	}
}

func TestAuthLimitSettingsAreStrict(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // if serve accepted the value, it returns 0 at once
	for _, env := range []string{"TOLLGATE_AUTH_FAILURE_BURST", "TOLLGATE_AUTH_FAILURES_PER_MIN", "TOLLGATE_AUTH_FAILURES_GLOBAL"} {
		c := newCLI(t, fakeURL)
		c.env[env] = "20/min"
		_, errs, code := c.run(ctx, "", "serve")
		if code == 0 || !strings.Contains(errs, env+`="20/min"`) || !strings.Contains(errs, "not a whole number") {
			t.Errorf("%s=20/min: code %d, stderr %s", env, code, errs)
		}
	}
}
