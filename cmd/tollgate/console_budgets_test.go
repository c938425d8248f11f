package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// TestServeConsoleBudgetsAndAudit: serve wires the Budgets and Audit
// pages to the store, ledger and audit log the CLI and the admin API use.
// A budget set with the CLI is listed, its CLI entry is in the audit log;
// a budget set on the page is enforced by the admin API's view of it and
// recorded with the console as its actor.
func TestServeConsoleBudgetsAndAudit(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	if out, errs, code := c.run(ctx, "", "budget", "set", "--project", "acme", "--cost", "12.50", "--window", "month"); code != 0 {
		t.Fatalf("budget set: %d %s %s", code, out, errs)
	}

	_, adminBase, _, stop := serveInProcess(t, c)

	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	do := func(method, path string, form url.Values) (int, string) {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, adminBase+path, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", adminBase)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := do("POST", "/ui/signin", url.Values{"token": {"adm"}}); code != 200 {
		t.Fatalf("sign-in: %d", code)
	}
	code, page := do("GET", "/ui/budgets", nil)
	if code != 200 || !strings.Contains(page, `data-limit="12500000"`) || !strings.Contains(page, "$12.50") {
		t.Fatalf("budgets page: %d\n%s", code, page)
	}
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if csrf == nil {
		t.Fatal("no CSRF token on the budgets page")
	}
	code, page = do("POST", "/ui/budgets/set", url.Values{"csrf": {csrf[1]}, "scope_type": {"user"}, "scope_id": {"alice"},
		"metric": {"tokens"}, "limit": {"5000"}, "window": {"day"}, "mode": {"hard"}})
	if code != 200 || !strings.Contains(page, `id="flash"`) || !strings.Contains(page, "5,000 tokens") {
		t.Fatalf("set from the page: %d\n%s", code, page)
	}
	// The admin API sees the page's budget at once (this replica reloaded).
	req, _ := http.NewRequest("GET", adminBase+"/admin/v1/budgets/effective?user=alice", nil)
	req.Header.Set("Authorization", "Bearer adm")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	eff, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(eff), `"limit":5000`) {
		t.Errorf("effective policies for alice: %s", eff)
	}
	code, page = do("GET", "/ui/audit", nil)
	if code != 200 || !strings.Contains(page, `data-action="budget.set" data-actor-kind="cli"`) || !strings.Contains(page, `data-action="budget.set" data-actor-kind="console"`) {
		t.Errorf("audit page: %d, want the CLI's and the console's budget.set\n%s", code, page)
	}
	if code, page = do("GET", "/ui/audit?actor_kind=console", nil); strings.Contains(page, `data-actor-kind="cli"`) {
		t.Error("the actor kind filter shows CLI entries")
	}

	stop()
}

// serveInProcess runs serve with c's environment and returns the proxy's
// and the admin listener's URLs, serve's log, and stop, which ends serve
// and fails the test unless it exits cleanly.
func serveInProcess(t *testing.T, c *cli) (base, adminBase string, logs *bytes.Buffer, stop func()) {
	t.Helper()
	sctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	logs = &bytes.Buffer{}
	done := make(chan int, 1)
	for k, v := range c.env {
		t.Setenv(k, v)
	}
	go func() { done <- run(sctx, []string{"serve"}, strings.NewReader(""), pw, logs); pw.Close() }()
	base, adminBase = serveAddrs(t, pr, logs)
	return base, adminBase, logs, func() {
		t.Helper()
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Fatalf("serve exited %d: %s", code, logs)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("serve did not shut down")
		}
	}
}
