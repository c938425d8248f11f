package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	anthropicopt "github.com/anthropics/anthropic-sdk-go/option"
	oai "github.com/openai/openai-go/v3"
	oaiopt "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/valyala/fasthttp"

	"github.com/tollgate/tollgate/health"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
	"github.com/tollgate/tollgate/resolver"
)

// Keys of the failover candidates: like the canaries, they must appear
// nowhere but in the provider's auth header.
const (
	altKey  = "sk-ant-api03-CANARYalternateKEY0123456789abcdef"
	alt2Key = "sk-ant-api03-CANARYsecondaltKEY0123456789abcdef"
)

// withAlternates resolves with the real resolver and adds alternates, as
// the resolver does for a binding of several credentials.
type withAlternates struct {
	inner CredentialResolver
	// primaryURL, if set, is the primary's base URL override.
	primaryURL string
	alts       []resolver.Target
}

func (w *withAlternates) Resolve(ctx context.Context, req resolver.Request) (resolver.Target, error) {
	t, err := w.inner.Resolve(ctx, req)
	if err != nil {
		return t, err
	}
	if w.primaryURL != "" {
		t.BaseURL = w.primaryURL
	}
	t.Alternates = w.alts
	return t, nil
}

func alternate(id, provider, key, baseURL string) resolver.Target {
	return resolver.Target{Provider: provider, BaseURL: baseURL, Secret: resolver.NewSecret(key), Tier: resolver.TierPlatform, CredentialID: id}
}

// flakyProvider is a fake provider that answers its first fails requests
// (every one when fails is negative) with status and header, then
// normally.
type flakyProvider struct {
	fake   *upstreamtest.Server
	URL    string
	status int
	header map[string]string
	mu     sync.Mutex
	fails  int
	hits   atomic.Int64
}

func startFlaky(t *testing.T, status, fails int, header ...string) *flakyProvider {
	t.Helper()
	return startFlakyWith(t, upstreamtest.Config{}, status, fails, header...)
}

func startFlakyWith(t *testing.T, cfg upstreamtest.Config, status, fails int, header ...string) *flakyProvider {
	t.Helper()
	cfg.Accept = func(string) bool { return true }
	fake, err := upstreamtest.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyProvider{fake: fake, status: status, fails: fails, header: map[string]string{}}
	for i := 0; i+1 < len(header); i += 2 {
		f.header[header[i]] = header[i+1]
	}
	ts := httptest.NewServer(f)
	t.Cleanup(ts.Close)
	f.URL = ts.URL
	return f
}

func (f *flakyProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.hits.Add(1)
	f.mu.Lock()
	fail := f.fails != 0
	if f.fails > 0 {
		f.fails--
	}
	f.mu.Unlock()
	if fail {
		for k, v := range f.header {
			w.Header().Set(k, v)
		}
		r.Header.Set(upstreamtest.HeaderFault, "status="+strconv.Itoa(f.status))
	}
	f.fake.ServeHTTP(w, r)
}

// always makes f fail every request.
func (f *flakyProvider) always() *flakyProvider {
	f.mu.Lock()
	f.fails = -1
	f.mu.Unlock()
	return f
}

// closedURL is a base URL nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

// failoverEnv is a tollgate whose requests have the platform credential
// first (at primaryURL when set), then alts; the env's own fake also
// accepts the alternates' keys.
func failoverEnv(t *testing.T, primaryURL string, fo FailoverConfig, alts ...resolver.Target) *testEnv {
	t.Helper()
	return newEnv(t, envOptions{
		fake:     upstreamtest.Config{Keys: append([]string{altKey, alt2Key}, canaries...)},
		failover: fo,
		resolver: func(r CredentialResolver) CredentialResolver {
			return &withAlternates{inner: r, primaryURL: primaryURL, alts: alts}
		},
	})
}

// turn sends one Anthropic request through e with a fresh token and
// reads its answer whole.
func (e *testEnv) turn(body string, hdr ...string) (*http.Response, []byte) {
	e.t.Helper()
	tok := e.token("ws", "p", "u", "")
	resp := e.do("POST", "/anthropic/v1/messages", tok, body, hdr...)
	b := readAll(e.t, resp.Body)
	resp.Body.Close()
	return resp, b
}

// assertNoKeys fails if a provider key is in the response, the record
// (attempts included) or the logs.
func assertNoKeys(t *testing.T, e *testEnv, resp *http.Response, body []byte, rec metering.Record) {
	t.Helper()
	rj, _ := json.Marshal(rec)
	for _, k := range append([]string{altKey, alt2Key}, canaries...) {
		if bytes.Contains(body, []byte(k)) || strings.Contains(fmt.Sprint(resp.Header), k) {
			t.Errorf("a provider key reached the client")
		}
		if bytes.Contains(rj, []byte(k)) {
			t.Errorf("a provider key is in the record: %s", rj)
		}
		if strings.Contains(e.logs.String(), k) {
			t.Errorf("a provider key is in the logs")
		}
	}
}

