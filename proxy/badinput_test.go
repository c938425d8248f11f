package proxy

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
	"github.com/tollgate/tollgate/resolver"
)

// checkEnvelope asserts body is the dialect's error envelope and returns
// its message.
func checkEnvelope(t *testing.T, shape string, body []byte) string {
	t.Helper()
	var v struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
			Status  string `json:"status"`
			Code    any    `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("error body is not JSON: %s", body)
	}
	switch shape {
	case "anthropic":
		if v.Type != "error" || v.Error.Type == "" {
			t.Errorf("not an Anthropic error envelope: %s", body)
		}
	case "gemini":
		if v.Error.Status == "" || v.Error.Code == nil {
			t.Errorf("not a Gemini error envelope: %s", body)
		}
	default:
		if v.Error.Type == "" || v.Type != "" {
			t.Errorf("not an OpenAI error envelope: %s", body)
		}
	}
	if v.Error.Message == "" {
		t.Errorf("error has no message: %s", body)
	}
	return v.Error.Message
}

// TestBadInputGetsItsStatusAndEnvelope: every refusal is in the caller's
// dialect, says what to do, leaks nothing, and the server keeps serving.
func TestBadInputGetsItsStatusAndEnvelope(t *testing.T) {
	e := newEnv(t, envOptions{
		registryEdit: func(y string) string {
			return strings.Replace(y, "max_body_bytes: 33554432", "max_body_bytes: 4096", 1)
		},
		headerWait: 300 * time.Millisecond,
	})
	ctx := context.Background()
	tok := e.token("ws-1", "proj-1", "user-1", "")
	claudeTok := e.token("ws-1", "proj-1", "user-1", "claude-code")
	revoked, info, _ := e.svc.IssueToken(ctx, resolver.TokenSpec{Workspace: "ws-1", Project: "proj-1", User: "user-1", TTL: time.Hour})
	if err := e.svc.RevokeToken(ctx, info.ID); err != nil {
		t.Fatal(err)
	}
	// A project whose credential points at a closed port: unreachable.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + ln.Addr().String()
	ln.Close()
	cr, err := e.svc.CreateCredential(ctx, resolver.CredentialSpec{Name: "dead", Provider: "openai", Secret: resolver.NewSecret(canaryOpenAI), BaseURL: deadURL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Bind(ctx, resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "proj-dead", Dialect: "openai-chat"}, cr.ID); err != nil {
		t.Fatal(err)
	}
	deadTok := e.token("ws-2", "proj-dead", "user-2", "")

	chat := `{"model":"gpt-4o","messages":[]}`
	msgs := `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`
	big := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("x", 5000) + `"}]}`
	for _, tc := range []struct {
		name, method, path, token, body string
		hdr                             []string
		status                          int
		shape                           string
		wantMsg                         string
	}{
		{"MalformedJSON", "POST", "/openai/v1/chat/completions", tok, `{"model":`, nil, 400, "openai", "not valid JSON"},
		{"MalformedJSONAnthropic", "POST", "/anthropic/v1/messages", tok, `{"model"`, nil, 400, "anthropic", "not valid JSON"},
		{"MissingModel", "POST", "/anthropic/v1/messages", tok, `{"max_tokens":8,"messages":[]}`, nil, 400, "anthropic", "model"},
		{"EmptyBody", "POST", "/openai/v1/responses", tok, "", nil, 400, "openai", "empty"},
		{"OversizedBody", "POST", "/openai/v1/chat/completions", tok, big, nil, 413, "openai", "at most 4096"},
		{"UnknownRoute", "POST", "/nope/v1/chat/completions", tok, chat, nil, 404, "openai", "tollgate serves"},
		{"UnknownPathUnderRoute", "POST", "/anthropic/v1/complete", tok, msgs, nil, 404, "anthropic", "base URL"},
		{"WrongMethod", "GET", "/openai/v1/chat/completions", tok, "", nil, 404, "openai", "not a path"},
		{"DotDotToAdmin", "GET", "/openai/../admin/v1/tokens", tok, "", nil, 400, "openai", "'..'"},
		{"EncodedSlash", "POST", "/openai/v1%2fchat/completions", tok, chat, nil, 400, "openai", "percent-encoded"},
		{"EncodedDotDot", "GET", "/openai/%2e%2e/admin/v1/tokens", tok, "", nil, 400, "openai", "percent-encoded"},
		{"DoubleSlash", "POST", "/openai//v1/chat/completions", tok, chat, nil, 400, "openai", "empty segments"},
		{"MissingToken", "POST", "/anthropic/v1/messages", "", msgs, nil, 401, "anthropic", "missing tollgate token"},
		{"BadToken", "POST", "/openai/v1/chat/completions", "tgw_not-a-real-token-at-all", chat, nil, 401, "openai", "not valid"},
		{"RealProviderKeyAsToken", "POST", "/openai/v1/chat/completions", canaryOpenAI, chat, nil, 401, "openai", "not valid"},
		{"RevokedToken", "POST", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", revoked, `{"contents":[]}`, nil, 401, "gemini", "revoked"},
		{"WrongHarness", "POST", "/openai/v1/chat/completions", claudeTok, chat, nil, 403, "openai", "does not speak"},
		{"WebSocketProbe", "GET", "/openai/v1/responses", "", "", []string{"Upgrade", "websocket", "Connection", "Upgrade", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}, 426, "openai", "WebSocket"},
		{"UpstreamUnreachable", "POST", "/openai/v1/chat/completions", deadTok, chat, nil, 502, "openai", "could not be reached"},
		{"UpstreamTimeout", "POST", "/openai/v1/chat/completions", tok, chat, []string{upstreamtest.HeaderTTFB, "2s"}, 504, "openai", "in time"},
		{"UpstreamRejectsKey", "POST", "/anthropic/v1/messages", tok, msgs, []string{upstreamtest.HeaderFault, "status=401"}, 401, "anthropic", "rejected the credential"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do(tc.method, tc.path, tc.token, tc.body, tc.hdr...)
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			msg := checkEnvelope(t, tc.shape, body)
			if !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("message %q does not say %q", msg, tc.wantMsg)
			}
			for _, secret := range append(canaries, e.fakeURL, deadURL, strings.TrimPrefix(e.fakeURL, "http://"), tok) {
				if strings.Contains(string(body), secret) {
					t.Errorf("error body leaks %q: %s", secret, body)
				}
			}
		})
	}

	// The server keeps serving after all of that.
	resp := e.do("POST", "/openai/v1/chat/completions", tok, chat)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("server stopped serving: %d", resp.StatusCode)
	}
}

