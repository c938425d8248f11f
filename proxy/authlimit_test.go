package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/resolver"
)

const (
	anthropicPath = "/anthropic/v1/messages"
	anthropicBody = `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`
	chatPath      = "/openai/v1/chat/completions"
	chatBody      = `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
)

// refusalEnv is a testEnv whose refusals go to a real ledger on SQLite.
func refusalEnv(t *testing.T, lim AuthLimitConfig) (*testEnv, *ledger.Store, *ledger.RefusalCounter) {
	t.Helper()
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "usage.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := ledger.OpenStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	rc := ledger.NewRefusalCounter(st, nil)
	return newEnv(t, envOptions{authLimits: lim, refusals: rc}), st, rc
}

// clientFrom is an HTTP client whose connections come from source, another
// loopback address: the limiter keys by client address.
func clientFrom(source string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

func (e *testEnv) doFrom(c *http.Client, path, token, body string) (int, http.Header, []byte) {
	e.t.Helper()
	method := "POST"
	if body == "" {
		method = "GET"
	}
	req, err := http.NewRequest(method, e.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("anthropic-version", "2023-06-01")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Close {
		// net/http takes Connection out of the headers into Close.
		resp.Header.Set("Connection", "close")
	}
	return resp.StatusCode, resp.Header, readAll(e.t, resp.Body)
}

// refusalRows flushes rc and returns the refusals table.
func refusalRows(t *testing.T, st *ledger.Store, rc *ledger.RefusalCounter) []ledger.RefusalRow {
	t.Helper()
	if err := rc.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	rows, err := st.Refusals(context.Background(), time.Now().Add(-time.Hour), time.Now().Add(time.Hour), "", 100)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// badToken is well formed but unknown: it costs a store query.
func badToken(i int) string {
	return resolver.TokenPrefix + fmt.Sprintf("%043d", i)
}

func TestBadTokenFloodIsThrottledAndUnrecorded(t *testing.T) {
	const burst = 5
	e, st, rc := refusalEnv(t, AuthLimitConfig{Burst: burst, PerMinute: 1})
	good := e.token("ws-good", "proj-1", "user-1", "")
	flooder, other := clientFrom("127.0.0.1"), clientFrom("127.0.0.2")

	// Accepted before the flood: the same address keeps it working.
	if code, _, b := e.doFrom(flooder, chatPath, good, chatBody); code != 200 {
		t.Fatalf("valid token: %d %s", code, b)
	}
	before := len(e.sink.Records())
	if _, err := e.svc.Authenticate(context.Background(), badToken(0)); err == nil {
		t.Fatal("the bad token authenticates")
	}
	for i := range burst {
		if code, _, b := e.doFrom(flooder, anthropicPath, badToken(i), anthropicBody); code != 401 {
			t.Fatalf("bad token %d: %d %s", i, code, b)
		}
	}
	for _, tc := range []struct{ path, body, shape string }{
		{anthropicPath, anthropicBody, "anthropic"},
		// No body: a request whose body is left unread closes anyway.
		{"/openai/v1/models", "", "openai"},
		{"/gemini/v1beta/models/gemini-2.5-flash:generateContent", `{"contents":[]}`, "gemini"},
	} {
		code, h, b := e.doFrom(flooder, tc.path, badToken(99), tc.body)
		if code != 429 {
			t.Fatalf("%s over the limit: %d %s", tc.shape, code, b)
		}
		if h.Get("Connection") != "close" {
			t.Errorf("%s: 429 keeps the connection open (Connection %q)", tc.shape, h.Get("Connection"))
		}
		if ra, err := strconv.Atoi(h.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
			t.Errorf("%s: Retry-After %q, want whole seconds in [1, 60]", tc.shape, h.Get("Retry-After"))
		}
		var env struct {
			Type  string `json:"type"`
			Error struct {
				Type    string `json:"type"`
				Code    any    `json:"code"`
				Status  string `json:"status"`
				Message string `json:"message"`
				Details []struct {
					Type       string `json:"@type"`
					RetryDelay string `json:"retryDelay"`
				} `json:"details"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatalf("%s: body %s: %v", tc.shape, b, err)
		}
		switch tc.shape {
		case "anthropic":
			if env.Type != "error" || env.Error.Type != "rate_limit_error" {
				t.Errorf("anthropic envelope: %s", b)
			}
		case "openai":
			if env.Error.Type != "requests" || env.Error.Code != "rate_limit_exceeded" {
				t.Errorf("openai envelope: %s", b)
			}
		case "gemini":
			if env.Error.Status != "RESOURCE_EXHAUSTED" || env.Error.Code != 429.0 || len(env.Error.Details) != 1 ||
				env.Error.Details[0].Type != "type.googleapis.com/google.rpc.RetryInfo" || env.Error.Details[0].RetryDelay != h.Get("Retry-After")+"s" {
				t.Errorf("gemini envelope: %s", b)
			}
		}
		if !strings.Contains(env.Error.Message, "failed authentications from this address") {
			t.Errorf("%s: message %q", tc.shape, env.Error.Message)
		}
	}

	// Known good tokens pass: on the flooded address, and from elsewhere.
	if code, _, b := e.doFrom(flooder, chatPath, good, chatBody); code != 200 {
		t.Errorf("accepted token from the flooded address: %d %s", code, b)
	}
	fresh := e.token("ws-other", "proj-1", "user-2", "")
	if code, _, b := e.doFrom(other, chatPath, fresh, chatBody); code != 200 {
		t.Errorf("another client: %d %s", code, b)
	}
	// A new token from the flooded address is not known good: refused.
	if code, _, b := e.doFrom(flooder, chatPath, e.token("ws-new", "proj-1", "user-3", ""), chatBody); code != 429 {
		t.Errorf("new token from the flooded address: %d %s", code, b)
	}

	testkit.Eventually(t, 2*time.Second, "the records of the accepted requests", func() bool { return len(e.sink.Records()) >= before+2 })
	for _, r := range e.sink.Records() {
		if r.Outcome == "rejected" {
			t.Errorf("a usage record for a refusal: status %d, token %q", r.Status, r.TokenID)
		}
	}
	counts := map[string]int64{}
	for _, r := range refusalRows(t, st, rc) {
		if r.Client != "127.0.0.1" {
			t.Errorf("refusal from %q, want 127.0.0.1", r.Client)
		}
		counts[r.Reason+"/"+r.Dialect] += r.Count
	}
	want := map[string]int64{"invalid/anthropic-messages": burst, "throttled/anthropic-messages": 1, "throttled/openai-chat": 2, "throttled/gemini": 1}
	for k, n := range want {
		if counts[k] != n {
			t.Errorf("refusals %s = %d, want %d (all: %v)", k, counts[k], n, counts)
		}
	}
}