func wantAttempts(t *testing.T, rec metering.Record, want ...metering.Attempt) {
	t.Helper()
	if len(rec.Attempts) != len(want) {
		t.Fatalf("attempts = %+v, want %d", rec.Attempts, len(want))
	}
	for i, w := range want {
		g := rec.Attempts[i]
		if g.CredentialID != w.CredentialID || g.Provider != w.Provider || g.Status != w.Status || g.Error != w.Error || g.MayBill != w.MayBill {
			t.Errorf("attempt %d = %+v, want %+v", i, g, w)
		}
		if g.Duration <= 0 {
			t.Errorf("attempt %d has no duration", i)
		}
	}
}

func TestFailoverOnConnectRefusedReachesTheNextCredential(t *testing.T) {
	e := failoverEnv(t, closedURL(t), FailoverConfig{}, alternate("cred-alt", "anthropic", altKey, ""))
	resp, body := e.turn(anthropicStreamBody)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("message_stop")) {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if up := e.lastFake(); up.Key != altKey {
		t.Errorf("the answer came with key %q, want the alternate's", up.Key)
	}
	rec := e.record(resp)
	if rec.CredentialID != "cred-alt" || rec.Outcome != metering.OutcomeOK || rec.Usage == nil {
		t.Errorf("record = %s/%s/%v, want the alternate's usage", rec.CredentialID, rec.Outcome, rec.Usage)
	}
	primary := rec.Attempts
	if len(primary) > 0 && primary[0].CredentialID == "cred-alt" {
		t.Fatal("the alternate was tried first")
	}
	first := metering.Attempt{Provider: "anthropic", Error: "connection_refused"}
	if len(primary) > 0 {
		first.CredentialID = primary[0].CredentialID
	}
	wantAttempts(t, rec, first, metering.Attempt{CredentialID: "cred-alt", Provider: "anthropic", Status: 200})
	assertNoKeys(t, e, resp, body, rec)
}

