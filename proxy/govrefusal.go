package proxy

import (
	"fmt"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/registry"
)

// Bounds on the wait a governance refusal asks for, in seconds.
const (
	// maxRateWait: Claude Code stops retrying past 60 s and Gemini CLI past
	// 300 s, and a per-minute limit frees a slot within the minute.
	maxRateWait = 60
	// maxBudgetWait is the longest calendar window, a month. A lifetime
	// budget, which never resets, asks for it too: long enough that every
	// client stops (Gemini CLI past 300 s), short enough to be a number
	// clients parse.
	maxBudgetWait = 31 * 24 * 3600
)

// refusalTemplate names the template a governance refusal is answered
// with. A concurrency limit and unreachable governance answer like a rate
// limit, so that every client backs off and recovers (governance.md §6.2);
// so does any kind this code does not know, since retrying is the safe
// reading of a refusal nobody shaped.
func refusalTemplate(k governance.RefusalKind) string {
	switch k {
	case governance.RefuseBudget:
		return registry.RefusalBudget
	case governance.RefuseModel:
		return registry.RefusalModel
	}
	return registry.RefusalRateLimit
}

// governed refuses a request governance did not admit, before any upstream
// call, in the shape harness h (nil: the dialect's clients) reads as "back
// off and retry" or "stop, and show this": status, error type and code from
// harnesses.yaml, rendered by errorBody in the dialect's envelope, and the
// headers each client acts on.
func (cl *call) governed(c *fiber.Ctx, h *registry.Harness, r *governance.Refusal) error {
	cl.rec.Governance = string(r.Kind)
	tmpl := refusalTemplate(r.Kind)
	shape := registry.RefusalFor(cl.dialect, h, tmpl)
	now := cl.s.cfg.timeNow()
	e := &apiError{kind: statusKind(shape.Status), msg: r.Message, refusal: &shape}

	wait := 0
	switch tmpl {
	case registry.RefusalRateLimit:
		d := r.RetryAfter
		if d <= 0 && r.Kind == governance.RefuseUnavailable {
			d = governance.UnavailableRetryAfter
		}
		wait = min(retryAfterSeconds(d), maxRateWait)
	case registry.RefusalBudget:
		d := r.RetryAfter
		if d <= 0 && !r.ResetAt.IsZero() {
			d = r.ResetAt.Sub(now)
		}
		wait = maxBudgetWait
		if d > 0 {
			wait = min(retryAfterSeconds(d), maxBudgetWait)
		}
	}
	// errorHandler sends it as Retry-After, and Gemini's body as RetryInfo.
	e.retryAfter = wait
	if wait > 0 && shape.RetryAfterMS {
		ms := min(max(r.RetryAfter.Milliseconds(), 1), int64(wait)*1000)
		c.Set("retry-after-ms", strconv.FormatInt(ms, 10))
	}
	if shape.Hint != "" {
		e.msg += " " + shape.Hint
	}
	if wait > 0 && shape.TryAgain {
		e.msg += fmt.Sprintf(" Please try again in %ds.", wait)
	}
	if shape.ResetsAt && !r.ResetAt.IsZero() {
		e.resetsAt = r.ResetAt.Unix()
	}
	if shape.ShouldRetry != nil {
		c.Set("x-should-retry", strconv.FormatBool(*shape.ShouldRetry))
	}
	if r.Policy != "" {
		c.Set("x-tollgate-limit", r.Policy)
	}
	if tmpl == registry.RefusalRateLimit && r.Limit > 0 {
		reset := r.ResetAt
		if reset.IsZero() {
			reset = now.Add(time.Duration(wait) * time.Second)
		}
		cl.rateLimitHeaders(c, r, reset)
	}
	return cl.reject(e)
}

// rateLimitHeaders states the limit that refused in the headers of the
// dialect's provider: x-ratelimit-* (reset in Unix seconds) on OpenAI
// routes, anthropic-ratelimit-{requests,tokens}-* (reset in RFC 3339) on
// Anthropic ones. Gemini has none; its RetryInfo is in the body.
func (cl *call) rateLimitHeaders(c *fiber.Ctx, r *governance.Refusal, reset time.Time) {
	limit := strconv.FormatInt(r.Limit, 10)
	remaining := strconv.FormatInt(max(r.Remaining, 0), 10)
	switch cl.dialect.ErrorShape {
	case registry.ShapeOpenAI:
		c.Set("x-ratelimit-limit", limit)
		c.Set("x-ratelimit-remaining", remaining)
		c.Set("x-ratelimit-reset", strconv.FormatInt(reset.Unix(), 10))
	case registry.ShapeAnthropic:
		unit := "requests"
		if r.Unit == "tokens" {
			unit = "tokens"
		}
		p := "anthropic-ratelimit-" + unit + "-"
		c.Set(p+"limit", limit)
		c.Set(p+"remaining", remaining)
		c.Set(p+"reset", reset.UTC().Format(time.RFC3339))
	}
}

// statusKind is the kind nearest a template's status, for what reads the
// kind rather than the status (logs, stream events).
func statusKind(status int) kind {
	switch status {
	case fiber.StatusTooManyRequests:
		return kindTooManyRequests
	case fiber.StatusUnauthorized:
		return kindUnauthenticated
	case fiber.StatusForbidden:
		return kindForbidden
	case fiber.StatusNotFound:
		return kindNotFound
	}
	return kindBadRequest
}
