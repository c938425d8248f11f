package registry

import (
	"fmt"
	"regexp"
	"strings"
)

// Kinds of governance refusal a template is kept for. Every governance
// refusal takes one of these shapes: concurrency and an unreachable
// ledger answer like a rate limit, so every CLI backs off and recovers
// (governance.md §6.2).
const (
	RefusalRateLimit = "rate_limit"
	RefusalBudget    = "budget"
	RefusalModel     = "model"
)

// RefusalKinds lists the template kinds in file order.
var RefusalKinds = []string{RefusalRateLimit, RefusalBudget, RefusalModel}

// RefusalTemplate is how one kind of governance refusal is answered, as
// written in harnesses.yaml. Empty fields inherit: a harness's template
// from its dialect's, a dialect's from the built-in default of its error
// shape, so a file states only what differs.
type RefusalTemplate struct {
	// Status is the HTTP status: 4xx only, and 429 for rate_limit.
	Status int `yaml:"status"`
	// Type is error.type (anthropic, openai shapes) or error.status
	// (gemini: a google.rpc code such as RESOURCE_EXHAUSTED).
	Type string `yaml:"type"`
	// Code and Param are error.code and error.param (openai shape).
	Code  string `yaml:"code"`
	Param string `yaml:"param"`
	// ShouldRetry sends x-should-retry, which Claude Code and Anthropic's
	// SDKs obey over their own retry rules.
	ShouldRetry *bool `yaml:"should_retry"`
	// RetryAfterMS also sends retry-after-ms (OpenCode reads it first).
	RetryAfterMS *bool `yaml:"retry_after_ms"`
	// ResetsAt adds error.resets_at, the reset as Unix seconds (Codex's
	// usage-limit message).
	ResetsAt *bool `yaml:"resets_at"`
	// TryAgain ends the message with "Please try again in Ns.", the text
	// Codex reads a retry delay from.
	TryAgain *bool `yaml:"try_again"`
	// Hint ends the message with what the harness's user can do ("Use
	// /model or --model."): each client prints the message as sent.
	Hint string `yaml:"hint"`
}

// Refusals holds a dialect's or a harness's templates, by kind.
type Refusals struct {
	RateLimit *RefusalTemplate `yaml:"rate_limit"`
	Budget    *RefusalTemplate `yaml:"budget"`
	Model     *RefusalTemplate `yaml:"model"`
}

func (rs Refusals) of(kind string) *RefusalTemplate {
	switch kind {
	case RefusalRateLimit:
		return rs.RateLimit
	case RefusalBudget:
		return rs.Budget
	case RefusalModel:
		return rs.Model
	}
	return nil
}

// RefusalShape is a resolved template: what tollgate sends.
type RefusalShape struct {
	Status                  int
	Type, Code, Param, Hint string
	// ShouldRetry is nil when no x-should-retry header is sent.
	ShouldRetry                      *bool
	RetryAfterMS, ResetsAt, TryAgain bool
}

func boolp(b bool) *bool { return &b }

// defaultRefusals are the shapes of §6.2's "other clients" row, per error
// shape: what an SDK of that provider understands.
var defaultRefusals = map[string]map[string]RefusalTemplate{
	ShapeAnthropic: {
		RefusalRateLimit: {Status: 429, Type: "rate_limit_error", ShouldRetry: boolp(true)},
		RefusalBudget:    {Status: 429, Type: "billing_error", ShouldRetry: boolp(false)},
		RefusalModel:     {Status: 403, Type: "permission_error", ShouldRetry: boolp(false)},
	},
	ShapeOpenAI: {
		RefusalRateLimit: {Status: 429, Type: "requests", Code: "rate_limit_exceeded"},
		RefusalBudget:    {Status: 429, Type: "insufficient_quota", Code: "insufficient_quota"},
		RefusalModel:     {Status: 400, Type: "invalid_request_error", Code: "model_not_allowed", Param: "model"},
	},
	ShapeGemini: {
		RefusalRateLimit: {Status: 429, Type: "RESOURCE_EXHAUSTED"},
		RefusalBudget:    {Status: 429, Type: "RESOURCE_EXHAUSTED"},
		RefusalModel:     {Status: 403, Type: "PERMISSION_DENIED"},
	},
}

// over returns t with the fields o sets replacing t's.
func (t RefusalTemplate) over(o *RefusalTemplate) RefusalTemplate {
	if o == nil {
		return t
	}
	if o.Status != 0 {
		t.Status = o.Status
	}
	for _, f := range []struct{ dst, src *string }{{&t.Type, &o.Type}, {&t.Code, &o.Code}, {&t.Param, &o.Param}, {&t.Hint, &o.Hint}} {
		if *f.src != "" {
			*f.dst = *f.src
		}
	}
	for _, f := range []struct{ dst, src **bool }{{&t.ShouldRetry, &o.ShouldRetry}, {&t.RetryAfterMS, &o.RetryAfterMS}, {&t.ResetsAt, &o.ResetsAt}, {&t.TryAgain, &o.TryAgain}} {
		if *f.src != nil {
			*f.dst = *f.src
		}
	}
	return t
}