func TestFailoverOnRetryableStatuses(t *testing.T) {
	for _, status := range []int{429, 500, 502, 503, 504, 529} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			bad := startFlaky(t, status, 0).always()
			// The fake's 429 asks for one second: the same credential is
			// tried once more first, which would slow this test down.
			e := failoverEnv(t, bad.URL, FailoverConfig{RetryAfterMax: -1}, alternate("cred-alt", "anthropic", altKey, ""))
			resp, body := e.turn(`{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if bad.hits.Load() != 1 || e.lastFake().Key != altKey {
				t.Errorf("primary hit %d times, answer key %q", bad.hits.Load(), e.lastFake().Key)
			}
			rec := e.record(resp)
			if len(rec.Attempts) != 2 || rec.Attempts[0].Status != status || rec.Attempts[0].Error != "status "+strconv.Itoa(status) || rec.Attempts[1].Error != "" {
				t.Errorf("attempts = %+v", rec.Attempts)
			}
			if rec.Status != 200 || rec.CredentialID != "cred-alt" {
				t.Errorf("record = %d/%s", rec.Status, rec.CredentialID)
			}
		})
	}
}

func TestRetryAfterShortRetriesTheSameCredential(t *testing.T) {
	for _, tc := range []struct{ name, value string }{
		{"Seconds", "1"},
		// One second ahead at most: HTTP dates have whole seconds.
		{"HTTPDate", time.Now().Add(time.Second).UTC().Format(http.TimeFormat)},
		{"OpenAIMilliseconds", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := []string{"Retry-After", tc.value}
			if tc.value == "" {
				hdr = []string{"Retry-After-Ms", "300"}
			}
			primary := startFlaky(t, 503, 1, hdr...)
			e := failoverEnv(t, primary.URL, FailoverConfig{}, alternate("cred-alt", "anthropic", altKey, ""))
			resp, body := e.turn(anthropicStreamBody)
			if resp.StatusCode != 200 || !bytes.Contains(body, []byte("message_stop")) {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if primary.hits.Load() != 2 || e.fake.Counters().Requests != 0 {
				t.Errorf("primary hit %d times, alternate %d; want 2 and 0", primary.hits.Load(), e.fake.Counters().Requests)
			}
			rec := e.record(resp)
			if len(rec.Attempts) != 2 || rec.Attempts[0].CredentialID != rec.Attempts[1].CredentialID || rec.CredentialID != rec.Attempts[0].CredentialID {
				t.Errorf("attempts = %+v, want the same credential twice", rec.Attempts)
			}
		})
	}
}

func TestRetryAfterLongMovesOn(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		fo          FailoverConfig
	}{
		{"Seconds", "30", FailoverConfig{}},
		{"HTTPDate", time.Now().Add(time.Minute).UTC().Format(http.TimeFormat), FailoverConfig{}},
		// Short enough to wait out, but not within the deadline.
		{"PastTheDeadline", "1", FailoverConfig{Deadline: 500 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			primary := startFlaky(t, 529, 1, "Retry-After", tc.value)
			e := failoverEnv(t, primary.URL, tc.fo, alternate("cred-alt", "anthropic", altKey, ""))
			start := time.Now()
			resp, body := e.turn(anthropicStreamBody)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if d := time.Since(start); d > 900*time.Millisecond {
				t.Errorf("took %s: the Retry-After was waited for", d)
			}
			if primary.hits.Load() != 1 || e.lastFake().Key != altKey {
				t.Errorf("primary hit %d times; answer key %q", primary.hits.Load(), e.lastFake().Key)
			}
		})
	}
}

func TestFailoverDeadlineBoundsTheWait(t *testing.T) {
	var urls []string
	var flaky []*flakyProvider
	for range 5 {
		f := startFlakyWith(t, upstreamtest.Config{TTFB: 100 * time.Millisecond}, 503, -1)
		flaky = append(flaky, f)
		urls = append(urls, f.URL)
	}
	var alts []resolver.Target
	for i, u := range urls[1:] {
		alts = append(alts, alternate("cred-"+strconv.Itoa(i), "anthropic", altKey, u))
	}
	const deadline = 250 * time.Millisecond
	e := failoverEnv(t, urls[0], FailoverConfig{Deadline: deadline}, alts...)
	start := time.Now()
	resp, body := e.turn(anthropicStreamBody)
	elapsed := time.Since(start)
	if resp.StatusCode != 503 {
		t.Fatalf("status %d, want the last provider's 503: %s", resp.StatusCode, body)
	}
	var hits int64
	for _, f := range flaky {
		hits += f.hits.Load()
	}
	// Each attempt takes 100 ms: after the deadline no new one starts.
	if hits < 2 || hits >= 5 {
		t.Errorf("%d attempts within a %s deadline of 100 ms attempts", hits, deadline)
	}
	if elapsed > deadline+time.Second {
		t.Errorf("the client waited %s", elapsed)
	}
	if rec := e.record(resp); int64(len(rec.Attempts)) != hits || rec.Status != 503 {
		t.Errorf("record status %d with %d attempts, want %d", rec.Status, len(rec.Attempts), hits)
	}
}

func TestClientErrorsAreNotRetried(t *testing.T) {
	for _, status := range []int{400, 403, 404, 413} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			bad := startFlaky(t, status, 0).always()
			e := failoverEnv(t, bad.URL, FailoverConfig{}, alternate("cred-alt", "anthropic", altKey, ""))
			resp, body := e.turn(anthropicStreamBody)
			if resp.StatusCode != status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, body)
			}
			if bad.hits.Load() != 1 || e.fake.Counters().Requests != 0 {
				t.Errorf("primary hit %d times, alternate %d; want 1 and 0", bad.hits.Load(), e.fake.Counters().Requests)
			}
			if rec := e.record(resp); len(rec.Attempts) != 0 || rec.Status != status {
				t.Errorf("record = %d with attempts %+v", rec.Status, rec.Attempts)
			}
		})
	}
}

func TestRejectedCredentialFailsOver(t *testing.T) {
	bad := startFlaky(t, 401, 0).always()
	e := failoverEnv(t, bad.URL, FailoverConfig{}, alternate("cred-alt", "anthropic", altKey, ""))
	resp, body := e.turn(anthropicStreamBody)
	if resp.StatusCode != 200 || e.lastFake().Key != altKey {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
}

func TestStreamCutAfterItsFirstByteIsNotRetried(t *testing.T) {
	bad := startFlaky(t, 0, 0)
	e := failoverEnv(t, bad.URL, FailoverConfig{}, alternate("cred-alt", "anthropic", altKey, ""))
	tok := e.token("ws", "p", "u", "")
	resp := e.do("POST", "/anthropic/v1/messages", tok, anthropicStreamBody, upstreamtest.HeaderFault, "cut=2")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if _, last := lastEvent(string(body)); resp.StatusCode != 200 || !strings.HasPrefix(last, "event: error\n") {
		t.Fatalf("status %d, last event %q", resp.StatusCode, last)
	}
	if bad.hits.Load() != 1 || e.fake.Counters().Requests != 0 {
		t.Errorf("primary hit %d times, alternate %d; want 1 and 0", bad.hits.Load(), e.fake.Counters().Requests)
	}
	if rec := e.record(resp); rec.Outcome != metering.OutcomeTruncated || len(rec.Attempts) != 0 {
		t.Errorf("record %s, attempts %+v", rec.Outcome, rec.Attempts)
	}
}

func TestHeaderTimeoutFailsOverOnlyWhenAllowed(t *testing.T) {
	const slow = 800 * time.Millisecond
	t.Run("DefaultWaitsForTheBilledMaybeAttempt", func(t *testing.T) {
		primary := startFlakyWith(t, upstreamtest.Config{TTFB: slow}, 0, 0)
		e := failoverEnv(t, primary.URL, FailoverConfig{HeaderTimeout: 100 * time.Millisecond}, alternate("cred-alt", "anthropic", altKey, ""))
		resp, body := e.turn(anthropicStreamBody)
		if resp.StatusCode != 200 || primary.hits.Load() != 1 || e.fake.Counters().Requests != 0 {
			t.Fatalf("status %d, primary %d, alternate %d: %s", resp.StatusCode, primary.hits.Load(), e.fake.Counters().Requests, body)
		}
	})
	t.Run("AfterMaybeBilled", func(t *testing.T) {
		primary := startFlakyWith(t, upstreamtest.Config{TTFB: slow}, 0, 0)
		e := failoverEnv(t, primary.URL, FailoverConfig{HeaderTimeout: 100 * time.Millisecond, AfterMaybeBilled: true}, alternate("cred-alt", "anthropic", altKey, ""))
		start := time.Now()
		resp, body := e.turn(anthropicStreamBody)
		if resp.StatusCode != 200 || e.fake.Counters().Requests != 1 {
			t.Fatalf("status %d, alternate %d: %s", resp.StatusCode, e.fake.Counters().Requests, body)
		}
		if d := time.Since(start); d >= slow+100*time.Millisecond {
			t.Errorf("took %s: the header timeout did not cut the first attempt", d)
		}
		rec := e.record(resp)
		if len(rec.Attempts) != 2 || rec.Attempts[0].Error != "header_timeout" || !rec.Attempts[0].MayBill || rec.Attempts[1].MayBill {
			t.Errorf("attempts = %+v, want a header timeout that may be billed", rec.Attempts)
		}
	})
}

// recordingHealth refuses the credentials in refuse and records every
// observation, with the retry-after header it could read then.
type recordingHealth struct {
	mu     sync.Mutex
	refuse map[string]time.Time
	seen   []health.Observation
	ra     []string
}

func (h *recordingHealth) Check(id string) health.Verdict {
	h.mu.Lock()
	defer h.mu.Unlock()
	if until, ok := h.refuse[id]; ok {
		return health.Verdict{Until: until, Reason: "cooldown"}
	}
	return health.Verdict{OK: true}
}

func (h *recordingHealth) Observe(o health.Observation) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen = append(h.seen, o)
	ra := ""
	if o.Header != nil {
		ra = o.Header("retry-after")
	}
	h.ra = append(h.ra, ra)
}

func (h *recordingHealth) States() []health.State { return nil }

func TestExhaustedCandidatesGetTheEnvelopeWithTheLongestRetryAfter(t *testing.T) {
	hl := &recordingHealth{refuse: map[string]time.Time{"cred-cooling": time.Now().Add(4 * time.Second)}}
	e := newEnv(t, envOptions{
		health: hl,
		resolver: func(r CredentialResolver) CredentialResolver {
			return &withAlternates{inner: r, primaryURL: closedURL(t), alts: []resolver.Target{
				alternate("cred-cooling", "anthropic", altKey, ""),
				alternate("cred-down", "anthropic", alt2Key, closedURL(t)),
			}}
		},
	})
	tok := e.token("ws", "p", "u", "")
	c := anthropic.NewClient(anthropicopt.WithBaseURL(e.URL+"/anthropic"), anthropicopt.WithAuthToken(tok), anthropicopt.WithMaxRetries(0))
	_, err := c.Messages.New(context.Background(), anthropic.MessageNewParams{
		Model: "claude-sonnet-4-5", MaxTokens: 8,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	})
	var ae *anthropic.Error
	if !errors.As(err, &ae) || ae.StatusCode != 503 {
		t.Fatalf("err = %v, want a 503 the SDK reads", err)
	}
	if ra, _ := strconv.Atoi(ae.Response.Header.Get("Retry-After")); ra < 4 || ra > 5 {
		t.Errorf("Retry-After %q, want the cooling credential's 4 s", ae.Response.Header.Get("Retry-After"))
	}
	raw := ae.RawJSON()
	if ae.Type() != "api_error" || !strings.Contains(raw, "tried 2 credentials") || !strings.Contains(raw, "connection_refused") {
		t.Errorf("body %s", raw)
	}
	if e.fake.Counters().Requests != 0 {
		t.Error("the cooling credential was tried")
	}
	rec := e.waitRecord(ae.Response.Header.Get(RequestIDHeader))
	if rec.Status != 503 || rec.Outcome != metering.OutcomeUnreachable || len(rec.Attempts) != 2 || rec.Attempts[1].CredentialID != "cred-down" {
		t.Errorf("record %d/%s attempts %+v", rec.Status, rec.Outcome, rec.Attempts)
	}
	hl.mu.Lock()
	defer hl.mu.Unlock()
	if len(hl.seen) != 2 || !hl.seen[0].Failed || !hl.seen[1].Failed || hl.seen[1].Header != nil {
		t.Errorf("observations = %+v", hl.seen)
	}
	assertNoKeys(t, e, ae.Response, []byte(raw), rec)
}

func TestHealthSeesEachAttemptWithItsHeaders(t *testing.T) {
	hl := &recordingHealth{}
	bad := startFlaky(t, 529, 0, "Retry-After", "30").always()
	e := newEnv(t, envOptions{
		fake:   upstreamtest.Config{Keys: append([]string{altKey}, canaries...)},
		health: hl,
		resolver: func(r CredentialResolver) CredentialResolver {
			return &withAlternates{inner: r, primaryURL: bad.URL, alts: []resolver.Target{alternate("cred-alt", "anthropic", altKey, "")}}
		},
	})
	tok := e.token("ws", "p", "u", "")
	resp := e.do("POST", "/anthropic/v1/messages", tok, anthropicStreamBody)
	readAll(t, resp.Body)
	resp.Body.Close()
	e.record(resp)
	hl.mu.Lock()
	defer hl.mu.Unlock()
	if len(hl.seen) != 2 || hl.seen[0].Status != 529 || !hl.seen[0].Failed || hl.ra[0] != "30" || hl.seen[1].Status != 200 || hl.seen[1].Failed || hl.seen[1].CredentialID != "cred-alt" {
		t.Errorf("observations = %+v, retry-after %q", hl.seen, hl.ra)
	}
}

// crossProviderRegistry points deepseek-anthropic and a second Gemini
// provider at fakeURL, each with a model map.
func crossProviderRegistry(fakeURL string) func(string) string {
	return func(y string) string {
		y = strings.Replace(y, "    base_url: https://api.deepseek.com/anthropic\n",
			"    base_url: "+fakeURL+"\n    model_map: {claude-sonnet-4-5: deepseek-chat-anthropic}\n", 1)
		return strings.Replace(y, "\nharnesses:\n",
			"  gemini-alt:\n    base_url: "+fakeURL+"\n    dialects: [gemini]\n    auth: x-goog-api-key\n    model_map: {gemini-2.5-flash: gemini-alt-flash}\n\nharnesses:\n", 1)
	}
}

func TestFailoverAcrossProvidersRenamesTheModel(t *testing.T) {
	bad := startFlaky(t, 529, 0).always()
	other, otherURL := upstreamtest.MustStart(t, upstreamtest.Config{Keys: []string{altKey}})
	var alts []resolver.Target
	e := newEnv(t, envOptions{
		registryEdit: crossProviderRegistry(otherURL),
		resolver: func(r CredentialResolver) CredentialResolver {
			return resolverFunc(func(ctx context.Context, req resolver.Request) (resolver.Target, error) {
				t, err := r.Resolve(ctx, req)
				t.BaseURL = bad.URL
				t.Alternates = alts
				return t, err
			})
		},
	})
	tok := e.token("ws", "p", "u", "")
	for _, tc := range []struct {
		name, provider, path, body, from, to string
	}{
		{"Anthropic", "deepseek-anthropic", "/anthropic/v1/messages?beta=true", `{"model": "claude-sonnet-4-5" ,"max_tokens":8,"stream":true,"messages":[{"role":"user","content":"h\u00e9"}]}`,
			`"claude-sonnet-4-5"`, `"deepseek-chat-anthropic"`},
		{"GeminiPath", "gemini-alt", "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`,
			"", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alts = []resolver.Target{alternate("cred-"+tc.provider, tc.provider, altKey, "")}
			resp := e.do("POST", tc.path, tok, tc.body)
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			up, _ := other.Last()
			want := []byte(strings.Replace(tc.body, tc.from, tc.to, 1))
			if !bytes.Equal(up.Body, want) {
				t.Errorf("forwarded body:\n got %s\nwant %s", up.Body, want)
			}
			if tc.name == "GeminiPath" && !strings.Contains(up.Path, "/models/gemini-alt-flash:streamGenerateContent") {
				t.Errorf("path %q does not name the mapped model", up.Path)
			}
			if tc.name == "Anthropic" && up.Header.Get("Anthropic-Version") != "2023-06-01" {
				t.Errorf("the alternate provider's headers were not set: %v", up.Header)
			}
			rec := e.record(resp)
			mapped := map[string]string{"deepseek-anthropic": "deepseek-chat-anthropic", "gemini-alt": "gemini-alt-flash"}[tc.provider]
			if rec.Provider != tc.provider || rec.CredentialID != "cred-"+tc.provider || rec.ModelSent != mapped || rec.Usage == nil {
				t.Errorf("record provider %s credential %s model sent %q usage %v", rec.Provider, rec.CredentialID, rec.ModelSent, rec.Usage)
			}
			if len(rec.Attempts) != 2 || rec.Attempts[0].Status != 529 || rec.Attempts[1].Provider != tc.provider {
				t.Errorf("attempts = %+v", rec.Attempts)
			}
		})
	}
}

