package proxy

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"
	"github.com/valyala/fasthttp"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/netguard"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// RequestIDHeader carries tollgate's request id back to the client; the
// usage record is keyed by the same id, so a caller can reconcile.
const RequestIDHeader = "X-Tollgate-Request-Id"

// call holds everything a request needs after the handler returns. Every
// value is a copy: fiber's strings and slices are views into buffers reused
// by the next request on the connection (R4).
type call struct {
	s       *Server
	start   time.Time
	rec     metering.Record
	dialect *registry.Dialect
	path    *registry.Path
	// provider is the provider answering: its usage rules meter the answer.
	provider *registry.Provider
	// overhead accumulates time spent inside tollgate, upstream waits excluded.
	overhead time.Duration
	// secret is the provider key, for redacting what the provider echoes.
	secret resolver.Secret
	// ctx ends when the client leaves or tollgate shuts down; watch is the
	// departure watcher that ends it, running until the answer's headers
	// (a stream) or its end (a whole answer).
	ctx   context.Context
	watch *departure
	// adm is governance's hold on the request (nil: no policy applied);
	// finish ends it before the record leaves.
	adm *governance.Admission
	// modelKeys counts the body's top-level "model" keys, once the model
	// was read from it (0: not counted).
	modelKeys int
	// attempts are the upstream attempts made so far (failover.go).
	attempts []metering.Attempt
}

