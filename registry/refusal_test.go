package registry

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// withRefusals appends y (indented as harnesses.codex's keys) to the
// minimal registry's one harness.
func withRefusals(y string) string { return minimal + "    refusals:\n" + y }

// TestRefusalTemplatesAreValidated: a refusal template that would make a
// client retry forever, or that names a key tollgate does not know, is
// refused at load with its place named.
func TestRefusalTemplatesAreValidated(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"UnknownKeyHasItsLine", "      budget: {status: 403, typ: insufficient_quota}\n",
			[]string{`harnesses.codex.refusals.budget: line 24: unknown key "typ"; did you mean "type"?`}},
		{"UnknownKind", "      rate: {status: 429}\n",
			[]string{`harnesses.codex.refusals: line 24: unknown key "rate"; known keys: rate_limit, budget, model`}},
		{"FiveHundred", "      budget: {status: 503}\n",
			[]string{`harnesses.codex.refusals.budget: status 503 is not a 4xx: a policy refusal is never a server error`}},
		{"TwoHundred", "      model: {status: 200}\n",
			[]string{`harnesses.codex.refusals.model: status 200 is not a 4xx: a policy refusal is never a server error`}},
		{"RateLimitMustBe429", "      rate_limit: {status: 403}\n",
			[]string{`harnesses.codex.refusals.rate_limit: status 403: a rate_limit refusal must be 429 so clients back off and retry`}},
		{"ServerErrorType", "      model: {type: server_error}\n",
			[]string{`harnesses.codex.refusals.model: "server_error" reads as a server error, which clients retry`}},
		{"ApiErrorType", "      rate_limit: {type: api_error}\n",
			[]string{`harnesses.codex.refusals.rate_limit: "api_error" reads as a server error, which clients retry`}},
		// OpenCode retries a type or code reading as exhausted or rate_limit.
		{"BudgetCodeExhausted", "      budget: {status: 403, code: quota_exhausted}\n",
			[]string{`harnesses.codex.refusals.budget: "quota_exhausted" contains "exhausted", which OpenCode retries: a budget refusal must read as final`}},
		{"BudgetCodeRateLimit", "      budget: {status: 403, type: rate_limit_budget}\n",
			[]string{`harnesses.codex.refusals.budget: "rate_limit_budget" contains "rate_limit", which OpenCode retries: a budget refusal must read as final`}},
		{"ModelTypeUnavailable", "      model: {type: model_unavailable}\n",
			[]string{`harnesses.codex.refusals.model: "model_unavailable" contains "unavailable", which OpenCode retries: a model refusal must read as final`}},
		{"BadType", "      model: {type: \"Not Allowed\"}\n",
			[]string{`harnesses.codex.refusals.model: type "Not Allowed" is not a openai error type`}},
		{"HintOnOneLine", "      model: {hint: \"Use\\n/model\"}\n",
			[]string{`harnesses.codex.refusals.model: hint must be one line of at most 200 bytes`}},
		{"WrongValueType", "      budget: {status: lots}\n",
			[]string{`harnesses.codex.refusals.budget.status: line 24: expected a whole number, got text "lots"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(withRefusals(tc.yaml)))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %v, want a ValidationError", err)
			}
			if !reflect.DeepEqual(ve.Problems, tc.want) {
				t.Errorf("problems:\n got %q\nwant %q", ve.Problems, tc.want)
			}
		})
	}
}

// TestRefusalDialectOverrideAndGeminiRules: a dialect's own templates
// apply to every client of it; Gemini types are google.rpc codes, where
// RESOURCE_EXHAUSTED is the budget status.
func TestRefusalDialectOverrideAndGeminiRules(t *testing.T) {
	y := strings.Replace(minimal, "    error_shape: openai\n", "    error_shape: openai\n    refusals:\n      budget: {status: 402, code: over_budget}\n", 1)
	r, err := Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	d, _ := r.Dialect("openai-chat")
	h, _ := r.Harness("codex")
	want := RefusalShape{Status: 402, Type: "insufficient_quota", Code: "over_budget"}
	if got := RefusalFor(d, nil, RefusalBudget); !reflect.DeepEqual(got, want) {
		t.Errorf("dialect budget = %+v, want %+v", got, want)
	}
	if got := RefusalFor(d, h, RefusalBudget); !reflect.DeepEqual(got, want) {
		t.Errorf("harness without templates = %+v, want the dialect's %+v", got, want)
	}

	g := strings.NewReplacer("openai-chat", "gemini", "route: openai", "route: gemini", "error_shape: openai", "error_shape: gemini").Replace(minimal)
	if _, err := Parse([]byte(g + "    refusals:\n      budget: {type: RESOURCE_EXHAUSTED}\n      model: {type: permission_denied}\n")); err == nil ||
		!strings.Contains(err.Error(), `harnesses.codex.refusals.model: type "permission_denied" is not a gemini error type`) ||
		strings.Contains(err.Error(), "RESOURCE_EXHAUSTED") {
		t.Errorf("gemini templates: %v", err)
	}
}

// TestShippedRefusalShapes pins governance.md §6.2 per harness, and that a
// harness's templates do not leak onto a dialect it does not speak.
func TestShippedRefusalShapes(t *testing.T) {
	r, err := LoadFile("../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	yes, no := true, false
	for _, tc := range []struct {
		harness, dialect, kind string
		want                   RefusalShape
	}{
		{"claude-code", "anthropic-messages", RefusalRateLimit, RefusalShape{Status: 429, Type: "rate_limit_error", ShouldRetry: &yes}},
		{"claude-code", "anthropic-messages", RefusalBudget, RefusalShape{Status: 429, Type: "billing_error", ShouldRetry: &no}},
		{"claude-code", "anthropic-messages", RefusalModel, RefusalShape{Status: 403, Type: "permission_error", Hint: "Use /model or --model.", ShouldRetry: &no}},
		{"codex", "openai-responses", RefusalRateLimit, RefusalShape{Status: 429, Type: "requests", Code: "rate_limit_exceeded", TryAgain: true}},
		{"codex", "openai-responses", RefusalBudget, RefusalShape{Status: 429, Type: "usage_limit_reached", Code: "budget_exceeded", ResetsAt: true}},
		{"codex", "openai-responses", RefusalModel, RefusalShape{Status: 400, Type: "invalid_request_error", Code: "model_not_allowed", Param: "model"}},
		{"opencode", "openai-chat", RefusalRateLimit, RefusalShape{Status: 429, Type: "requests", Code: "rate_limit_exceeded", RetryAfterMS: true}},
		{"opencode", "openai-chat", RefusalBudget, RefusalShape{Status: 403, Type: "insufficient_quota", Code: "budget_exceeded"}},
		{"opencode", "anthropic-messages", RefusalBudget, RefusalShape{Status: 403, Type: "insufficient_quota", Code: "budget_exceeded", ShouldRetry: &no}},
		{"opencode", "openai-chat", RefusalModel, RefusalShape{Status: 400, Type: "invalid_request_error", Code: "model_not_allowed", Param: "model"}},
		{"gemini-cli", "gemini", RefusalRateLimit, RefusalShape{Status: 429, Type: "RESOURCE_EXHAUSTED"}},
		{"gemini-cli", "gemini", RefusalBudget, RefusalShape{Status: 429, Type: "RESOURCE_EXHAUSTED"}},
		{"gemini-cli", "gemini", RefusalModel, RefusalShape{Status: 403, Type: "PERMISSION_DENIED"}},
		// Codex does not speak Chat: its templates stay off it.
		{"codex", "openai-chat", RefusalBudget, RefusalShape{Status: 429, Type: "insufficient_quota", Code: "insufficient_quota"}},
		{"", "openai-chat", RefusalModel, RefusalShape{Status: 400, Type: "invalid_request_error", Code: "model_not_allowed", Param: "model"}},
	} {
		d, err := r.Dialect(tc.dialect)
		if err != nil {
			t.Fatal(err)
		}
		var h *Harness
		if tc.harness != "" {
			if h, err = r.Harness(tc.harness); err != nil {
				t.Fatal(err)
			}
		}
		if got := RefusalFor(d, h, tc.kind); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s on %s, %s = %+v, want %+v", tc.harness, tc.dialect, tc.kind, got, tc.want)
		}
	}
}
