package upstreamtest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func TestAuthAcceptsOnlyConfiguredKeysInTheDialectsHeader(t *testing.T) {
	const canary = "sk-wrong-CANARY-7f3a"
	s, base := MustStart(t, Config{Keys: []string{"sk-good", "sk-other"}})
	wantKind := map[Dialect]string{
		Anthropic:       "authentication_error",
		OpenAIChat:      "invalid_request_error/invalid_api_key",
		OpenAIResponses: "invalid_request_error/invalid_api_key",
		Gemini:          "UNAUTHENTICATED",
	}
	for _, d := range allDialects {
		for _, tc := range []struct {
			name    string
			c       call
			want    int
			wantKey string
		}{
			{name: "GoodKeyAccepted", c: call{key: "sk-good"}, want: 200, wantKey: "sk-good"},
			{name: "SecondKeyAccepted", c: call{key: "sk-other"}, want: 200, wantKey: "sk-other"},
			{name: "WrongKeyRejected", c: call{key: canary}, want: 401, wantKey: canary},
			{name: "MissingKeyRejected", c: call{noAuth: true}, want: 401},
		} {
			t.Run(string(d)+"/"+tc.name, func(t *testing.T) {
				tc.c.dialect, tc.c.stream = d, true
				resp, body := do(t, base, tc.c)
				if resp.StatusCode != tc.want {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
				}
				if tc.want == 401 {
					if got := errorKind(t, d, 401, body); got != wantKind[d] {
						t.Errorf("error kind %q, want %q", got, wantKind[d])
					}
					if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
						t.Error("a rejected request got a stream")
					}
				}
				if strings.Contains(string(body), canary) || strings.Contains(fmt.Sprint(resp.Header), canary) {
					t.Error("the response echoes the key")
				}
				if r, _ := s.Last(); r.Key != tc.wantKey || r.Dialect != d {
					t.Errorf("recorded key %q, dialect %q; want %q, %q", r.Key, r.Dialect, tc.wantKey, d)
				}
			})
		}
	}
}

func TestAuthIgnoresKeysInAnotherDialectsHeader(t *testing.T) {
	_, base := MustStart(t, Config{})
	for _, tc := range []struct {
		name   string
		d      Dialect
		header string
		value  string
	}{
		{"AnthropicWithBearer", Anthropic, "Authorization", "Bearer sk-good"},
		{"OpenAIWithXAPIKey", OpenAIChat, "X-Api-Key", "sk-good"},
		{"GeminiWithBearer", Gemini, "Authorization", "Bearer sk-good"},
		{"OpenAIWithBasicScheme", OpenAIResponses, "Authorization", "Basic sk-good"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := call{dialect: tc.d, noAuth: true, header: map[string]string{tc.header: tc.value}}
			if resp, body := do(t, base, c); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("status %d, want 401: %s", resp.StatusCode, body)
			}
		})
	}
}

func TestAuthAcceptFuncOverridesKeys(t *testing.T) {
	_, base := MustStart(t, Config{
		Keys:   []string{"sk-listed"},
		Accept: func(k string) bool { return strings.HasPrefix(k, "sk-ok-") },
	})
	for key, want := range map[string]int{"sk-ok-1": 200, "sk-listed": 401} {
		if resp, _ := do(t, base, call{dialect: OpenAIChat, key: key}); resp.StatusCode != want {
			t.Errorf("key %q: status %d, want %d", key, resp.StatusCode, want)
		}
	}
}