// requestIDEncoding is lower-case base32 (0-9, a-v), which sorts like the
// bytes it encodes.
var requestIDEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// newRequestID returns "req_" and 26 characters: 48 bits of Unix
// milliseconds, then 80 random bits. Ids sort by time, so the usage table's
// primary key grows at its end instead of splitting pages at random.
func newRequestID(now time.Time) string {
	var b [16]byte
	ms := uint64(now.UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	_, _ = rand.Read(b[6:])
	return "req_" + requestIDEncoding.EncodeToString(b[:])
}

// preUpstreamTimeout bounds authentication and credential resolution. A
// cache hit takes microseconds and a store query milliseconds; a store that
// does not answer in this long is down, and the request must not hold its
// connection, and the client, until it recovers.
const preUpstreamTimeout = 10 * time.Second

// lookupError is the error of a failed authentication or resolution. One
// that came from ctx ending is tollgate's own unavailability, not an
// internal error or the provider's timeout, which is how the store's
// context errors would otherwise read.
func lookupError(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	switch classify(err).kind {
	case kindInternal, kindUpstreamTimeout:
	default:
		// The lookup's own answer (a bad token, no credential) stands.
		return err
	}
	if errors.Is(context.Cause(ctx), errClientGone) {
		return &apiError{kind: kindClientGone, msg: "the client went away", cause: err}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &apiError{kind: kindUnavailable, msg: "tollgate could not check this request's token and credential in time; try again shortly", cause: err}
	}
	return &apiError{kind: kindUnavailable, msg: "tollgate is shutting down; send the request again", cause: err}
}

// forward is the inference handler: route, authenticate, resolve, forward.
func (s *Server) forward(c *fiber.Ctx) error {
	start := s.cfg.timeNow()
	reg := s.cfg.Registry.Current()
	rawPath := string(c.Request().URI().PathOriginal())
	if msg := uncanonical(rawPath); msg != "" {
		return newError(kindBadRequest, "%s", msg)
	}
	method := c.Method()
	m, ok := reg.Route(method, rawPath)
	if !ok {
		if d, known := reg.RouteKnown(rawPath); known {
			return newError(kindNotFound, "%s %s is not a path tollgate forwards for %s; check the harness base URL", method, rawPath, d.Name)
		}
		return newError(kindNotFound, "no route for %s: tollgate serves %s", rawPath, routeList(reg))
	}
	// Codex probes with a WebSocket upgrade first; 426 before authentication
	// makes it fall back to HTTP at once, where a 401 or 404 costs a
	// multi-second retry loop (harness-clients.md §4).
	if m.Path.Upgrade426 && strings.EqualFold(c.Get(fiber.HeaderUpgrade), "websocket") {
		return newError(kindUpgradeRequired, "WebSocket is not supported here; use HTTP")
	}

	cl := &call{s: s, start: start, dialect: m.Dialect, path: m.Path}
	cl.rec = metering.Record{
		RequestID: newRequestID(start),
		Start:     start.UTC(),
		Dialect:   m.Dialect.Name,
		Operation: m.Dialect.Operation,
		Path:      m.Rest,
	}
	c.Set(RequestIDHeader, cl.rec.RequestID)

	// The request's context ends when tollgate shuts down or the client
	// leaves (departure.go). fiber's UserContext is context.Background(),
	// and fasthttp's request context never ends per request (R4).
	reqCtx, leave := context.WithCancelCause(s.cfg.BaseContext)
	defer leave(nil)
	cl.ctx = reqCtx
	// Until the body is read, the watcher must give the socket back, and
	// the body's deadline with it, restarted (at most preUpstreamTimeout
	// later than fasthttp set it).
	watch := watchDeparture(c.Context().Conn(), leave)
	bodyWait := bodyDeadline(c.Request().Header.ContentLength())
	// On a cache miss, authentication and resolution query the store: bound
	// them.
	ctx, cancel := context.WithTimeout(reqCtx, preUpstreamTimeout)
	defer cancel()
	// Failures are throttled before the token is checked, so a guesser
	// costs neither a store query nor a record (hostile-clients.md §4).
	token := tokenFrom(c, m.Dialect)
	lim := s.limiter.take(c.Context().RemoteAddr(), token, start)
	if !lim.ok {
		watch.stop(time.Now().Add(bodyWait))
		return cl.throttle(c, lim)
	}
	ident, err := s.cfg.Auth.Authenticate(ctx, token)
	watch.stop(time.Now().Add(bodyWait))
	if err != nil {
		err = lookupError(ctx, err)
		if reason := authFailure(err); reason != "" {
			s.limiter.failed(lim, token)
			var tr *resolver.TokenRefusedError
			r := ledger.Refusal{Reason: reason}
			if errors.As(err, &tr) {
				r.TokenID, r.Workspace = tr.TokenID, tr.Workspace
			}
			return cl.refuse(c, err, r)
		}
		// The store, not the caller, failed: that is no guess.
		s.limiter.accepted(lim, "", start)
		return cl.reject(err)
	}
	s.limiter.accepted(lim, token, start)
	cl.rec.TokenID, cl.rec.Workspace, cl.rec.Project, cl.rec.User = ident.TokenID, ident.Workspace, ident.Project, ident.User
	cl.rec.Session = strings.Clone(sessionID(c))

	var harness *registry.Harness
	if ident.Harness != "" {
		harness, err = reg.Harness(ident.Harness)
		if err != nil {
			return cl.refuse(c, newError(kindForbidden, "this token was issued for harness %q, which this gateway no longer knows", ident.Harness),
				ledger.Refusal{Reason: refusedHarness, TokenID: ident.TokenID, Workspace: ident.Workspace})
		}
		if !harness.SpeaksDialect(m.Dialect.Name) {
			return cl.refuse(c, newError(kindForbidden, "this token was issued for %s, which does not speak %s; use the base URL `tollgate env --harness %s` prints", harness.Name, m.Dialect.Name, harness.Name),
				ledger.Refusal{Reason: refusedHarness, TokenID: ident.TokenID, Workspace: ident.Workspace})
		}
	} else {
		harness = reg.HarnessByUserAgent(c.Get(fiber.HeaderUserAgent))
	}
	if harness != nil {
		cl.rec.Harness = harness.Name
	}

	// Only now, authenticated, is the body read: bounded as it arrives
	// (edge.go), then decoded within the same bound (decompress.go).
	if err := s.readBody(c); err != nil {
		return cl.reject(err)
	}
	// The body is read: from here on, any byte on the socket is a
	// pipelined request, and the end of it a departure.
	cl.watch = watchDeparture(c.Context().Conn(), leave)
	defer func() { cl.watch.stop(time.Time{}) }()
	body, releaseBody, err := requestBody(c, reg.Limits.MaxBodyBytes, s.decodes)
	defer releaseBody()
	if err != nil {
		return cl.reject(err)
	}
	if len(body) > reg.Limits.MaxBodyBytes {
		return cl.reject(newError(kindTooLarge, "request body is %d bytes; this gateway accepts at most %d", len(body), reg.Limits.MaxBodyBytes))
	}
	bodyStream := false
	if method == fiber.MethodPost && len(body) > 0 {
		if !gjson.ValidBytes(body) {
			return cl.reject(newError(kindBadRequest, "request body is not valid JSON"))
		}
		top := readTop(body)
		if m.Model == "" && m.Path.Metered {
			if top.model.Type != gjson.String || top.model.Str == "" {
				return cl.reject(newError(kindBadRequest, "request body has no \"model\" string"))
			}
			cl.rec.ModelRequest = strings.Clone(top.model.Str)
			cl.modelKeys = top.models
		}
		bodyStream = top.stream.Type == gjson.True
	} else if method == fiber.MethodPost && m.Path.Metered {
		return cl.reject(newError(kindBadRequest, "request body is empty"))
	}
	if m.Model != "" {
		cl.rec.ModelRequest = strings.Clone(m.Model)
	}
	cl.rec.Stream = m.Path.Streams(bodyStream)

	target, err := s.cfg.Resolver.Resolve(ctx, resolver.Request{
		Project: ident.Project, User: ident.User, Harness: cl.rec.Harness, Dialect: m.Dialect.Name,
	})
	if err != nil {
		return cl.reject(lookupError(ctx, err))
	}
	provider, err := reg.Provider(target.Provider)
	if err != nil {
		return cl.reject(&apiError{kind: kindUnavailable, msg: "the credential for this request names a provider this gateway does not know; ask an administrator", cause: err})
	}
	cl.rec.Provider, cl.rec.CredTier, cl.rec.CredentialID = provider.Name, target.Tier, target.CredentialID
	cl.provider = provider
	cl.secret = target.Secret
	if err := s.checkOwner(ctx, cl, m.Rest, body); err != nil {
		return cl.reject(err)
	}

	// Governance comes last before the upstream request, after the
	// credential is known, so that nothing between a reservation and the
	// forward can fail but the rewrite below (which releases).
	out, rest := body, m.Rest
	if g := s.cfg.Governor; g != nil {
		adm, err := g.Admit(ctx, governance.Request{
			RequestID: cl.rec.RequestID,
			Scope: governance.Scope{Project: ident.Project, User: ident.User, Workspace: ident.Workspace,
				TokenID: ident.TokenID, Harness: cl.rec.Harness},
			Dialect: m.Dialect.Name, Provider: provider.Name,
			Model: cl.rec.ModelRequest, Body: body, Metered: m.Path.Metered,
			Candidates: cl.candidates(provider, target),
		})
		if err != nil {
			var ref *governance.Refusal
			if errors.As(err, &ref) {
				return cl.governed(c, harness, ref)
			}
			return cl.reject(lookupError(ctx, err))
		}
		if adm != nil {
			if out, rest, err = cl.applyAdmission(adm, body, m); err != nil {
				adm.Release(ctx)
				return cl.reject(err)
			}
			cl.adm = adm
		}
	}

	// Every attempt is written inside this handler, while fiber's body
	// buffer is still ours, so agent contexts (often megabytes) are not
	// copied; a model map or the include_usage edit returns a new slice.
	plan := &sendPlan{method: method, rest: rest, body: out, model: cl.rec.ModelRequest,
		pathModel: m.Model != "", modelSent: cl.rec.ModelSent, lim: reg.Limits}
	if cl.rec.ModelSent != "" {
		plan.model = cl.rec.ModelSent
	}
	if q := c.Request().URI().QueryString(); len(q) > 0 {
		plan.query = "?" + stripTokenParams(string(q))
	}
	cands := append([]resolver.Target{target}, target.Alternates...)
	cl.overhead += s.cfg.timeNow().Sub(start)
	return cl.send(c, plan, cands)
}

// bodyTop is what the handler reads of a body's top level.
type bodyTop struct {
	// model and stream are the first of their keys, as gjson.Get reads.
	model, stream gjson.Result
	// models counts the "model" keys: a policy judging the first while a
	// provider serves the last would be bypassed (governance.BodyModel).
	models int
}

// readTop reads bodyTop in one pass over the top level: Get for the model,
// Get for stream and governance.BodyModel's count were a walk each. The
// results are views of body; what is kept is cloned.
func readTop(body []byte) (t bodyTop) {
	gjson.Parse(unsafe.String(unsafe.SliceData(body), len(body))).ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "model":
			if t.models == 0 {
				t.model = v
			}
			t.models++
		case "stream":
			if !t.stream.Exists() {
				t.stream = v
			}
		}
		return true
	})
	return t
}

