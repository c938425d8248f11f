package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
	"github.com/tollgate/tollgate/resolver"
)

// dialectCase is one metered request shape per dialect.
type dialectCase struct {
	name    string
	dialect upstreamtest.Dialect
	path    string
	body    string
	key     string
	stream  bool
	// hdr are extra request headers, in pairs.
	hdr []string
}

func dialectCases() []dialectCase {
	return []dialectCase{
		{"AnthropicJSON", upstreamtest.Anthropic, "/anthropic/v1/messages?beta=true", `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`, canaryAnthropic, false, []string{"anthropic-version", "2023-06-01"}},
		{"AnthropicStream", upstreamtest.Anthropic, "/anthropic/v1/messages?beta=true", `{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}`, canaryAnthropic, true, []string{"anthropic-version", "2023-06-01", "anthropic-beta", "claude-code-20250219"}},
		{"ChatJSON", upstreamtest.OpenAIChat, "/openai/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, canaryOpenAI, false, nil},
		{"ChatStreamAskingUsage", upstreamtest.OpenAIChat, "/openai/v1/chat/completions", `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`, canaryOpenAI, true, nil},
		{"ResponsesJSON", upstreamtest.OpenAIResponses, "/openai/v1/responses", `{"model":"gpt-5","input":"hi"}`, canaryOpenAI, false, nil},
		{"ResponsesStream", upstreamtest.OpenAIResponses, "/openai/v1/responses", `{"model":"gpt-5","input":"hi","stream":true}`, canaryOpenAI, true, nil},
		{"GeminiJSON", upstreamtest.Gemini, "/gemini/v1beta/models/gemini-2.5-flash:generateContent", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`, canaryGemini, false, nil},
		{"GeminiStream", upstreamtest.Gemini, "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`, canaryGemini, true, nil},
	}
}

// TestEveryDialectForwardsBytesUnchangedWithTheRealKey is the core promise:
// the provider sees the real key and never the workspace token, the client
// receives exactly the provider's bytes, and the record has exact usage.
func TestEveryDialectForwardsBytesUnchangedWithTheRealKey(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	for _, tc := range dialectCases() {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do("POST", tc.path, tok, tc.body, tc.hdr...)
			got := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, got)
			}
			up := e.lastFake()
			if up.Key != tc.key {
				t.Errorf("provider saw key %q, want the platform key", up.Key)
			}
			for k, vs := range up.Header {
				for _, v := range vs {
					if strings.Contains(v, tok) {
						t.Errorf("workspace token reached the provider in header %s", k)
					}
				}
			}
			if got := up.Header.Get("Accept-Encoding"); got != "identity" {
				t.Errorf("upstream Accept-Encoding = %q, want identity", got)
			}
			if !bytes.Equal(got, up.Response) {
				t.Errorf("client bytes differ from provider bytes:\nclient:   %q\nprovider: %q", got, up.Response)
			}
			if ct := resp.Header.Get("Content-Type"); tc.stream != strings.HasPrefix(ct, "text/event-stream") {
				t.Errorf("content type %q for stream=%v", ct, tc.stream)
			}
			if want := up.Path; !strings.HasSuffix(tc.path[:strings.IndexAny(tc.path+"?", "?")], want) {
				t.Errorf("provider path %q is not the client's path after the route", want)
			}
			if strings.Contains(tc.path, "?") && up.RawQuery != tc.path[strings.Index(tc.path, "?")+1:] {
				t.Errorf("query %q not forwarded unchanged (got %q)", tc.path, up.RawQuery)
			}
			rec := e.record(resp)
			want := upstreamtest.DefaultUsage.Normalised(tc.dialect)
			if rec.Usage == nil || *rec.Usage != asMetering(want) {
				t.Errorf("record usage = %+v, want %+v", rec.Usage, want)
			}
			if rec.Outcome != metering.OutcomeOK || rec.Source != metering.SourceUpstream {
				t.Errorf("record outcome/source = %s/%s, want ok/upstream", rec.Outcome, rec.Source)
			}
			if rec.Workspace != "ws-1" || rec.Project != "proj-1" || rec.User != "user-1" || rec.CredTier != "platform" || rec.CredentialID == "" {
				t.Errorf("record identity = %+v", rec)
			}
			if rec.Stream != tc.stream || rec.Status != 200 || rec.BytesOut != int64(len(got)) {
				t.Errorf("record stream/status/bytes = %v/%d/%d, want %v/200/%d", rec.Stream, rec.Status, rec.BytesOut, tc.stream, len(got))
			}
		})
	}
}

