package registry

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestShippedRegistryIsValid pins the repository's harnesses.yaml: it loads,
// and a summary of it matches testdata/registry.golden.txt.
func TestShippedRegistryIsValid(t *testing.T) {
	r, err := LoadFile("../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, d := range r.Dialects() {
		b.WriteString("dialect " + d.Name + " /" + d.Route + " shape=" + d.ErrorShape + " stream_error=" + d.StreamError)
		if d.CutAfterStreamError {
			b.WriteString(" cut_after_stream_error")
		}
		b.WriteString("\n")
		b.WriteString(refusalSummary(d, nil))
		for _, p := range d.Paths {
			b.WriteString("  " + strings.Join(p.Methods, ",") + " " + p.Pattern + " stream=" + p.Stream)
			if p.Metered {
				b.WriteString(" metered")
			}
			if p.IncludeUsage {
				b.WriteString(" include_usage")
			}
			if p.Upgrade426 {
				b.WriteString(" upgrade_426")
			}
			b.WriteString("\n")
		}
	}
	for _, p := range r.Providers() {
		b.WriteString("provider " + p.Name + " " + p.BaseURL + " auth=" + p.Auth + " dialects=" + strings.Join(p.Dialects, ",") + "\n")
	}
	for _, h := range r.Harnesses() {
		b.WriteString("harness " + h.Name + " dialects=" + strings.Join(h.Dialects, ",") + " provider=" + h.Provider + " base_env=" + h.BaseURLEnv + " key_env=" + h.KeyEnv + "\n")
		for _, dn := range h.Dialects {
			d, _ := r.Dialect(dn)
			b.WriteString(refusalSummary(d, h))
		}
	}
	golden := filepath.Join("testdata", "registry.golden.txt")
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./registry -update)", err)
	}
	if b.String() != string(want) {
		t.Errorf("registry summary changed; review and run go test ./registry -update\n got:\n%s\nwant:\n%s", b.String(), want)
	}
}

const minimal = `version: 1
dialects:
  openai-chat:
    route: openai
    error_shape: openai
    paths:
      - {path: /v1/chat/completions, methods: [POST], metered: true}
    usage:
      fields: {input: prompt_tokens, output: completion_tokens}
      body: {usage: usage}
providers:
  openai:
    base_url: https://api.openai.com
    dialects: [openai-chat]
    auth: bearer
harnesses:
  codex:
    dialects: [openai-chat]
    provider: openai
    base_url_env: OPENAI_BASE_URL
    key_env: OPENAI_API_KEY
    key_header: authorization
`