// candidates lists the providers a request with alternates may be sent
// to, for its budget ceiling (governance.Request.Candidates); nil for a
// single credential, which then costs nothing here.
func (cl *call) candidates(primary *registry.Provider, t resolver.Target) []*registry.Provider {
	if len(t.Alternates) == 0 {
		return nil
	}
	out := make([]*registry.Provider, 1, 1+len(t.Alternates))
	out[0] = primary
	reg := cl.s.cfg.Registry.Current()
	for _, alt := range t.Alternates {
		// The attempt loop skips (and logs) the same ones.
		if p, err := reg.Provider(alt.Provider); err == nil && p.Speaks(cl.dialect.Name) {
			out = append(out, p)
		}
	}
	return out
}

// applyAdmission puts an admission in the request: the model to send, in
// the body or Gemini's path, and the reservation in the record before
// begin, so the in-flight journal carries it. The body keeps every other
// byte (prompt caches match on them). Whenever a policy applied, a body
// with two "model" keys is refused: the policy judged one, and the
// provider might serve the other.
func (cl *call) applyAdmission(adm *governance.Admission, body []byte, m registry.Match) ([]byte, string, error) {
	out, rest := body, m.Rest
	switch {
	case cl.modelKeys > 1:
		return nil, "", newError(kindBadRequest, "%s", governance.ErrDuplicateModel.Error())
	case cl.modelKeys == 0 && m.Model == "" && len(body) > 0:
		if _, err := governance.BodyModel(body); err != nil {
			return nil, "", newError(kindBadRequest, "%s", err.Error())
		}
	}
	if adm.Model != "" && adm.Model != cl.rec.ModelRequest {
		if m.Model != "" {
			rest = governance.RewritePathModel(m.Rest, adm.Model)
		} else {
			var err error
			if out, err = governance.RewriteModel(body, adm.Model); err != nil {
				return nil, "", newError(kindBadRequest, "%s", err.Error())
			}
		}
		cl.rec.ModelSent = adm.Model
	}
	cl.rec.Reserved, cl.rec.Allotted, cl.rec.ReservedMicroUSD = adm.Reserved, adm.Allotted, adm.ReservedMicroUSD
	return out, rest, nil
}