// TestAnthropicHeadersFollowTheAllowList pins the upstream header policy:
// version and betas pass, client carriers and tenant headers do not.
func TestAnthropicHeadersFollowTheAllowList(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	resp := e.do("POST", "/anthropic/v1/messages", "", `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`,
		"x-api-key", tok, "anthropic-beta", "a-1,b-2", "x-claude-code-session-id", "sess-9",
		"x-goog-api-key", "AIzaSyREALKEYFROMWORKSPACE000000", "x-tenant", "ws-1", "Accept-Encoding", "gzip, br")
	readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	up := e.lastFake()
	if up.Header.Get("Anthropic-Beta") != "a-1,b-2" || up.Header.Get("X-Claude-Code-Session-Id") != "sess-9" {
		t.Errorf("allowed headers not forwarded: %v", up.Header)
	}
	if up.Header.Get("Anthropic-Version") != "2023-06-01" {
		t.Errorf("default anthropic-version not set: %q", up.Header.Get("Anthropic-Version"))
	}
	for _, h := range []string{"X-Goog-Api-Key", "X-Tenant", "Authorization"} {
		if v := up.Header.Get(h); v != "" {
			t.Errorf("header %s reached the provider: %q", h, v)
		}
	}
	if up.Key != canaryAnthropic {
		t.Errorf("provider key = %q", up.Key)
	}
	if rec := e.record(resp); rec.Session != "sess-9" || rec.Harness != "" {
		t.Errorf("record session/harness = %q/%q", rec.Session, rec.Harness)
	}
}

// TestBearerWinsOverXAPIKey: Claude Code sends both headers when both
// variables are set; the Bearer one is the token.
func TestBearerWinsOverXAPIKey(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	resp := e.do("POST", "/anthropic/v1/messages", tok, `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`, "x-api-key", "sk-ant-something-else-entirely")
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200: Bearer should win", resp.StatusCode)
	}
}

// TestCountTokensIsProxiedButNotMetered (BerriAI/litellm#13252).
func TestCountTokensIsProxiedButNotMetered(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "claude-code")
	resp := e.do("POST", "/anthropic/v1/messages/count_tokens?beta=true", tok, `{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}`)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "input_tokens") {
		t.Fatalf("count_tokens: %d %s", resp.StatusCode, body)
	}
	rec := e.record(resp)
	if rec.Source != metering.SourceNone || rec.Usage != nil {
		t.Errorf("count_tokens was metered: source %s usage %+v", rec.Source, rec.Usage)
	}
	if rec.Harness != "claude-code" {
		t.Errorf("harness = %q", rec.Harness)
	}
}

// TestGeminiKeyQueryIsATokenCarrier: ?key= authenticates and never
// travels upstream.
func TestGeminiKeyQueryIsATokenCarrier(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	resp := e.do("POST", "/gemini/v1beta/models/gemini-2.5-flash:generateContent?key="+tok+"&foo=bar", "", `{"contents":[]}`)
	readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	up := e.lastFake()
	if up.RawQuery != "foo=bar" || up.Key != canaryGemini {
		t.Errorf("upstream query %q key %q", up.RawQuery, up.Key)
	}
}

// TestHarnessIsRecognisedByUserAgent when the token is not tied to one.
func TestHarnessIsRecognisedByUserAgent(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	resp := e.do("POST", "/openai/v1/responses", tok, `{"model":"gpt-5","input":"hi"}`, "User-Agent", "codex_exec/0.169.0 (Debian 12.0.0; x86_64)")
	resp.Body.Close()
	if rec := e.record(resp); rec.Harness != "codex" {
		t.Errorf("harness = %q, want codex", rec.Harness)
	}
}

// TestModelsListingPassesThrough on each dialect's GET route.
func TestModelsListingPassesThrough(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	for _, p := range []string{"/anthropic/v1/models?limit=1000", "/openai/v1/models", "/gemini/v1beta/models"} {
		resp := e.do("GET", p, tok, "")
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, e.lastFake().Response) {
			t.Errorf("%s: %d %s", p, resp.StatusCode, body)
		}
	}
}