// TestInvalidRegistriesListEveryProblem: each broken file is refused with
// exactly its list of problems, each naming the item at fault.
func TestInvalidRegistriesListEveryProblem(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(string) string
		want []string
	}{
		{"WrongVersion", func(s string) string { return strings.Replace(s, "version: 1", "version: 2", 1) },
			[]string{"version: must be 1, got 2"}},
		{"UnknownField", func(s string) string {
			return strings.Replace(s, "    auth: bearer", "    auth: bearer\n    colour: red", 1)
		},
			[]string{`providers.openai: line 16: unknown key "colour"; known keys: base_url, dialects, auth, headers, forward_headers, otel_name, include_usage, model_map, usage`}},
		{"TopLevelTypo", func(s string) string { return strings.Replace(s, "harnesses:", "harnessess:", 1) },
			[]string{`line 16: unknown top-level key "harnessess"; did you mean "harnesses"?`}},
		// check-config used to stop at the first unknown key; every one is
		// reported, at every depth, with its line and the key meant.
		{"EveryUnknownKeyAtOnce", func(s string) string {
			s = strings.Replace(s, "version: 1\n", "version: 1\nlimit:\n  max_body_bytes: 1\n", 1)
			s = strings.Replace(s, "metered: true}", "metred: true}", 1)
			s = strings.Replace(s, "{input: prompt_tokens,", "{inptu: prompt_tokens,", 1)
			s = strings.Replace(s, "    base_url: https", "    baseurl: https", 1)
			s = strings.Replace(s, "    key_env: OPENAI", "    key_evn: OPENAI", 1)
			s = strings.Replace(s, "    key_header: authorization", "    key_header: authorization\n    Provider: openai", 1)
			return s
		}, []string{
			`line 2: unknown top-level key "limit"; did you mean "limits"?`,
			`dialects.openai-chat.paths[0]: line 9: unknown key "metred"; did you mean "metered"?`,
			`dialects.openai-chat.usage.fields: line 11: unknown key "inptu"; did you mean "input"?`,
			`providers.openai: line 15: unknown key "baseurl"; did you mean "base_url"?`,
			`harnesses.codex: line 23: unknown key "key_evn"; did you mean "key_env"?`,
			`harnesses.codex: line 25: unknown key "Provider"; did you mean "provider"?`,
		}},
		{"WrongTypeHasItsLine", func(s string) string { return strings.Replace(s, "route: openai", "route: [openai]", 1) },
			[]string{`dialects.openai-chat.route: line 4: expected text, got a list`}},
		{"WrongTypesNameTheirKeys", func(s string) string {
			s = strings.Replace(s, "version: 1\n", "version: 1\nlimits: {max_body_bytes: lots, max_event_bytes: tenmebibytes}\n", 1)
			s = strings.Replace(s, "methods: [POST]", "methods: POST", 1)
			s = strings.Replace(s, "    auth: bearer", "    auth: bearer\n    headers: [a, b]", 1)
			return s
		}, []string{
			`limits.max_body_bytes: line 2: expected a whole number, got text "lots"`,
			`limits.max_event_bytes: line 2: expected a whole number, got text "tenmebi..."`,
			`dialects.openai-chat.paths[0].methods: line 8: expected a list, got text "POST"`,
			`providers.openai.headers: line 17: expected a mapping, got a list`,
		}},
		{"NotYAML", func(string) string { return "version: [1" },
			[]string{"line 1: did not find expected ',' or ']'"}},
		// yaml.v3 prints a parser error's line zero-based.
		{"SyntaxErrorLine", func(s string) string { return strings.Replace(s, "version: 1\n", "version: 1\n- oops\n", 1) },
			[]string{"line 2: did not find expected key"}},
		{"SyntaxErrorLineInContext", func(s string) string {
			return strings.Replace(s, "    error_shape: openai", "   error_shape: openai", 1)
		}, []string{"line 5: did not find expected key"}},
		{"SyntaxErrorLineUnclosed", func(s string) string {
			return strings.Replace(s, "metered: true}", "metered: true", 1)
		}, []string{"line 7: did not find expected ',' or '}'"}},
		{"SyntaxErrorLineLast", func(s string) string { return s + " oops: 1\n" },
			[]string{"line 23: did not find expected key"}},
		// fiber serves /Admin as /admin.
		{"ReservedRouteInCapitals", func(s string) string { return strings.Replace(s, "route: openai", "route: Admin", 1) },
			[]string{`dialects.openai-chat.route: "Admin" is reserved for tollgate itself`}},
		{"RouteNeedsEscaping", func(s string) string { return strings.Replace(s, "route: openai", "route: \"open ai?\"", 1) },
			[]string{`dialects.openai-chat.route: "open ai?" must be letters, digits, dots, dashes, underscores or tildes, starting with a letter or digit`}},
		{"RouteDifferingOnlyInCase", func(s string) string {
			return strings.Replace(s, "providers:", `  openai-responses:
    route: OpenAI
    error_shape: openai
    paths:
      - {path: /v1/responses, methods: [POST]}
providers:`, 1)
		}, []string{`dialects.openai-responses.route: "OpenAI" differs from the route "openai" of dialects.openai-chat only in case; dialects openai-chat and openai-responses must share one spelling or use different routes`}},
		// Two dialects may share a route segment, never a request.
		{"SharedRouteOverlap", func(s string) string {
			return strings.Replace(s, "providers:", `  openai-responses:
    route: /openai/
    error_shape: openai
    paths:
      - {path: /v1/responses, methods: [POST]}
      - {path: "/v1/{id}/completions", methods: [GET, POST]}
providers:`, 1)
		}, []string{`dialects.openai-responses.paths[1].path: POST /openai/v1/{id}/completions overlaps POST /openai/v1/chat/completions of dialects.openai-chat: dialects openai-chat and openai-responses share route "openai" and must not serve the same request`}},
		{"SharedRouteSamePath", func(s string) string {
			return strings.Replace(s, "providers:", `  openai-responses:
    route: openai
    error_shape: openai
    paths:
      - {path: /v1/chat/completions, methods: [POST]}
providers:`, 1)
		}, []string{`dialects.openai-responses.paths[0].path: POST /openai/v1/chat/completions is also served by dialects.openai-chat.paths[0]`}},
		{"ManyProblemsAtOnce", func(s string) string {
			s = strings.Replace(s, "route: openai", "route: admin", 1)
			s = strings.Replace(s, "auth: bearer", "auth: basic", 1)
			s = strings.Replace(s, "base_url: https://api.openai.com", "base_url: api.openai.com", 1)
			s = strings.Replace(s, "dialects: [openai-chat]\n    auth", "dialects: [openai-chat, klingon]\n    auth", 1)
			s = strings.Replace(s, "key_env: OPENAI_API_KEY", "key_env: openai key", 1)
			return s
		}, []string{
			`dialects.openai-chat.route: "admin" is reserved for tollgate itself`,
			`providers.openai.base_url: "api.openai.com" is not an absolute http(s) URL`,
			`providers.openai.dialects: unknown dialect "klingon"`,
			`providers.openai.auth: "basic" is not one of x-api-key, bearer, x-goog-api-key`,
			`harnesses.codex.key_env: "openai key" is not an environment variable name`,
		}},
		{"HarnessNamesUnknownThings", func(s string) string {
			s = strings.Replace(s, "    dialects: [openai-chat]\n    provider: openai", "    dialects: [gemini]\n    provider: google", 1)
			return s
		}, []string{
			`harnesses.codex.dialects: unknown dialect "gemini"`,
			`harnesses.codex.provider: unknown provider "google"`,
		}},
		{"DuplicatePath", func(s string) string {
			return strings.Replace(s, "      - {path: /v1/chat/completions, methods: [POST], metered: true}",
				"      - {path: /v1/chat/completions, methods: [POST], metered: true}\n      - {path: /v1/chat/completions, methods: [POST]}", 1)
		}, []string{"dialects.openai-chat.paths[1].path: POST /openai/v1/chat/completions is also served by dialects.openai-chat.paths[0]"}},
		{"BadStreamRule", func(s string) string {
			return strings.Replace(s, "      body: {usage: usage}", "      body: {usage: usage}\n      stream:\n        events:\n          - {type: x, merge: sum, end: maybe}", 1)
		}, []string{
			`dialects.openai-chat.usage.stream.events: merge "sum" is not replace or assign`,
			`dialects.openai-chat.usage.stream.events: end "maybe" is not completed, incomplete or failed`,
			`dialects.openai-chat.usage.stream.events: rule for type "x" needs stream.type_path`,
		}},
		{"UnknownStreamError", func(s string) string {
			return strings.Replace(s, "    error_shape: openai", "    error_shape: openai\n    stream_error: close", 1)
		}, []string{`dialects.openai-chat.stream_error: "close" is not one of event, chunk, response.failed`}},
		{"AuthHeaderForwarded", func(s string) string {
			return strings.Replace(s, "    auth: bearer", "    auth: bearer\n    forward_headers: [Authorization]", 1)
		}, []string{`providers.openai.forward_headers: "Authorization" carries credentials and is never forwarded`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.edit(minimal)))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %v, want a ValidationError", err)
			}
			if !reflect.DeepEqual(ve.Problems, tc.want) {
				t.Errorf("problems:\n got %q\nwant %q", ve.Problems, tc.want)
			}
			for _, p := range ve.Problems {
				if strings.Contains(p, "registry.") || strings.Contains(p, "[]string") || strings.Contains(p, "in type ") {
					t.Errorf("a problem names a Go type: %s", p)
				}
			}
		})
	}
	r, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatalf("the minimal file itself is invalid: %v", err)
	}
	if d := r.Dialects()[0]; d.StreamError != StreamErrorChunk {
		t.Errorf("stream_error defaults to %q for the openai shape, want chunk", d.StreamError)
	}
}