func TestGlobalAuthFailureLimitSpansAddresses(t *testing.T) {
	e, _, _ := refusalEnv(t, AuthLimitConfig{Burst: 100, PerMinute: 100, GlobalPerSecond: 3})
	a, b := clientFrom("127.0.0.1"), clientFrom("127.0.0.3")
	for i := range 3 {
		c := a
		if i%2 == 1 {
			c = b
		}
		if code, _, body := e.doFrom(c, chatPath, badToken(i), chatBody); code != 401 {
			t.Fatalf("failure %d: %d %s", i, code, body)
		}
	}
	code, h, body := e.doFrom(clientFrom("127.0.0.4"), chatPath, badToken(9), chatBody)
	if code != 429 || h.Get("Retry-After") != "1" || !strings.Contains(string(body), "at this gateway") {
		t.Errorf("over the global limit: %d Retry-After %q %s", code, h.Get("Retry-After"), body)
	}
}

func TestRefusedTokenRefusalCarriesTokenAndWorkspace(t *testing.T) {
	e, st, rc := refusalEnv(t, AuthLimitConfig{})
	ctx := context.Background()
	revoked, info, err := e.svc.IssueToken(ctx, resolver.TokenSpec{Workspace: "ws-rev", Project: "proj-1", User: "user-1", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.RevokeToken(ctx, info.ID); err != nil {
		t.Fatal(err)
	}
	codex, cinfo, err := e.svc.IssueToken(ctx, resolver.TokenSpec{Workspace: "ws-codex", Project: "proj-1", User: "user-1", Harness: "codex", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c := clientFrom("127.0.0.1")
	for range 2 { // the second is answered from the negative cache
		if code, _, b := e.doFrom(c, chatPath, revoked, chatBody); code != 401 || !strings.Contains(string(b), "revoked") {
			t.Fatalf("revoked token: %d %s", code, b)
		}
	}
	if code, _, b := e.doFrom(c, anthropicPath, codex, anthropicBody); code != 403 {
		t.Fatalf("codex token on anthropic: %d %s", code, b)
	}
	if n := len(e.sink.Records()); n != 0 {
		t.Errorf("%d usage records for refusals", n)
	}
	type key struct{ reason, token, ws string }
	got := map[key]int64{}
	for _, r := range refusalRows(t, st, rc) {
		got[key{r.Reason, r.TokenID, r.Workspace}] += r.Count
	}
	if n := got[key{"revoked", info.ID, "ws-rev"}]; n != 2 {
		t.Errorf("revoked refusals with token %s and workspace = %d, want 2 (all: %v)", info.ID, n, got)
	}
	if n := got[key{"wrong_harness", cinfo.ID, "ws-codex"}]; n != 1 {
		t.Errorf("wrong-harness refusals with token %s = %d, want 1 (all: %v)", cinfo.ID, n, got)
	}
}

func TestAuthLimiterBucketsRefillAndStayBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	l := newAuthLimiter(AuthLimitConfig{Burst: 2, PerMinute: 60, GlobalPerSecond: -1}, now)
	v4 := &net.TCPAddr{IP: net.ParseIP("192.0.2.1")}
	for i := range 2 {
		if !l.take(v4, "t", now).ok {
			t.Fatalf("take %d refused within the burst", i)
		}
	}
	d := l.take(v4, "t", now)
	if d.ok || d.global || retryAfterSeconds(d.wait) != 1 {
		t.Fatalf("over the burst: %+v", d)
	}
	if !l.take(v4, "t", now.Add(time.Second)).ok {
		t.Error("not refilled after a second at 60/min")
	}
	// One IPv6 /64 is one client, however it rotates its low bits.
	a1 := &net.TCPAddr{IP: net.ParseIP("2001:db8:1:2::1")}
	a2 := &net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::9")}
	l.take(a1, "t", now)
	l.take(a2, "t", now)
	if l.take(a1, "t", now).ok {
		t.Error("an IPv6 /64 got a bucket per address")
	}
	// A success gives back its own token, not those failures spent.
	ok := l.take(&net.TCPAddr{IP: net.ParseIP("192.0.2.2")}, "good", now)
	l.accepted(ok, "", now)
	for i := range authLimitAddresses + 10 {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		l.take(&net.TCPAddr{IP: ip.AsSlice()}, "t", now)
	}
	if n := l.addrs.Len(); n > authLimitAddresses {
		t.Errorf("%d addresses tracked, cap %d", n, authLimitAddresses)
	}
	if l.addrs.Contains(netip.MustParsePrefix("192.0.2.1/32")) {
		t.Error("the oldest address was not evicted")
	}
	off := newAuthLimiter(AuthLimitConfig{Burst: -1, GlobalPerSecond: -1}, now)
	if off != nil {
		t.Error("both limits off still builds a limiter")
	}
	for range 100 {
		if d := off.take(v4, "t", now); !d.ok {
			t.Fatal("limits off, a check was refused")
		}
	}
}

func TestRefusalReasonsHaveTheirOwnMetricSeries(t *testing.T) {
	for _, r := range []string{refusedMissing, refusedInvalid, refusedExpired, refusedRevoked, refusedHarness, refusedThrottled} {
		if !slices.Contains(metering.AuthRefusalReasons, r) {
			t.Errorf("refusal reason %q is counted as metering's \"other\"", r)
		}
	}
}

// TestAdminTokenGuessesAreLimited: the admin token is the most valuable
// guess, so its failures count against the same per-address bucket.
func TestAdminTokenGuessesAreLimited(t *testing.T) {
	e := newEnv(t, envOptions{authLimits: AuthLimitConfig{Burst: 3, PerMinute: 1, GlobalPerSecond: 1000}})
	statuses := map[int]int{}
	for range 6 {
		req, _ := http.NewRequest("GET", e.AdminURL+"/admin/v1/tokens", nil)
		req.Header.Set("Authorization", "Bearer not-the-admin-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		statuses[resp.StatusCode]++
		if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	if statuses[http.StatusUnauthorized] != 3 || statuses[http.StatusTooManyRequests] != 3 {
		t.Fatalf("statuses %v: want 3 × 401 then 3 × 429", statuses)
	}
}