// newUpstreamRequest builds the upstream request from scratch. It holds
// body, not a copy: release it before the handler returns.
func (cl *call) newUpstreamRequest(c *fiber.Ctx, method, url string, body []byte, p *registry.Provider, secret resolver.Secret) *fasthttp.Request {
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(method)
	req.SetRequestURI(url)
	req.Header.SetNoDefaultContentType(true)
	writeUpstreamHeaders(&req.Header, c, p, secret)
	req.SetBodyRaw(body)
	return req
}

// sendWhole makes attempt a of a request whose answer is not streamed,
// and answers once it is read whole. A non-streamed answer's headers come
// with its body, so the header timeout bounds the whole exchange; no byte
// reaches the client before the answer is whole, so even a 2xx that breaks
// off may be followed by another attempt.
func (cl *call) sendWhole(c *fiber.Ctx, a *attempt, lim registry.Limits) attemptResult {
	s := cl.s
	t0 := s.cfg.timeNow()
	req := cl.newUpstreamRequest(c, a.method, a.url, a.body, a.p, a.t.Secret)
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	cl.begin()
	cl.overhead += s.cfg.timeNow().Sub(t0)

	_, sent, err := s.fast.do(cl.ctx, req, resp, a.timeout)
	t1 := s.cfg.timeNow()
	if err != nil {
		return cl.transportFailure(a, err, sent, headersRead(resp))
	}
	status := resp.StatusCode()
	if status < 200 || status > 299 {
		b := upstreamErrorBody(resp.Body(), resp.Header.ContentEncoding(), cl.dialect.ErrorShape, status, lim.MaxErrorBodyBytes)
		return cl.answerStatus(c, a, resp, b[:min(len(b), lim.MaxErrorBodyBytes)], t1)
	}
	cl.answered(c, a, resp)
	return answeredWith(cl.buffered(c, resp.Body(), isEventStream(string(resp.Header.ContentType())), lim, t1))
}