// TestUnmeteredAnswersAreRecordedOK: a 2xx on a path tollgate does not
// meter (count_tokens, model listings) completed; no meter was fed, so no
// terminal event could be missed, and the record must not say truncated.
func TestUnmeteredAnswersAreRecordedOK(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	for _, tc := range []struct{ name, method, path, body string }{
		{"AnthropicCountTokens", "POST", "/anthropic/v1/messages/count_tokens", `{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}`},
		{"AnthropicModels", "GET", "/anthropic/v1/models", ""},
		{"OpenAIModels", "GET", "/openai/v1/models", ""},
		{"GeminiModels", "GET", "/gemini/v1beta/models", ""},
		{"GeminiCountTokens", "POST", "/gemini/v1beta/models/gemini-2.5-flash:countTokens", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`},
		{"ResponsesInputTokens", "POST", "/openai/v1/responses/input_tokens", `{"model":"gpt-5","input":"hi"}`},
		{"ResponsesGet", "GET", "/openai/v1/responses/" + createResponse(t, e, tok), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do(tc.method, tc.path, tok, tc.body)
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			rec := e.record(resp)
			if rec.Outcome != metering.OutcomeOK || rec.Source != metering.SourceNone || rec.Usage != nil {
				t.Errorf("record outcome/source/usage = %s/%s/%+v, want ok/none/nil", rec.Outcome, rec.Source, rec.Usage)
			}
		})
	}
}

func asMetering(u upstreamtest.Usage) metering.Usage {
	return metering.Usage{InputUncached: u.InputUncached, CacheRead: u.CacheRead, CacheWrite5m: u.CacheWrite5m,
		CacheWrite1h: u.CacheWrite1h, Output: u.Output, Reasoning: u.Reasoning}
}

// TestRequestIDsSortByTime: ids are unique and sort in time order, which
// keeps the usage table's primary-key inserts at its end.
func TestRequestIDsSortByTime(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 7, 0, 0, 0, time.UTC)
	seen := map[string]bool{}
	prev := ""
	for i := 0; i < 1000; i++ {
		id := newRequestID(t0.Add(time.Duration(i) * time.Millisecond))
		if len(id) != 30 || !strings.HasPrefix(id, "req_") || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		if id <= prev {
			t.Fatalf("%q does not sort after %q", id, prev)
		}
		seen[id], prev = true, id
	}
}

// hungStore is a credential resolver whose store does not answer: Resolve
// returns only when its context ends (or the test does, so that a context
// that never ends fails the test instead of hanging it), and hands that
// context to the test.
type hungStore struct {
	ctxs     chan context.Context
	testDone chan struct{}
}

func (h hungStore) Resolve(ctx context.Context, _ resolver.Request) (resolver.Target, error) {
	h.ctxs <- ctx
	select {
	case <-ctx.Done():
		return resolver.Target{}, ctx.Err()
	case <-h.testDone:
		return resolver.Target{}, errors.New("the test ended")
	}
}

// TestLookupsHaveADeadlineAndEndAtShutdown: the store lookups before the
// upstream call get a context with a deadline, which shutdown (cancelling
// the base context) ends; the client then gets a 503 in its dialect, not
// a request held until the store recovers.
func TestLookupsHaveADeadlineAndEndAtShutdown(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	hung := hungStore{ctxs: make(chan context.Context, 1), testDone: make(chan struct{})}
	base, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Registry: e.reg, Auth: e.svc, Resolver: hung, Sink: e.sink, BaseContext: base, Logger: e.srv.log})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	// Before Shutdown, which waits for the handler.
	defer close(hung.testDone)

	type answer struct {
		status int
		body   string
	}
	got := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://"+ln.Addr().String()+"/anthropic/v1/messages", strings.NewReader(`{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- answer{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- answer{resp.StatusCode, string(b)}
	}()
	var ctx context.Context
	select {
	case ctx = <-hung.ctxs:
	case <-time.After(5 * time.Second):
		t.Fatal("the resolver was not called")
	}
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > preUpstreamTimeout {
		t.Errorf("lookup context deadline %v (set: %v), want one within %s", d, ok, preUpstreamTimeout)
	}
	cancel()
	select {
	case a := <-got:
		if a.status != http.StatusServiceUnavailable || !strings.Contains(a.body, "shutting down") || !strings.Contains(a.body, `"type":"error"`) {
			t.Errorf("client got %d %s, want 503 saying tollgate is shutting down", a.status, a.body)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the request still waits on the store after shutdown")
	}
}
