package proxy

import (
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

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

func responseHeaderAllowed(k []byte) bool {
	for name := range responseHeaders {
		if asciiEqualFold(k, name) {
			return true
		}
	}
	for _, p := range responseHeaderPrefixes {
		if len(k) >= len(p) && asciiEqualFold(k[:len(p)], p) {
			return true
		}
	}
	return false
}

// asciiEqualFold reports whether k equals the lower-case ASCII name,
// ignoring k's case, without converting k to a string per header.
func asciiEqualFold(k []byte, lower string) bool {
	if len(k) != len(lower) {
		return false
	}
	for i := 0; i < len(k); i++ {
		ch := k[i]
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if ch != lower[i] {
			return false
		}
	}
	return true
}

// writeUpstreamHeaders builds an upstream request's headers from scratch:
// the client's allow-listed headers, the provider's fixed ones, the real
// key, and identity encoding (compressed SSE would reach the meter as
// binary, R5).
func writeUpstreamHeaders(dst *fasthttp.RequestHeader, c *fiber.Ctx, p *registry.Provider, s resolver.Secret) {
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
			dst.AddBytesV(canon, v)
		}
	})
	for _, h := range p.ForwardHeaders {
		if v := c.Request().Header.Peek(h); len(v) > 0 {
			dst.SetBytesV(h, v)
		}
	}
	for k, v := range p.Headers {
		if len(dst.Peek(k)) == 0 {
			dst.Set(k, v)
		}
	}
	switch p.Auth {
	case registry.AuthXAPIKey:
		dst.Set("X-Api-Key", s.Reveal())
	case registry.AuthXGoogAPIKey:
		dst.Set("X-Goog-Api-Key", s.Reveal())
	default:
		dst.Set("Authorization", "Bearer "+s.Reveal())
	}
	dst.Set("Accept-Encoding", "identity")
}

func copyResponseHeaders(c *fiber.Ctx, h *fasthttp.ResponseHeader, secret resolver.Secret) {
	var m *secretMatcher
	h.VisitAll(func(k, v []byte) {
		if responseHeaderAllowed(k) {
			if m == nil {
				m = newSecretMatcher(secret.Reveal())
			}
			c.Response().Header.AddBytesKV(k, m.redactHeader(v))
		}
	})
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