// TestResolutionErrorsUseTheDialectEnvelope: nothing configured is a 401
// saying so; a project that switched a provider off is a 403.
func TestResolutionErrorsUseTheDialectEnvelope(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	cr, err := e.svc.CreateCredential(ctx, resolver.CredentialSpec{Name: "p", Provider: "anthropic", Secret: resolver.NewSecret(canaryAnthropic)})
	if err != nil {
		t.Fatal(err)
	}
	k := resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "proj-off", Dialect: "anthropic-messages"}
	if _, err := e.svc.Bind(ctx, k, cr.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.SetBindingActive(ctx, k, false); err != nil {
		t.Fatal(err)
	}
	tok := e.token("ws-1", "proj-off", "user-1", "")
	resp := e.do("POST", "/anthropic/v1/messages", tok, `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(checkEnvelope(t, "anthropic", body), "disabled this provider") {
		t.Errorf("halted: %d %s", resp.StatusCode, body)
	}
	if strings.Contains(string(body), cr.ID) {
		t.Errorf("halted error names a credential id: %s", body)
	}

	// Remove the platform binding for Gemini: nothing resolves.
	if err := e.svc.Unbind(ctx, resolver.BindingKey{Tier: resolver.TierPlatform, Dialect: "gemini"}); err != nil {
		t.Fatal(err)
	}
	tok2 := e.token("ws-2", "proj-2", "user-2", "")
	resp = e.do("POST", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", tok2, `{"contents":[]}`)
	body = readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.Contains(checkEnvelope(t, "gemini", body), "no credential is configured") {
		t.Errorf("unresolved: %d %s", resp.StatusCode, body)
	}
	if n := e.fake.Counters().Requests; n != 0 {
		t.Errorf("%d requests reached the provider; refusals must make none", n)
	}
}