type resolverFunc func(context.Context, resolver.Request) (resolver.Target, error)

func (f resolverFunc) Resolve(ctx context.Context, r resolver.Request) (resolver.Target, error) {
	return f(ctx, r)
}

// waitRecord waits for the usage record of request id.
func (e *testEnv) waitRecord(id string) metering.Record {
	e.t.Helper()
	resp := &http.Response{Header: http.Header{RequestIDHeader: {id}}}
	return e.record(resp)
}

func TestUnmeteredHeaderTimeoutFailsOverByDefault(t *testing.T) {
	const slow = 800 * time.Millisecond
	primary := startFlakyWith(t, upstreamtest.Config{TTFB: slow}, 0, 0)
	e := failoverEnv(t, primary.URL, FailoverConfig{HeaderTimeout: 100 * time.Millisecond}, alternate("cred-alt", "anthropic", altKey, ""))
	tok := e.token("ws", "p", "u", "")
	start := time.Now()
	resp := e.do("POST", "/anthropic/v1/messages/count_tokens", tok, `{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}`)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("input_tokens")) || e.lastFake().Key != altKey {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if d := time.Since(start); d >= slow {
		t.Errorf("took %s: count_tokens waited for the slow credential", d)
	}
	if rec := e.record(resp); len(rec.Attempts) != 2 || rec.Attempts[0].Error != "header_timeout" || !rec.Attempts[0].MayBill {
		t.Errorf("attempts = %+v", rec.Attempts)
	}
}

