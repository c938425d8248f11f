package governance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/tollgate/tollgate/registry"
)

func rule(st ScopeType, id string, k RuleKind, pattern, target string) ModelRule {
	return ModelRule{ScopeType: st, ScopeID: id, Kind: k, Pattern: pattern, Target: target}
}

// TestResolveModelIntersects: aliases first, then deny anywhere refuses and
// every level with allow rules must allow the target.
func TestResolveModelIntersects(t *testing.T) {
	sc := Scope{Project: "acme", User: "ann", Workspace: "ws-1", TokenID: "tok-1", Harness: "claude-code"}
	for _, tc := range []struct {
		name  string
		rules []ModelRule
		model string
		// want is the model to send; refused names the scope that refused
		// ("" = admitted).
		want    string
		refused string
		msg     string
	}{
		{name: "no rules allow", model: "claude-opus-5-5", want: "claude-opus-5-5"},
		{name: "platform allow admits", rules: []ModelRule{rule(ScopePlatform, "", RuleAllow, "claude-*", "")},
			model: "claude-sonnet-5-5", want: "claude-sonnet-5-5"},
		{name: "platform allow refuses others", rules: []ModelRule{rule(ScopePlatform, "", RuleAllow, "claude-*", "")},
			model: "gpt-5", want: "gpt-5", refused: "platform",
			msg: "tollgate: model gpt-5 is not allowed for platform; allowed: claude-*"},
		{name: "platform allow + project deny", rules: []ModelRule{
			rule(ScopePlatform, "", RuleAllow, "claude-*", ""),
			rule(ScopeProject, "acme", RuleDeny, "claude-opus-*", ""),
		}, model: "claude-opus-5-5", want: "claude-opus-5-5", refused: "project:acme",
			msg: "tollgate: model claude-opus-5-5 is not allowed for project acme; denied: claude-opus-*"},
		{name: "project deny leaves the rest", rules: []ModelRule{
			rule(ScopePlatform, "", RuleAllow, "claude-*", ""),
			rule(ScopeProject, "acme", RuleDeny, "claude-opus-*", ""),
		}, model: "claude-sonnet-5-5", want: "claude-sonnet-5-5"},
		{name: "another project's deny does not apply", rules: []ModelRule{
			rule(ScopeProject, "other", RuleDeny, "*", ""),
		}, model: "claude-opus-5-5", want: "claude-opus-5-5"},
		{name: "token narrows", rules: []ModelRule{
			rule(ScopeProject, "acme", RuleAllow, "claude-sonnet-*", ""),
			rule(ScopeProject, "acme", RuleAllow, "claude-haiku-*", ""),
			rule(ScopeToken, "tok-1", RuleAllow, "claude-haiku-*", ""),
		}, model: "claude-sonnet-5-5", want: "claude-sonnet-5-5", refused: "token:tok-1",
			msg: "tollgate: model claude-sonnet-5-5 is not allowed for token tok-1; allowed: claude-haiku-*"},
		{name: "token cannot widen", rules: []ModelRule{
			rule(ScopeProject, "acme", RuleAllow, "claude-sonnet-*", ""),
			rule(ScopeToken, "tok-1", RuleAllow, "*", ""),
		}, model: "claude-opus-5-5", want: "claude-opus-5-5", refused: "project:acme",
			msg: "tollgate: model claude-opus-5-5 is not allowed for project acme; allowed: claude-sonnet-*"},
		{name: "project allow message lists both", rules: []ModelRule{
			rule(ScopeProject, "acme", RuleAllow, "claude-sonnet-*", ""),
			rule(ScopeProject, "acme", RuleAllow, "claude-haiku-*", ""),
		}, model: "claude-opus-5-5", want: "claude-opus-5-5", refused: "project:acme",
			msg: "tollgate: model claude-opus-5-5 is not allowed for project acme; allowed: claude-sonnet-*, claude-haiku-*"},
		{name: "alias + allow on target", rules: []ModelRule{
			rule(ScopeProject, "acme", RuleAlias, "fast", "gpt-5-mini"),
			rule(ScopeProject, "acme", RuleAllow, "gpt-5-mini", ""),
		}, model: "fast", want: "gpt-5-mini"},
		{name: "alias name itself is not what is judged", rules: []ModelRule{
			rule(ScopeProject, "acme", RuleAlias, "fast", "gpt-5"),
			rule(ScopeProject, "acme", RuleAllow, "fast", ""),
		}, model: "fast", want: "gpt-5", refused: "project:acme",
			msg: "tollgate: model fast (alias of gpt-5) is not allowed for project acme; allowed: fast"},
		{name: "alias to a denied target is refused (N22)", rules: []ModelRule{
			rule(ScopePlatform, "", RuleDeny, "claude-opus-*", ""),
			rule(ScopeProject, "acme", RuleAlias, "best", "claude-opus-5-5"),
		}, model: "best", want: "claude-opus-5-5", refused: "platform",
			msg: "tollgate: model best (alias of claude-opus-5-5) is not allowed for platform; denied: claude-opus-*"},
		{name: "project alias beats platform alias", rules: []ModelRule{
			rule(ScopePlatform, "", RuleAlias, "fast", "gemini-3.5-flash"),
			rule(ScopeProject, "acme", RuleAlias, "fast", "gpt-5-mini"),
		}, model: "fast", want: "gpt-5-mini"},
		{name: "platform alias applies", rules: []ModelRule{
			rule(ScopePlatform, "", RuleAlias, "fast", "gemini-3.5-flash"),
			rule(ScopeProject, "other", RuleAlias, "fast", "gpt-5-mini"),
		}, model: "fast", want: "gemini-3.5-flash"},
		{name: "alias is an exact name", rules: []ModelRule{
			rule(ScopePlatform, "", RuleAlias, "fast", "gpt-5-mini"),
		}, model: "fast2", want: "fast2"},
		{name: "harness side call refused without a rule", rules: []ModelRule{
			rule(ScopeProject, "acme", RuleAllow, "claude-sonnet-*", ""),
		}, model: "claude-haiku-4-5-20251001", want: "claude-haiku-4-5-20251001", refused: "project:acme",
			msg: "tollgate: model claude-haiku-4-5-20251001 is not allowed for project acme; allowed: claude-sonnet-*"},
		{name: "harness side call allowed by explicit rule", rules: []ModelRule{
			rule(ScopeProject, "acme", RuleAllow, "claude-sonnet-*", ""),
			rule(ScopeProject, "acme", RuleAllow, "claude-haiku-4-5-20251001", ""),
		}, model: "claude-haiku-4-5-20251001", want: "claude-haiku-4-5-20251001"},
		{name: "gemini router and search side calls", rules: []ModelRule{
			rule(ScopeWorkspace, "ws-1", RuleAllow, "gemini-3.5-pro", ""),
			rule(ScopeWorkspace, "ws-1", RuleAllow, "gemini-3.5-flash-lite", ""),
			rule(ScopeWorkspace, "ws-1", RuleAllow, "gemini-3-flash-preview", ""),
		}, model: "gemini-3-flash-preview", want: "gemini-3-flash-preview"},
		{name: "user deny", rules: []ModelRule{
			rule(ScopeUser, "ann", RuleDeny, "gpt-*", ""),
		}, model: "gpt-5", want: "gpt-5", refused: "user:ann",
			msg: "tollgate: model gpt-5 is not allowed for user ann; denied: gpt-*"},
		{name: "deny beats an allow at the same level", rules: []ModelRule{
			rule(ScopeProject, "acme", RuleAllow, "claude-*", ""),
			rule(ScopeProject, "acme", RuleDeny, "claude-opus-*", ""),
		}, model: "claude-opus-5-5", want: "claude-opus-5-5", refused: "project:acme",
			msg: "tollgate: model claude-opus-5-5 is not allowed for project acme; denied: claude-opus-*; allowed: claude-*"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, r := ResolveModel(tc.rules, sc, tc.model)
			if got != tc.want {
				t.Errorf("model = %q, want %q", got, tc.want)
			}
			switch {
			case tc.refused == "" && r != nil:
				t.Fatalf("refused: %v", r)
			case tc.refused != "" && r == nil:
				t.Fatalf("admitted, want refused by %s", tc.refused)
			case r != nil:
				if r.Kind != RefuseModel || r.Policy != tc.refused+"/model" || r.RetryAfter != 0 {
					t.Errorf("refusal = %+v, want kind model_policy, policy %s/model, no retry", r, tc.refused)
				}
				if r.Message != tc.msg {
					t.Errorf("message = %q\n want %q", r.Message, tc.msg)
				}
			}
		})
	}
}

