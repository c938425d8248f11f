package health

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// rateDims are the headroom dimensions the providers report. Anthropic's
// resets are RFC 3339 instants; OpenAI's are durations from the response
// ("6m0s", "1s", "20ms").
var rateDims = [...]struct {
	remaining, reset string
	tokens, duration bool
}{
	{"anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset", false, false},
	{"anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset", true, false},
	{"anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset", true, false},
	{"anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset", true, false},
	{"x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", false, true},
	{"x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", true, true},
}

// maxHeaderLen bounds the values parsed: every well-formed one is short,
// so a long one is malformed and not worth the parse.
const maxHeaderLen = 64

// readHeaders updates the headroom from one response's rate-limit headers.
// A response that reports none leaves the last report standing; one that
// reports some replaces it, so a refilled bucket lifts the block at once.
// Callers hold e.mu.
func (e *entry) readHeaders(h func(string) string, now time.Time, maxReset time.Duration) {
	req, tok := int64(-1), int64(-1)
	var reset, block time.Time
	for _, d := range rateDims {
		n, ok := parseCount(h(d.remaining))
		if !ok {
			continue
		}
		if d.tokens {
			tok = minKnown(tok, n)
		} else {
			req = minKnown(req, n)
		}
		at, ok := parseReset(h(d.reset), d.duration, now, maxReset)
		if !ok {
			continue
		}
		reset = later(reset, at)
		if n == 0 {
			block = later(block, at)
		}
	}
	if req < 0 && tok < 0 {
		return
	}
	if req >= 0 {
		e.remReq = req
	}
	if tok >= 0 {
		e.remTok = tok
	}
	e.reset, e.headroomEnd = reset, block
}

func minKnown(a, b int64) int64 {
	if a < 0 {
		return b
	}
	return min(a, b)
}

// parseCount reads a non-negative decimal count.
func parseCount(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > maxHeaderLen {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// parseReset reads a reset as an instant after now, capped at maxReset
// ahead; one in the past or malformed is not a reset.
func parseReset(s string, duration bool, now time.Time, maxReset time.Duration) (time.Time, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > maxHeaderLen {
		return time.Time{}, false
	}
	var d time.Duration
	if duration {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return time.Time{}, false
		}
	} else {
		at, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return time.Time{}, false
		}
		d = at.Sub(now)
	}
	if d <= 0 {
		return time.Time{}, false
	}
	// now.Add keeps now's monotonic reading, so a wall-clock step does not
	// move the reset.
	return now.Add(min(d, maxReset)), true
}

// httpDates are the forms RFC 9110 lets a Retry-After date take (the
// layouts net/http's ParseTime accepts; this package keeps off net/http).
var httpDates = [...]string{
	"Mon, 02 Jan 2006 15:04:05 GMT",
	"Monday, 02-Jan-06 15:04:05 GMT",
	time.ANSIC,
}

// retryAfter reads a 429's wait: retry-after-ms (OpenAI's, finer) or
// Retry-After in seconds or as an HTTP date. Absent, malformed, zero or past
// is not usable: the caller then pauses by its own rule, since the 429
// itself is evidence.
func retryAfter(h func(string) string, now time.Time) (time.Duration, bool) {
	if h == nil {
		return 0, false
	}
	if s := strings.TrimSpace(h("retry-after-ms")); s != "" && len(s) <= maxHeaderLen {
		ms, err := strconv.ParseFloat(s, 64)
		if err == nil && ms > 0 && ms < math.MaxInt32 {
			return time.Duration(ms * float64(time.Millisecond)), true
		}
	}
	s := strings.TrimSpace(h("retry-after"))
	if s == "" || len(s) > maxHeaderLen {
		return 0, false
	}
	if s[0] >= '0' && s[0] <= '9' {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 {
			return 0, false
		}
		// The caller caps the wait; this only keeps the product in range.
		return time.Duration(min(n, math.MaxInt32)) * time.Second, true
	}
	for _, layout := range httpDates {
		if at, err := time.Parse(layout, s); err == nil {
			if d := at.Sub(now); d > 0 {
				return d, true
			}
			return 0, false
		}
	}
	return 0, false
}