// sendStreamed makes attempt a of a request that asked for a stream. The
// header timeout bounds the wait for headers only; the body then has an
// idle timeout and no total one (R1). A 2xx stream commits the request:
// its headers go out with the first byte. A provider may still answer it
// whole.
func (cl *call) sendStreamed(c *fiber.Ctx, a *attempt, lim registry.Limits) attemptResult {
	s := cl.s
	t0 := s.cfg.timeNow()
	req := cl.newUpstreamRequest(c, a.method, a.url, a.body, a.p, a.t.Secret)
	resp := fasthttp.AcquireResponse()
	resp.StreamBody = true
	cl.begin()
	cl.overhead += s.cfg.timeNow().Sub(t0)

	upBody, sent, err := s.fast.do(cl.ctx, req, resp, a.timeout)
	// The request is written: a long stream need not hold the body.
	fasthttp.ReleaseRequest(req)
	if err != nil {
		answered := headersRead(resp)
		fasthttp.ReleaseResponse(resp)
		return cl.transportFailure(a, err, sent, answered)
	}
	t1 := s.cfg.timeNow()
	up := s.fast.stream(resp, upBody)
	status := resp.StatusCode()
	sse := isEventStream(string(resp.Header.ContentType()))
	if sse && status >= 200 && status <= 299 {
		cl.answered(c, a, resp)
		// The stream's own watcher takes over; two would contend for the
		// socket's read lock.
		cl.watch.stop(time.Time{})
		cl.watch = nil
		sb := newStreamBody(cl, up, c.Context().Conn(), lim.MaxEventBytes, cl.rec.Injected)
		c.Set("X-Accel-Buffering", "no")
		c.Response().ImmediateHeaderFlush = true
		c.Context().SetBodyStream(sb, -1)
		cl.overhead += s.cfg.timeNow().Sub(t1)
		return answeredWith(nil)
	}
	// up.Close releases resp: what is kept of it is copied first.
	defer up.Close()
	// do's abort ended with the headers; the body is read here.
	defer context.AfterFunc(cl.ctx, func() { up.closeBody(errClientGone) })()
	if status < 200 || status > 299 {
		b, _ := io.ReadAll(io.LimitReader(up, int64(lim.MaxErrorBodyBytes)))
		b = upstreamErrorBody(b, resp.Header.ContentEncoding(), cl.dialect.ErrorShape, status, lim.MaxErrorBodyBytes)
		return cl.answerStatus(c, a, resp, b, s.cfg.timeNow())
	}
	b, err := io.ReadAll(io.LimitReader(up, int64(lim.MaxResponseBodyBytes)+1))
	if err != nil {
		return cl.transportFailure(a, err, true, true)
	}
	cl.answered(c, a, resp)
	return answeredWith(cl.buffered(c, b, sse, lim, s.cfg.timeNow()))
}

// answered makes a 2xx attempt the request's answer.
func (cl *call) answered(c *fiber.Ctx, a *attempt, resp *fasthttp.Response) {
	cl.observe(a, resp.StatusCode(), false, &resp.Header)
	cl.note(a, resp.StatusCode(), "", false)
	cl.commit(a)
	cl.answerHeaders(c, resp)
}

// begin tells an InflightSink that the request is about to reach the
// provider, which may bill it from then on even if tollgate dies before
// the answer ends.
func (cl *call) begin() {
	if in := cl.s.inflight; in != nil {
		in.Begin(&cl.rec)
	}
}

// progress hands an InflightSink the record as it would be if the request
// ended now with the usage seen so far (st), priced.
func (cl *call) progress(st metering.Settlement, elapsed time.Duration) {
	r := cl.rec
	r.Duration = elapsed
	r.ModelServed, r.UpstreamID, r.ServiceTier = st.ModelServed, st.UpstreamID, st.ServiceTier
	r.Source, r.Usage = st.Source, st.Usage
	cl.price(&r)
	cl.s.inflight.Progress(&r)
}

// answerHeaders copies the provider's status and allowed headers to the
// client response and the record.
func (cl *call) answerHeaders(c *fiber.Ctx, resp *fasthttp.Response) int {
	status := resp.StatusCode()
	cl.rec.Status = status
	copyResponseHeaders(c, &resp.Header, cl.secret)
	c.Status(status)
	return status
}

