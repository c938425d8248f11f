package proxy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/tollgate/tollgate/registry"
)

// Edge bounds: what one request may cost before tollgate knows more.
const (
	// bodyGrace is the time a body gets beyond its size at minBodyRate:
	// the deadline of a small body, measured from the end of its headers.
	bodyGrace = 10 * time.Second
	// minBodyRate is the slowest body tollgate waits for, in bytes per
	// second (Kestrel's minimum data rate idea); slower is cut.
	minBodyRate = 64 << 10
	// maxBodyWait caps the body deadline; chunked bodies, of unknown
	// length, get it whole.
	maxBodyWait = 120 * time.Second
	// adminBodyLimit bounds admin API bodies: a token or credential spec.
	adminBodyLimit = 1 << 20
	// edgeRefusalHeader carries HeaderReceived's verdict to the first
	// middleware, which renders it in the caller's envelope: the hook
	// itself can only see the header. It is deleted from every request
	// first, so a client cannot set it to anything but a refusal of its own.
	edgeRefusalHeader = "X-Tollgate-Edge-Refusal"
	refusalFraming    = "framing"
	refusalHTTP2      = "http2"
)

// headerReceived runs after each request's headers, before its body, on the
// connection goroutine. It flags request shapes that must be refused and
// closed, and starts the body's own deadline.
func (s *Server) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	h.Del(edgeRefusalHeader)
	switch {
	case string(h.Method()) == "PRI" && string(h.Protocol()) == "HTTP/2.0":
		// An HTTP/2 prior-knowledge preface: the frames after it are not
		// HTTP/1.1, so nothing more can be read from this connection.
		h.Set(edgeRefusalHeader, refusalHTTP2)
		h.SetConnectionClose()
	case hasBothFramings(h.RawHeaders()):
		// fasthttp frames by Transfer-Encoding and keeps the connection, so
		// the rest of the Content-Length span would be read as a request
		// (a smuggled one). RFC 9112 §6.1: close after such a request.
		h.Set(edgeRefusalHeader, refusalFraming)
		h.SetConnectionClose()
	}
	rc := fasthttp.RequestConfig{ReadTimeout: bodyDeadline(h.ContentLength())}
	if h.ContentLength() > s.bodyLimit(string(h.RequestURI())) {
		// Streamed, fasthttp still waits for min(length, limit, 8 KiB)
		// bytes before the handler runs; a limit of one byte lets the edge
		// refuse the claim at once.
		rc.MaxRequestBodySize = 1
	}
	return rc
}

// refuseHTTP2 wraps fiber's handler to answer an HTTP/2 preface, which
// fiber would refuse in plain text ("Invalid http method") before any
// middleware runs.
func (s *Server) refuseHTTP2(next fasthttp.RequestHandler) fasthttp.RequestHandler {
	body := errorBody(registry.ShapeOpenAI, errHTTP2)
	return func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Request.Header.Peek(edgeRefusalHeader)) != refusalHTTP2 {
			next(ctx)
			return
		}
		ctx.SetStatusCode(kindStatus[errHTTP2.kind])
		ctx.SetContentType(fiber.MIMEApplicationJSON)
		ctx.SetBody(body)
		ctx.Response.SetConnectionClose()
	}
}

var errHTTP2 = newError(kindBadRequest, "tollgate speaks HTTP/1.1 only: HTTP/2 with prior knowledge (h2c) is not supported; use an HTTP/1.1 client or drop --http2-prior-knowledge")

// bodyDeadline is the time a body of length cl (-1: chunked) may take.
func bodyDeadline(cl int) time.Duration {
	if cl < 0 {
		return maxBodyWait
	}
	return min(maxBodyWait, bodyGrace+time.Duration(cl)*time.Second/minBodyRate)
}

// hasBothFramings reports whether a raw header block has both a
// Content-Length and a Transfer-Encoding field line: once parsed, fasthttp
// keeps only the chunked framing, so only the raw block can tell.
func hasBothFramings(raw []byte) bool {
	var cl, te bool
	for len(raw) > 0 {
		var line []byte
		line, raw, _ = bytes.Cut(raw, []byte("\n"))
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		cl = cl || bytes.EqualFold(name, []byte(fiber.HeaderContentLength))
		te = te || bytes.EqualFold(name, []byte(fiber.HeaderTransferEncoding))
	}
	return cl && te
}

// edge is the first middleware of every route. It renders the framing
// refusal headerReceived flagged; then, except on inference routes, it
// reads the body, bounded, so that no other handler sees a stream. A body
// costs what has arrived, never what the client claimed (fasthttp's
// buffered mode allocates a declared length before reading a byte).
func (s *Server) edge(c *fiber.Ctx) error {
	// In a handler: not to be shed at the connection cap (listener.go).
	markBusy(c.Context().Conn())
	switch string(c.Request().Header.Peek(edgeRefusalHeader)) {
	case refusalFraming:
		c.Response().SetConnectionClose()
		return newError(kindBadRequest, "request has both Content-Length and Transfer-Encoding; send exactly one (RFC 9112 §6.1)")
	}
	req := c.Request()
	if _, inference := s.cfg.Registry.Current().RouteKnown(string(req.URI().PathOriginal())); !inference {
		if err := s.readBody(c); err != nil {
			c.Response().SetConnectionClose()
			return err
		}
	}
	// Inference routes read the body after authentication (forward), so
	// a caller without a valid token costs its headers only.
	err := c.Next()
	if req.IsBodyStream() && req.Header.ContentLength() != 0 {
		// Refused before its body was read: the rest of it would be parsed
		// as the next request (valyala/fasthttp#2368), so close instead.
		c.Response().SetConnectionClose()
	}
	return err
}

// bodyLimit is the largest body path may carry.
func (s *Server) bodyLimit(path string) int {
	limit := s.cfg.Registry.Current().Limits.MaxBodyBytes
	if strings.HasPrefix(path, "/admin/") || strings.HasPrefix(path, consolePrefix+"/") {
		limit = min(limit, adminBodyLimit)
	}
	return limit
}

// readBody replaces the request's body stream with its bytes, read up to
// the route's limit into a buffer that grows as they arrive. A handler
// that reads the body calls it first; c.Body() on a stream reads without
// a bound.
func (s *Server) readBody(c *fiber.Ctx) error {
	req := c.Request()
	if !req.IsBodyStream() {
		return nil
	}
	limit := s.bodyLimit(string(req.URI().PathOriginal()))
	if cl := req.Header.ContentLength(); cl > limit {
		return newError(kindTooLarge, "request body is %d bytes; this gateway accepts at most %d", cl, limit)
	}
	var buf bytes.Buffer
	_, err := buf.ReadFrom(io.LimitReader(req.BodyStream(), int64(limit)+1))
	if err != nil {
		var te interface{ Timeout() bool }
		if errors.As(err, &te) && te.Timeout() {
			return &apiError{kind: kindBadRequest, msg: "request body did not arrive in time", cause: err}
		}
		return &apiError{kind: kindBadRequest, msg: "request body could not be read", cause: err}
	}
	if buf.Len() > limit {
		return newError(kindTooLarge, "request body is over %d bytes; this gateway accepts at most %d", limit, limit)
	}
	req.SetBodyRaw(buf.Bytes())
	return nil
}