func (t RefusalTemplate) shape() RefusalShape {
	is := func(b *bool) bool { return b != nil && *b }
	return RefusalShape{Status: t.Status, Type: t.Type, Code: t.Code, Param: t.Param, Hint: t.Hint,
		ShouldRetry: t.ShouldRetry, RetryAfterMS: is(t.RetryAfterMS), ResetsAt: is(t.ResetsAt), TryAgain: is(t.TryAgain)}
}

// resolveRefusal merges the built-in default of d's error shape, d's
// templates and, when h speaks d, h's.
func resolveRefusal(d *Dialect, h *Harness, kind string) RefusalTemplate {
	t := defaultRefusals[d.ErrorShape][kind].over(d.Refusals.of(kind))
	if h != nil && h.SpeaksDialect(d.Name) {
		t = t.over(h.Refusals.of(kind))
	}
	return t
}

// RefusalFor returns how a governance refusal of kind is answered on
// dialect d to harness h, which may be nil (the dialect's shape) or a
// harness that does not speak d (ignored).
func RefusalFor(d *Dialect, h *Harness, kind string) RefusalShape {
	return resolveRefusal(d, h, kind).shape()
}

var (
	openAITypeRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]*$`)
	geminiTypeRE = regexp.MustCompile(`^[A-Z][A-Z_]*$`)
)

// retryableWords make a client retry whatever the status: OpenCode
// classifies a type or code containing them as retryable and, for
// server_error, retries without end (governance.md §6.1).
var retryableWords = []string{"server", "exhausted", "unavailable", "rate_limit", "overloaded"}

// refusalProblems checks the resolved template of kind at at, shown to a
// client of error shape shape.
func refusalProblems(at, shape, kind string, t RefusalTemplate) []string {
	var p []string
	add := func(format string, args ...any) { p = append(p, at+": "+fmt.Sprintf(format, args...)) }
	switch {
	case t.Status < 400 || t.Status > 499:
		// A 5xx for a policy decision makes OpenCode loop and Codex retry.
		add("status %d is not a 4xx: a policy refusal is never a server error", t.Status)
	case kind == RefusalRateLimit && t.Status != 429:
		add("status %d: a rate_limit refusal must be 429 so clients back off and retry", t.Status)
	}
	re := openAITypeRE
	if shape == ShapeGemini {
		re = geminiTypeRE
	}
	if !re.MatchString(t.Type) {
		add("type %q is not a %s error type", t.Type, shape)
	}
	for _, v := range []string{t.Code, t.Param} {
		if v != "" && !openAITypeRE.MatchString(v) {
			add("%q must be lowercase letters, digits, _ . -", v)
		}
	}
	if len(t.Hint) > 200 || strings.ContainsFunc(t.Hint, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		add("hint must be one line of at most 200 bytes")
	}
	for _, v := range []string{t.Type, t.Code} {
		lv := strings.ToLower(v)
		if strings.Contains(lv, "server") || lv == "api_error" {
			add("%q reads as a server error, which clients retry", v)
			continue
		}
		// Gemini's quota status is RESOURCE_EXHAUSTED whatever the kind;
		// Gemini CLI stops on RetryInfo, not on the word.
		if kind != RefusalRateLimit && shape != ShapeGemini {
			for _, w := range retryableWords {
				if strings.Contains(lv, w) {
					add("%q contains %q, which OpenCode retries: a %s refusal must read as final", v, w, kind)
					break
				}
			}
		}
	}
	return p
}

// validateRefusals checks every template each dialect and harness ends up
// with.
func validateRefusals(f *file) []string {
	var p []string
	for _, name := range f.Dialects.keys {
		d := f.Dialects.vals[name]
		if defaultRefusals[d.ErrorShape] == nil {
			continue // error_shape is reported on its own
		}
		for _, k := range RefusalKinds {
			p = append(p, refusalProblems(fmt.Sprintf("dialects.%s.refusals.%s", name, k), d.ErrorShape, k, resolveRefusal(d, nil, k))...)
		}
	}
	for _, name := range f.Harnesses.keys {
		h := f.Harnesses.vals[name]
		for _, k := range RefusalKinds {
			if h.Refusals.of(k) == nil {
				continue
			}
			for _, dn := range h.Dialects {
				d, ok := f.Dialects.vals[dn]
				if !ok || defaultRefusals[d.ErrorShape] == nil {
					continue
				}
				at := fmt.Sprintf("harnesses.%s.refusals.%s", name, k)
				if len(h.Dialects) > 1 {
					at += " (on " + dn + ")"
				}
				p = append(p, refusalProblems(at, d.ErrorShape, k, resolveRefusal(d, h, k))...)
			}
		}
	}
	return p
}