// errResponseTooLarge is the cause when a whole answer is over the limit.
var errResponseTooLarge = errors.New("upstream answer over the response limit")

// buffered meters a 2xx answer read whole (t1: when its last byte came) and
// sends it with a known length. An SSE body is framed like a stream.
func (cl *call) buffered(c *fiber.Ctx, body []byte, sse bool, lim registry.Limits, t1 time.Time) error {
	s := cl.s
	if len(body) > lim.MaxResponseBodyBytes {
		return cl.upstreamFailed(errResponseTooLarge, true)
	}
	cl.rec.TTFB = t1.Sub(cl.start)
	cl.rec.BytesOut = int64(len(body))
	if cl.path.Metered {
		mt := metering.NewMeterFor(cl.dialect, cl.provider, lim.MaxEventBytes)
		if sse {
			mt.Observe(body)
		} else {
			mt.Body(body)
		}
		cl.settle(mt.Settle(metering.EndEOF), true)
	} else {
		// Nothing was metered, so no terminal event was looked for: an
		// unfed meter settles as truncated, but a whole 2xx answer is ok.
		cl.rec.Outcome, cl.rec.Source = metering.OutcomeOK, metering.SourceNone
	}
	c.Response().SetBody(body)
	cl.overhead += s.cfg.timeNow().Sub(t1)
	cl.finish()
	return nil
}

// upstreamError passes a provider's non-2xx answer through with its status
// and body (read up to the error limit), minus anything that could carry
// our key. 401 and 403 bodies are replaced outright: providers echo key
// fragments there, and the caller cannot fix our credential anyway
// (peer-behaviours.md §6).
func (cl *call) upstreamError(c *fiber.Ctx, status int, body []byte, secret resolver.Secret, t1 time.Time) error {
	cl.rec.TTFB = t1.Sub(cl.start)
	cl.rec.Outcome, cl.rec.Source = metering.OutcomeUpstreamError, metering.SourceNone
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		e := newError(kindUnauthenticated, "the provider rejected the credential tollgate holds for this project (HTTP %d); ask an administrator to check it", status)
		if status == http.StatusForbidden {
			e.kind = kindForbidden
			e.msg = "the provider refused this request with the credential tollgate holds for this project (HTTP 403); ask an administrator to check it"
		}
		body = errorBody(cl.dialect.ErrorShape, e)
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	} else {
		body = redactErrorBody(body, secret, cl.dialect.ErrorShape, status)
	}
	cl.rec.BytesOut = int64(len(body))
	c.Status(status)
	c.Response().SetBody(body)
	cl.finish()
	return nil
}

// headersRead reports whether fasthttp parsed the answer's headers before
// an error. It resets them when their read fails, and a parsed answer has a
// non-zero content length: a length, -1 (chunked) or -2 (until close). A
// parsed answer of length 0 cannot fail after its headers, so it does not
// matter that it looks unparsed.
func headersRead(resp *fasthttp.Response) bool {
	return resp.Header.ContentLength() != 0
}

// upstreamFailed answers 502 or 504 when no usable answer came back;
// answered says the provider's headers had arrived. The transport error may
// hold the upstream URL, so only its class is kept.
func (cl *call) upstreamFailed(err error, answered bool) error {
	e := classify(err)
	outcome, source := metering.OutcomeUnreachable, metering.SourceNone
	switch {
	case errors.Is(err, errClientGone), errors.Is(context.Cause(cl.ctx), errClientGone):
		// Nobody will read the answer; the time spent is up to the leave.
		e = &apiError{kind: kindClientGone, msg: "the client went away", cause: err}
		outcome = metering.OutcomeClientGone
		if answered && cl.path.Metered {
			source = metering.SourceMissing
		}
	case errors.Is(err, netguard.ErrRefused):
		// Nothing was sent: the credential's base URL resolved to an
		// address tollgate does not reach (upstream.go, dialGuard).
		e = &apiError{kind: kindUpstreamUnreachable, msg: "the credential for this request has a base URL on an address this gateway refuses to reach (loopback, private or link-local); ask an administrator", cause: err}
		outcome = metering.OutcomeRejected
	case errors.Is(err, errResponseTooLarge), errors.Is(err, fasthttp.ErrBodyTooLarge):
		e = &apiError{kind: kindUpstreamUnreachable, msg: "the provider's answer is larger than this gateway's response limit (limits.max_response_body_bytes)", cause: err}
	case answered && e.kind != kindUpstreamTimeout:
		// The headers came, then the body broke off: the provider was
		// reached and may bill the request, so its usage is unknown, not none.
		e = &apiError{kind: kindUpstreamUnreachable, msg: "the provider's answer broke off before its end; try again", cause: err}
		outcome = metering.OutcomeTruncated
		if cl.path.Metered {
			source = metering.SourceMissing
		}
	case e.kind != kindUpstreamTimeout:
		e = &apiError{kind: kindUpstreamUnreachable, msg: "the provider could not be reached; try again shortly", cause: err}
	}
	cl.rec.Status = kindStatus[e.kind]
	cl.rec.Outcome, cl.rec.Source = outcome, source
	cl.s.log.Warn("upstream request failed", "request_id", cl.rec.RequestID, "provider", cl.rec.Provider, "err_class", errClass(err))
	cl.finish()
	return &apiError{kind: e.kind, msg: e.msg}
}