type statesOnly []health.State

func (s statesOnly) Check(string) health.Verdict { return health.Verdict{OK: true} }
func (s statesOnly) Observe(health.Observation)  {}
func (s statesOnly) States() []health.State      { return s }

func TestResolutionViewShowsHealth(t *testing.T) {
	open := health.State{CredentialID: "cred-b", Provider: "anthropic", Circuit: "open", Failures: 5}
	s := &Server{cfg: Config{Health: statesOnly{open}}}
	rows := []resolver.Resolution{{Dialect: "anthropic-messages", Candidates: []resolver.Candidate{{CredentialID: "cred-a"}, {CredentialID: "cred-b"}}}}
	s.fillHealth(rows)
	if rows[0].Candidates[0].Health != nil || rows[0].Candidates[1].Health != open {
		t.Errorf("candidates = %+v", rows[0].Candidates)
	}
	b, _ := json.Marshal(rows[0].Candidates[1])
	if !bytes.Contains(b, []byte(`"health":{"credential_id":"cred-b","provider":"anthropic","circuit":"open"`)) {
		t.Errorf("rendered %s", b)
	}
}

// TestSDKStreamsFailOverUnseen: OpenAI's and Anthropic's SDKs, with their
// own retries off, stream an answer whole while the first credential
// answers 529 every time; the usage is the alternate's.
func TestSDKStreamsFailOverUnseen(t *testing.T) {
	bad := startFlaky(t, 529, 0).always()
	alts := map[string]resolver.Target{
		"anthropic-messages": alternate("cred-alt-anthropic", "anthropic", altKey, ""),
		"openai-responses":   alternate("cred-alt-openai", "openai", altKey, ""),
	}
	e := newEnv(t, envOptions{
		fake: upstreamtest.Config{Keys: append([]string{altKey}, canaries...)},
		resolver: func(r CredentialResolver) CredentialResolver {
			return resolverFunc(func(ctx context.Context, req resolver.Request) (resolver.Target, error) {
				t, err := r.Resolve(ctx, req)
				t.BaseURL, t.Alternates = bad.URL, []resolver.Target{alts[req.Dialect]}
				return t, err
			})
		},
	})
	tok := e.token("ws", "p", "u", "")
	ctx := context.Background()

	ac := anthropic.NewClient(anthropicopt.WithBaseURL(e.URL+"/anthropic"), anthropicopt.WithAuthToken(tok), anthropicopt.WithMaxRetries(0))
	as := ac.Messages.NewStreaming(ctx, anthropic.MessageNewParams{
		Model: "claude-sonnet-4-5", MaxTokens: 8,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	})
	msg := anthropic.Message{}
	for as.Next() {
		if err := msg.Accumulate(as.Current()); err != nil {
			t.Fatal(err)
		}
	}
	want := upstreamtest.DefaultUsage.Normalised(upstreamtest.Anthropic)
	if err := as.Err(); err != nil || msg.Usage.OutputTokens != want.Output {
		t.Fatalf("anthropic stream: %v, usage %+v", err, msg.Usage)
	}

	oc := oai.NewClient(oaiopt.WithBaseURL(e.URL+"/openai/v1/"), oaiopt.WithAPIKey(tok), oaiopt.WithMaxRetries(0))
	os := oc.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "gpt-5", Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("hi")}})
	completed := false
	for os.Next() {
		completed = completed || os.Current().Type == "response.completed"
	}
	if err := os.Err(); err != nil || !completed {
		t.Fatalf("responses stream: err=%v completed=%v", err, completed)
	}
	if bad.hits.Load() != 2 {
		t.Errorf("the failing credential saw %d requests, want one per turn", bad.hits.Load())
	}
	for _, r := range e.sink.Records() {
		if r.Status != 200 || len(r.Attempts) != 2 || r.Attempts[0].Status != 529 || r.Usage == nil {
			t.Errorf("record %s: status %d attempts %+v usage %v", r.Dialect, r.Status, r.Attempts, r.Usage)
		}
	}
}

