package proxy

import (
	"bytes"
	"net/http"
	"regexp"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// upstreamHeaders is the allow-list of client headers sent upstream. The
// upstream request is built from scratch: everything else is dropped,
// including every token carrier (the unused one may hold a real key) and
// anything that names a tenant.
var upstreamHeaders = map[string]string{
	"content-type":             "Content-Type",
	"accept":                   "Accept",
	"user-agent":               "User-Agent",
	"anthropic-version":        "Anthropic-Version",
	"anthropic-beta":           "Anthropic-Beta",
	"openai-beta":              "Openai-Beta",
	"idempotency-key":          "Idempotency-Key",
	"x-claude-code-session-id": "X-Claude-Code-Session-Id",
	"session-id":               "Session-Id",
	"thread-id":                "Thread-Id",
	"x-session-id":             "X-Session-Id",
	"x-session-affinity":       "X-Session-Affinity",
	"x-client-request-id":      "X-Client-Request-Id",
	"x-goog-api-client":        "X-Goog-Api-Client",
}

// responseHeaders is the allow-list of provider headers passed back; rate
// limit and retry headers let harnesses back off intelligently.
var responseHeaders = map[string]bool{
	"content-type":         true,
	"cache-control":        true,
	"retry-after":          true,
	"retry-after-ms":       true,
	"request-id":           true,
	"x-request-id":         true,
	"openai-processing-ms": true,
}

var responseHeaderPrefixes = []string{"anthropic-ratelimit-", "x-ratelimit-"}

func responseHeaderAllowed(k string) bool {
	for name := range responseHeaders {
		if strings.EqualFold(k, name) {
			return true
		}
	}
	for _, p := range responseHeaderPrefixes {
		if len(k) >= len(p) && strings.EqualFold(k[:len(p)], p) {
			return true
		}
	}
	return false
}

func copyRequestHeaders(dst http.Header, c *fiber.Ctx, p *registry.Provider) {
	var buf [64]byte
	c.Request().Header.VisitAll(func(k, v []byte) {
		if len(k) > len(buf) {
			return
		}
		// A lower-cased copy on the stack: the map lookup with string(b)
		// does not allocate.
		b := buf[:len(k)]
		for i, ch := range k {
			if 'A' <= ch && ch <= 'Z' {
				ch += 'a' - 'A'
			}
			b[i] = ch
		}
		if canon, ok := upstreamHeaders[string(b)]; ok {
			dst[canon] = append(dst[canon], string(v))
		}
	})
	for _, h := range p.ForwardHeaders {
		if v := c.Request().Header.Peek(h); len(v) > 0 {
			dst.Set(h, string(v))
		}
	}
}

func copyResponseHeaders(c *fiber.Ctx, h http.Header) {
	for k, vs := range h {
		// net/http canonicalises keys, so the allow-list is checked
		// case-insensitively without building a lower-case copy.
		allowed := responseHeaderAllowed(k)
		if !allowed {
			continue
		}
		for i, v := range vs {
			if i == 0 {
				c.Set(k, v)
			} else {
				c.Append(k, v)
			}
		}
	}
}

// tokenFrom reads the scoped token from wherever the harness put it.
// Authorization: Bearer wins over x-api-key (Claude Code sends both when
// both variables are set), then x-goog-api-key, then Gemini's ?key=.
func tokenFrom(c *fiber.Ctx, d *registry.Dialect) string {
	if a := c.Get(fiber.HeaderAuthorization); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	if k := c.Get("X-Api-Key"); k != "" {
		return k
	}
	if k := c.Get("X-Goog-Api-Key"); k != "" {
		return k
	}
	if d.ErrorShape == registry.ShapeGemini {
		return string(c.Request().URI().QueryArgs().Peek("key"))
	}
	return ""
}

// sessionID reads the harness's session header, for records and traces.
func sessionID(c *fiber.Ctx) string {
	for _, h := range []string{"X-Claude-Code-Session-Id", "Session-Id", "X-Session-Id"} {
		if v := c.Get(h); v != "" {
			return v
		}
	}
	return ""
}

// setAuth injects the real key in the provider's auth style.
func setAuth(h http.Header, style string, s resolver.Secret) {
	switch style {
	case registry.AuthXAPIKey:
		h.Set("X-Api-Key", s.Reveal())
	case registry.AuthXGoogAPIKey:
		h.Set("X-Goog-Api-Key", s.Reveal())
	default:
		h.Set("Authorization", "Bearer "+s.Reveal())
	}
}

// keyLike matches strings shaped like provider keys, so a provider's error
// body that echoes a fragment of a key does not reach the client.
var keyLike = regexp.MustCompile(`(sk-[A-Za-z0-9_\-]{6,}|sk_[A-Za-z0-9_\-]{6,}|AIza[0-9A-Za-z_\-]{10,}|tgw_[A-Za-z0-9_\-]{6,}|gsk_[A-Za-z0-9]{6,})`)

// redactSecret removes the credential and anything key-shaped from an
// upstream error body before it is passed on.
func redactSecret(body []byte, s resolver.Secret) []byte {
	if k := s.Reveal(); len(k) >= 4 {
		body = bytes.ReplaceAll(body, []byte(k), []byte("[redacted]"))
	}
	return keyLike.ReplaceAll(body, []byte("[redacted]"))
}