// reject records a request tollgate refused before any upstream call and
// returns the error for the error handler to render.
func (cl *call) reject(err error) error {
	e := classify(err)
	cl.rec.Status = e.status()
	cl.rec.Outcome, cl.rec.Source = metering.OutcomeRejected, metering.SourceNone
	if e.kind == kindClientGone {
		cl.rec.Outcome = metering.OutcomeClientGone
	}
	cl.finish()
	return e
}

// Refusal reasons of the refusals table.
const (
	refusedMissing   = "missing"
	refusedInvalid   = "invalid"
	refusedExpired   = "expired"
	refusedRevoked   = "revoked"
	refusedHarness   = "wrong_harness"
	refusedThrottled = "throttled"
)

// authFailure names the reason of an authentication refusal, or returns
// "" for any other error (the store failing is tollgate's fault).
func authFailure(err error) string {
	switch {
	case errors.Is(err, resolver.ErrTokenMissing):
		return refusedMissing
	case errors.Is(err, resolver.ErrTokenInvalid):
		return refusedInvalid
	case errors.Is(err, resolver.ErrTokenExpired):
		return refusedExpired
	case errors.Is(err, resolver.ErrTokenRevoked):
		return refusedRevoked
	}
	return ""
}

// refuse ends a request refused for who is calling. Unlike reject it
// writes no usage record and no access-log line: anyone can send these
// at line rate, so they are counted per minute (Config.Refusals) and in
// metrics, and a flood cannot fill the disk.
func (cl *call) refuse(c *fiber.Ctx, err error, r ledger.Refusal) error {
	s := cl.s
	e := classify(err)
	cl.rec.Status = kindStatus[e.kind]
	cl.rec.Outcome, cl.rec.Source = metering.OutcomeRejected, metering.SourceNone
	cl.rec.Duration = s.cfg.timeNow().Sub(cl.start)
	if s.cfg.Observer != nil {
		s.cfg.Observer.Observe(&cl.rec, cl.overhead)
	}
	if s.cfg.Refusals != nil {
		r.Client, r.Dialect = clientKey(c.Context().RemoteAddr()), cl.dialect.Name
		s.cfg.Refusals.Add(r)
	}
	return e
}

// throttle refuses a request from a client over its failure budget with
// 429 and Retry-After, before its token is looked at. The connection is
// closed, so each further burst costs the guesser a new handshake.
func (cl *call) throttle(c *fiber.Ctx, d limitDecision) error {
	wait := retryAfterSeconds(d.wait)
	c.Set(fiber.HeaderRetryAfter, strconv.Itoa(wait))
	c.Context().SetConnectionClose()
	e := newError(kindTooManyRequests, "too many failed authentications from this address; retry in %d s with a valid tollgate token", wait)
	e.retryAfter = wait
	if d.global {
		e.msg = fmt.Sprintf("too many failed authentications at this gateway; retry in %d s", wait)
	}
	return cl.refuse(c, e, ledger.Refusal{Reason: refusedThrottled})
}

// clientKey renders a client's limiter key: the IPv4 address or the IPv6
// /64.
func clientKey(a net.Addr) string {
	p, ok := clientPrefix(a)
	switch {
	case !ok:
		return ""
	case p.Addr().Is4():
		return p.Addr().String()
	}
	return p.String()
}