// TestReloadKeepsTheOldRegistryOnABadEdit: a bad edit is refused, the old
// registry keeps serving, a good edit is taken.
func TestReloadKeepsTheOldRegistryOnABadEdit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "harnesses.yaml")
	if err := os.WriteFile(path, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := NewHolder(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	before := h.Current()
	os.WriteFile(path, []byte(strings.Replace(minimal, "auth: bearer", "auth: nope", 1)), 0o600)
	if err := h.Reload(); err == nil {
		t.Fatal("a bad edit was accepted")
	}
	if h.Current() != before {
		t.Fatal("the old registry was replaced by a bad edit")
	}
	// A request that took the registry before a reload keeps it.
	held := h.Current()
	os.WriteFile(path, []byte(strings.Replace(minimal, "https://api.openai.com", "https://example.test", 1)), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Watch(ctx, 10*time.Millisecond, nil)
	testkit.Eventually(t, 2*time.Second, "the good edit to be picked up", func() bool { return h.Current() != before })
	p, _ := h.Current().Provider("openai")
	if p.BaseURL != "https://example.test" {
		t.Fatalf("watch did not pick up the good edit: %s", p.BaseURL)
	}
	if hp, _ := held.Provider("openai"); hp.BaseURL != "https://api.openai.com" {
		t.Errorf("a registry already taken changed under its holder")
	}
}

func TestRouteMatching(t *testing.T) {
	r, err := LoadFile("../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, path     string
		ok               bool
		dialect, rest, m string
	}{
		{"POST", "/anthropic/v1/messages", true, "anthropic-messages", "/v1/messages", ""},
		{"POST", "/anthropic/v1/messages/count_tokens", true, "anthropic-messages", "/v1/messages/count_tokens", ""},
		{"POST", "/openai/v1/responses", true, "openai-responses", "/v1/responses", ""},
		{"GET", "/openai/v1/responses", true, "openai-responses", "/v1/responses", ""},
		{"POST", "/openai/v1/chat/completions", true, "openai-chat", "/v1/chat/completions", ""},
		{"POST", "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent", true, "gemini", "/v1beta/models/gemini-2.5-pro:streamGenerateContent", "gemini-2.5-pro"},
		{"POST", "/gemini/v1beta/models/gemini-2.5-pro:explode", false, "", "", ""},
		{"POST", "/gemini/v1beta/models/:generateContent", false, "", "", ""},
		{"GET", "/openai/v1/chat/completions", false, "", "", ""},
		{"POST", "/openai/v1/chat/completions/extra", false, "", "", ""},
		{"POST", "/nope/v1/messages", false, "", "", ""},
		{"POST", "/", false, "", "", ""},
	} {
		m, ok := r.Route(tc.method, tc.path)
		if ok != tc.ok {
			t.Errorf("%s %s: ok=%v, want %v", tc.method, tc.path, ok, tc.ok)
			continue
		}
		if ok && (m.Dialect.Name != tc.dialect || m.Rest != tc.rest || m.Model != tc.m) {
			t.Errorf("%s %s: got %s %s %q", tc.method, tc.path, m.Dialect.Name, m.Rest, m.Model)
		}
	}
}

// TestSetupComesFromTheRegistryAlone pins what `tollgate env` prints.
func TestSetupComesFromTheRegistryAlone(t *testing.T) {
	r, err := LoadFile("../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.Setup("claude-code", EnvOptions{ProxyURL: "https://proxy.example/", Token: "tgw_x"})
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, e := range s.Env {
		env[e.Name] = e.Value
	}
	if env["ANTHROPIC_BASE_URL"] != "https://proxy.example/anthropic" || env["ANTHROPIC_AUTH_TOKEN"] != "tgw_x" {
		t.Errorf("claude-code env = %v", env)
	}
	if v, ok := env["ANTHROPIC_API_KEY"]; !ok || v != "" {
		t.Errorf("ANTHROPIC_API_KEY must be exported empty so a stray key never travels: %v", env)
	}
	s, err = r.Setup("codex", EnvOptions{ProxyURL: "https://proxy.example", Token: "tgw_x", Model: "gpt-5"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`base_url = "https://proxy.example/openai/v1"`, `wire_api = "responses"`, `env_key = "TOLLGATE_TOKEN"`, `model = "gpt-5"`} {
		if !strings.Contains(s.Config, want) {
			t.Errorf("codex config lacks %s:\n%s", want, s.Config)
		}
	}
	s, err = r.Setup("opencode", EnvOptions{ProxyURL: "https://proxy.example", Token: "tgw_x", Model: "claude-sonnet-4-5", Dialect: "anthropic-messages"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"npm": "@ai-sdk/anthropic"`, `"baseURL": "https://proxy.example/anthropic/v1"`, `"model": "tollgate/claude-sonnet-4-5"`} {
		if !strings.Contains(s.Config, want) {
			t.Errorf("opencode anthropic config lacks %s:\n%s", want, s.Config)
		}
	}
	if _, err := r.Setup("opencode", EnvOptions{ProxyURL: "https://proxy.example", Token: "tgw_x"}); err == nil || !strings.Contains(err.Error(), "--model") {
		t.Errorf("opencode without a model: %v", err)
	}
	if _, err := r.Setup("nope", EnvOptions{}); !errors.Is(err, ErrUnknownHarness) {
		t.Errorf("unknown harness: %v", err)
	}
	if ShellQuote("it's") != `'it'\''s'` || ShellQuote("") != "''" || ShellQuote("a-b") != "a-b" {
		t.Errorf("ShellQuote")
	}
}

// TestPatternsOverlap pins when two path patterns can match one request.
func TestPatternsOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"/v1/models", "/v1/models", true},
		{"/v1/models", "/v1/models/", true},
		{"/v1/models/{id}", "/v1/models/gpt", true},
		{"/v1/models/{id}", "/v1/models", false},
		{"/v1/models/{id}", "/v1/models/{model}:generateContent", false},
		{"/v1/models/{model}:generateContent", "/v1/models/{model}:streamGenerateContent", false},
		{"/v1/models/{model}:generateContent", "/v1/models/x:generateContent", true},
		{"/v1/models/{model}:generateContent", "/v1/models/{id}", false},
		{"/v1/{id}", "/v1/{model}", true},
		{"/v1/{a}GenerateContent", "/v1/{b}:streamGenerateContent", true},
		{"/v1/{a}", "/v1/{b}.json", true},
		{"/v1/chat", "/v2/chat", false},
	} {
		if got := patternsOverlap(parsePattern(tc.a), parsePattern(tc.b)); got != tc.want {
			t.Errorf("%s vs %s: overlap %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := patternsOverlap(parsePattern(tc.b), parsePattern(tc.a)); got != tc.want {
			t.Errorf("%s vs %s: overlap %v, want %v", tc.b, tc.a, got, tc.want)
		}
	}
}

// refusalSummary lists the refusal shapes of d for h (nil: the dialect's).
func refusalSummary(d *Dialect, h *Harness) string {
	var b strings.Builder
	for _, k := range RefusalKinds {
		s := RefusalFor(d, h, k)
		b.WriteString(fmt.Sprintf("  refusal %s on %s: %d %s", k, d.Name, s.Status, s.Type))
		for _, f := range []struct{ name, v string }{{"code", s.Code}, {"param", s.Param}, {"hint", strconv.Quote(s.Hint)}} {
			if f.v != "" && f.v != `""` {
				b.WriteString(" " + f.name + "=" + f.v)
			}
		}
		if s.ShouldRetry != nil {
			b.WriteString(fmt.Sprintf(" should_retry=%t", *s.ShouldRetry))
		}
		for _, f := range []struct {
			name string
			on   bool
		}{{"retry_after_ms", s.RetryAfterMS}, {"resets_at", s.ResetsAt}, {"try_again", s.TryAgain}} {
			if f.on {
				b.WriteString(" " + f.name)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