func TestFirstCandidateAnsweringMakesOneAttempt(t *testing.T) {
	other := startFlaky(t, 0, 0)
	e := failoverEnv(t, "", FailoverConfig{}, alternate("cred-alt", "anthropic", altKey, other.URL))
	resp, body := e.turn(anthropicStreamBody)
	if resp.StatusCode != 200 || e.lastFake().Key != canaryAnthropic || other.hits.Load() != 0 {
		t.Fatalf("status %d, alternate hit %d times: %s", resp.StatusCode, other.hits.Load(), body)
	}
	if rec := e.record(resp); len(rec.Attempts) != 0 || rec.CredentialID == "cred-alt" {
		t.Errorf("record credential %s, attempts %+v", rec.CredentialID, rec.Attempts)
	}
}

func TestRetryAfterAndRejectionReading(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	gemini429 := []byte(`{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}`)
	for _, tc := range []struct {
		name   string
		header []string
		shape  string
		body   []byte
		want   time.Duration
		ok     bool
	}{
		{"Seconds", []string{"Retry-After", "3"}, "", nil, 3 * time.Second, true},
		{"HTTPDate", []string{"Retry-After", now.Add(90 * time.Second).Format(http.TimeFormat)}, "", nil, 90 * time.Second, true},
		{"PastDate", []string{"Retry-After", now.Add(-time.Minute).Format(http.TimeFormat)}, "", nil, 0, true},
		{"MillisecondsWin", []string{"Retry-After", "3", "Retry-After-Ms", "250"}, "", nil, 250 * time.Millisecond, true},
		{"Garbage", []string{"Retry-After", "soon"}, "", nil, 0, false},
		{"GeminiRetryInfo", nil, "gemini", gemini429, 37 * time.Second, true},
		{"None", nil, "anthropic", []byte(`{}`), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h fasthttp.ResponseHeader
			for i := 0; i+1 < len(tc.header); i += 2 {
				h.Set(tc.header[i], tc.header[i+1])
			}
			got, ok := retryAfterOf(&h, tc.shape, tc.body, now)
			if got != tc.want || ok != tc.ok {
				t.Errorf("retryAfterOf = %s, %v; want %s, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
	badKey := []byte(`{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}`)
	badArg := []byte(`{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}`)
	for _, tc := range []struct {
		status int
		shape  string
		body   []byte
		want   bool
	}{
		{401, "anthropic", nil, true},
		{403, "anthropic", []byte(`{"type":"error","error":{"type":"permission_error"}}`), false},
		{400, "gemini", badKey, true},
		{400, "gemini", badArg, false},
		{400, "openai", badKey, false},
	} {
		if got := credentialRejected(tc.status, tc.shape, tc.body); got != tc.want {
			t.Errorf("credentialRejected(%d, %s) = %v", tc.status, tc.shape, got)
		}
	}
}

// TestBindingOfTwoCredentialsFailsOverAndHealthSkipsTheBrokenOne runs the
// real resolver and the real health tracker: a project binding whose first
// credential answers 529 every time. Each request is answered by the
// second; once the first has failed FailureThreshold times its circuit is
// open, and the next request goes straight to the second, in one attempt.
func TestBindingOfTwoCredentialsFailsOverAndHealthSkipsTheBrokenOne(t *testing.T) {
	bad := startFlaky(t, 529, 0).always()
	tracker := health.New(health.Config{FailureThreshold: 2, BaseCooldown: time.Minute})
	e := newEnv(t, envOptions{fake: upstreamtest.Config{Keys: append([]string{altKey}, canaries...)}, health: tracker})
	ctx := context.Background()
	first, err := e.svc.CreateCredential(ctx, resolver.CredentialSpec{Name: "first", Provider: "anthropic", Secret: resolver.NewSecret(alt2Key), BaseURL: bad.URL})
	if err != nil {
		t.Fatal(err)
	}
	second, err := e.svc.CreateCredential(ctx, resolver.CredentialSpec{Name: "second", Provider: "anthropic", Secret: resolver.NewSecret(altKey)})
	if err != nil {
		t.Fatal(err)
	}
	k := resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "p", Dialect: "anthropic-messages"}
	if _, err := e.svc.BindCandidates(ctx, k, []resolver.BindCandidate{{CredentialID: first.ID}, {CredentialID: second.ID, Priority: 1}}); err != nil {
		t.Fatal(err)
	}
	for i, wantAttempts := range []int{2, 2, 0} {
		resp, body := e.turn(anthropicStreamBody)
		if resp.StatusCode != 200 || !bytes.Contains(body, []byte("message_stop")) {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, body)
		}
		rec := e.record(resp)
		if rec.CredentialID != second.ID || rec.CredTier != resolver.TierProject || len(rec.Attempts) != wantAttempts {
			t.Errorf("request %d: credential %s tier %s attempts %+v; want %s, %d attempts", i, rec.CredentialID, rec.CredTier, rec.Attempts, second.ID, wantAttempts)
		}
		assertNoKeys(t, e, resp, body, rec)
	}
	if bad.hits.Load() != 2 {
		t.Errorf("the broken credential saw %d requests; its circuit should have opened after 2", bad.hits.Load())
	}
	st, ok := tracker.State(first.ID)
	if !ok || st.Circuit != health.CircuitOpen {
		t.Errorf("first credential's health = %+v", st)
	}
	// The admin view shows it.
	req, _ := http.NewRequest("GET", e.AdminURL+"/admin/v1/resolution?project=p&user=u", nil)
	req.Header.Set("Authorization", "Bearer admin-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	view := readAll(t, resp.Body)
	resp.Body.Close()
	if !bytes.Contains(view, []byte(`"circuit":"open"`)) {
		t.Errorf("resolution view without the open circuit: %s", view)
	}
}

func TestEveryCandidateRefusedByHealthIs503AtOnce(t *testing.T) {
	hl := &recordingHealth{refuse: map[string]time.Time{}}
	e := newEnv(t, envOptions{health: hl})
	resp, _ := e.turn(anthropicStreamBody)
	id := e.record(resp).CredentialID
	hl.mu.Lock()
	hl.refuse[id] = time.Now().Add(3 * time.Second)
	hl.mu.Unlock()
	resp, body := e.turn(anthropicStreamBody)
	if resp.StatusCode != 503 || !bytes.Contains(body, []byte("cooling down")) || !bytes.Contains(body, []byte(`"api_error"`)) {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra < 2 || ra > 3 {
		t.Errorf("Retry-After %q, want the cooldown's end", resp.Header.Get("Retry-After"))
	}
	if n := e.fake.Counters().Requests; n != 1 {
		t.Errorf("the provider saw %d requests, want only the first", n)
	}
	if rec := e.record(resp); rec.Status != 503 || rec.Outcome != metering.OutcomeRejected {
		t.Errorf("record %d/%s", rec.Status, rec.Outcome)
	}
}