// settle copies a meter's settlement into the record.
func (cl *call) settle(st metering.Settlement, metered bool) {
	cl.rec.Outcome = st.Outcome
	cl.rec.ModelServed, cl.rec.UpstreamID, cl.rec.ServiceTier = st.ModelServed, st.UpstreamID, st.ServiceTier
	cl.rec.EventOverflow = st.Overflow
	cl.noteOwner(cl.rec.UpstreamID)
	if !metered {
		cl.rec.Source = metering.SourceNone
		return
	}
	cl.rec.Source, cl.rec.Usage = st.Source, st.Usage
	cl.price(&cl.rec)
}

// price sets r's cost from its usage.
func (cl *call) price(r *metering.Record) {
	if r.Usage != nil && cl.s.cfg.Pricer != nil {
		r.CostMicroUSD, r.PriceVersion = cl.s.cfg.Pricer.Cost(r.Provider, r.Model(), r.ServiceTier, *r.Usage)
		r.Unpriced = r.CostMicroUSD == nil
	}
}

// finish completes the record, hands it to the sink and writes the one
// access-log line of the request.
func (cl *call) finish() {
	s := cl.s
	r := &cl.rec
	r.Duration = s.cfg.timeNow().Sub(cl.start)
	if s.cfg.Observer != nil {
		s.cfg.Observer.Observe(r, cl.overhead)
	}
	if s.log.Enabled(context.Background(), slog.LevelInfo) {
		s.logRecord(r)
	}
	// The concurrency slot frees and TPM is corrected now; the budget
	// settles with the record, in the ledger's transaction.
	cl.adm.Finish(r)
	// Record takes ownership of r: nothing may touch it afterwards.
	s.cfg.Sink.Record(r)
}

// logRecord writes the one access-log line of a request.
func (s *Server) logRecord(r *metering.Record) {
	attrs := []any{
		"request_id", r.RequestID, "status", r.Status, "outcome", r.Outcome,
		"dialect", r.Dialect, "path", r.Path, "harness", r.Harness, "provider", r.Provider,
		"workspace", r.Workspace, "project", r.Project, "model", r.ModelRequest,
		"stream", r.Stream, "usage_source", r.Source, "bytes_out", r.BytesOut,
		"duration_ms", r.Duration.Milliseconds(), "ttfb_ms", r.TTFB.Milliseconds(),
	}
	if r.Usage != nil {
		attrs = append(attrs, "input", r.Usage.InputTotal(), "output", r.Usage.Output)
	}
	s.log.Info("request", attrs...)
}

func isEventStream(ct string) bool {
	return strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct)), "text/event-stream")
}

// uncanonical explains why a raw request path is refused, or returns "".
// Paths are routed as received; dot segments, doubled or encoded slashes
// and backslashes are refused rather than normalised, so no path can reach
// a route other than the one it names (/openai/../admin/v1/tokens).
func uncanonical(p string) string {
	lp := strings.ToLower(p)
	switch {
	case strings.Contains(lp, "%2f"), strings.Contains(lp, "%5c"), strings.Contains(lp, "%2e"), strings.Contains(lp, "%00"):
		return "request path must not contain percent-encoded slashes, dots or NUL"
	case strings.Contains(p, "//"), strings.Contains(p, `\`):
		return "request path must not contain empty segments or backslashes"
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return "request path must not contain '.' or '..' segments"
		}
	}
	return ""
}

func routeList(reg *registry.Registry) string {
	seen := map[string]bool{}
	var out []string
	for _, d := range reg.Dialects() {
		if !seen[d.Route] {
			seen[d.Route] = true
			out = append(out, "/"+d.Route+"/…")
		}
	}
	return strings.Join(out, ", ")
}

// stripTokenParams removes Gemini's ?key= carrier from a query string; it is
// a token, never forwarded. Other parameters keep their bytes and order.
func stripTokenParams(q string) string {
	if !strings.Contains(q, "key=") {
		return q
	}
	parts := strings.Split(q, "&")
	kept := parts[:0]
	for _, p := range parts {
		name, _, _ := strings.Cut(p, "=")
		if n, err := url.QueryUnescape(name); err == nil && strings.EqualFold(n, "key") {
			continue
		}
		kept = append(kept, p)
	}
	return strings.Join(kept, "&")
}