// TestResolveModelMessageIsBounded: a scope with many allow rules lists
// eight and counts the rest.
func TestResolveModelMessageIsBounded(t *testing.T) {
	var rules []ModelRule
	for i := range 40 {
		rules = append(rules, rule(ScopeProject, "acme", RuleAllow, fmt.Sprintf("model-%02d-*", i), ""))
	}
	_, r := ResolveModel(rules, Scope{Project: "acme"}, "gpt-5")
	if r == nil {
		t.Fatal("admitted")
	}
	if !strings.HasSuffix(r.Message, "model-07-* and 32 more") || strings.Contains(r.Message, "model-08-*") {
		t.Errorf("message = %q", r.Message)
	}
}

// TestRewriteModelChangesOnlyTheModel: the rewritten body equals the
// original byte for byte outside the model value's span, and that span is
// the new model as a JSON string.
func TestRewriteModelChangesOnlyTheModel(t *testing.T) {
	for _, tc := range []struct {
		name, body, model string
	}{
		{"anthropic messages", `{"model":"fast","max_tokens":1024,"messages":[{"role":"user","content":"hi"}],"stream":true}`, "claude-sonnet-5-5"},
		{"chat completions", `{"messages":[{"role":"user","content":"hi"}],"model":"fast","stream":true,"stream_options":{"include_usage":true}}`, "gpt-5-mini"},
		{"responses", "{\n  \"model\" : \"fast\" ,\n  \"input\": \"hi\",\n  \"store\": false\n}\n", "gpt-5"},
		{"leading whitespace and tabs", " \t\n{\t\"model\"\t:\t\"fast\"}", "gpt-5"},
		{"escapes in the old value", `{"model":"fa\"st\u00e9\\","x":1}`, "gpt-5"},
		{"escapes in the new value", `{"model":"fast"}`, "we\"ird\\model\u2028é"},
		{"model nested earlier", `{"metadata":{"model":"nested"},"tools":[{"model":"tool"}],"model":"fast"}`, "gpt-5"},
		{"model inside strings earlier", `{"system":"set \"model\":\"x\" here","prompt":"{\"model\":\"y\"}","model":"fast"}`, "gpt-5"},
		{"key written with escapes", `{"input":"hi","mod\u0065l":"fast"}`, "gpt-5"},
		{"longer and shorter", `{"model":"a-very-long-alias-name-that-shrinks","n":1}`, "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			orig := bytes.Clone(body)
			out, err := RewriteModel(body, tc.model)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(body, orig) {
				t.Fatal("RewriteModel edited its input")
			}
			start, end, _, err := modelSpan(body)
			if err != nil {
				t.Fatal(err)
			}
			enc, _ := json.Marshal(tc.model)
			want := string(orig[:start]) + string(enc) + string(orig[end:])
			if string(out) != want {
				t.Fatalf("got  %s\nwant %s", out, want)
			}
			if !bytes.Equal(out[:start], orig[:start]) || !bytes.Equal(out[len(out)-(len(orig)-end):], orig[end:]) {
				t.Fatal("bytes outside the model changed")
			}
			if !gjson.ValidBytes(out) {
				t.Fatalf("not valid JSON: %s", out)
			}
			var v map[string]any
			if err := json.Unmarshal(out, &v); err != nil || v["model"] != tc.model {
				t.Fatalf("decoded model = %v (%v), want %q", v["model"], err, tc.model)
			}
			if m, err := BodyModel(out); err != nil || m != tc.model {
				t.Fatalf("BodyModel = %q, %v", m, err)
			}
		})
	}
}

func TestRewriteModelRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       error
	}{
		{"empty", ``, ErrNoModel},
		{"array", `[{"model":"x"}]`, ErrNoModel},
		{"no model", `{"input":"x"}`, ErrNoModel},
		{"only nested", `{"a":{"model":"x"}}`, ErrNoModel},
		{"number", `{"model":5}`, ErrNoModel},
		{"null", `{"model":null}`, ErrNoModel},
		{"object", `{"model":{"name":"x"}}`, ErrNoModel},
		{"twice", `{"model":"allowed","input":"x","model":"denied"}`, ErrDuplicateModel},
		{"twice, once escaped", `{"model":"allowed","m\u006fdel":"denied"}`, ErrDuplicateModel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := RewriteModel([]byte(tc.body), "gpt-5"); !errors.Is(err, tc.want) || out != nil {
				t.Fatalf("RewriteModel = %q, %v; want %v", out, err, tc.want)
			}
			if _, err := BodyModel([]byte(tc.body)); !errors.Is(err, tc.want) {
				t.Fatalf("BodyModel error = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestRewritePathModel: Gemini's model sits in the path; only that
// segment changes, for each metered Gemini path of harnesses.yaml.
func TestRewritePathModel(t *testing.T) {
	for _, tc := range []struct{ rest, model, want string }{
		{"/v1beta/models/gemini-3.5-flash:streamGenerateContent", "gemini-3.5-pro", "/v1beta/models/gemini-3.5-pro:streamGenerateContent"},
		{"/v1beta/models/fast:generateContent", "gemini-3.5-flash-lite", "/v1beta/models/gemini-3.5-flash-lite:generateContent"},
		{"/v1/models/fast:streamGenerateContent?alt=sse", "gemini-3.5-pro", "/v1/models/gemini-3.5-pro:streamGenerateContent?alt=sse"},
		{"/v1beta/models/fast:countTokens", "g", "/v1beta/models/g:countTokens"},
		// "{model}:method" takes the model up to the last colon.
		{"/v1beta/models/tuned:v2:generateContent", "gemini-3.5-pro", "/v1beta/models/gemini-3.5-pro:generateContent"},
		{"/v1beta/models/fast", "gemini-3.5-pro", "/v1beta/models/gemini-3.5-pro"},
		// A "/" cannot become a new path segment.
		{"/v1beta/models/fast:generateContent", "a/b", "/v1beta/models/a%2Fb:generateContent"},
		// No model segment: unchanged.
		{"/v1beta/models", "x", "/v1beta/models"},
		{"/v1beta/models/:generateContent", "x", "/v1beta/models/:generateContent"},
	} {
		if got := RewritePathModel(tc.rest, tc.model); got != tc.want {
			t.Errorf("RewritePathModel(%q, %q) = %q, want %q", tc.rest, tc.model, got, tc.want)
		}
	}
}

// TestRewritePathModelInvertsRoute: routing the rewritten path through the
// shipped registry finds the new model on the same dialect and path.
func TestRewritePathModelInvertsRoute(t *testing.T) {
	reg, err := registry.LoadFile("../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range []string{
		"/gemini/v1beta/models/gemini-3.5-flash:streamGenerateContent",
		"/gemini/v1beta/models/fast:generateContent",
		"/gemini/v1beta/models/a:b:countTokens",
		"/gemini/v1/models/fast:generateContent",
		"/gemini/v1/models/fast:streamGenerateContent",
	} {
		m, ok := reg.Route("POST", p)
		if !ok || m.Model == "" {
			t.Fatalf("%s: no route with a model", p)
		}
		rest := RewritePathModel(m.Rest, "gemini-3.5-pro")
		m2, ok := reg.Route("POST", "/gemini"+rest)
		if !ok || m2.Model != "gemini-3.5-pro" || m2.Path != m.Path {
			t.Errorf("%s → %s: routed to model %q path %v", p, rest, m2.Model, m2.Path)
		}
		if strings.Replace(m.Rest, m.Model, "gemini-3.5-pro", 1) != rest {
			t.Errorf("%s → %s changed more than the model", m.Rest, rest)
		}
		n++
	}
	if n == 0 {
		t.Fatal("nothing checked")
	}
}
