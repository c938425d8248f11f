package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"
	"github.com/valyala/fasthttp"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/health"
	"github.com/tollgate/tollgate/internal/netguard"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// Failover (issue 13): a request may be answered by any of its binding's
// candidates, the resolved target first, then its Alternates. Failover ends
// with the first answer that reaches the client: a 2xx, or an error the
// caller must see (400, 403, 404, 413...). Nothing is retried once a byte
// went out, so a stream is never replayed. Every attempt runs inside the
// handler, while fiber's body buffer is still the request's: the body is
// whole in memory (readBody buffered it, bounded, even when the edge
// streamed it), so it can be sent again without a copy.

// Failover defaults, each a bound with its reason.
const (
	// DefaultFailoverHeaderTimeout bounds a streamed attempt's wait for
	// headers when another candidate could take over after it. A provider
	// sends a stream's headers before it generates (message_start,
	// response.created, Gemini's first chunk after prefill), so the wait is
	// queueing and prefill: seconds, and well under a minute even for a
	// context of a million tokens. A minute of silence is an upstream that
	// is stuck, not one that is thinking, and it is a tenth of the
	// 10-minute bound that a non-streamed answer (headers after the whole
	// generation) needs.
	DefaultFailoverHeaderTimeout = 60 * time.Second
	// DefaultRetryAfterMax is the longest Retry-After tollgate waits out
	// itself to send the request to the same credential again: a second
	// or two is a provider smoothing a burst, and the harness would wait as
	// long. A longer wait moves on to the next candidate, and the harness
	// learns the wait from the answer if none is left.
	DefaultRetryAfterMax = 2 * time.Second
	// DefaultFailoverDeadline bounds the client's wait for failover: no
	// further attempt starts, and no wait before one runs, past this long
	// after the request arrived. Harnesses time a request out after 300 to
	// 600 s and retry on their own; 30 s of tollgate's retries stays well
	// inside that, and short of Claude Code's retry watchdog.
	DefaultFailoverDeadline = 30 * time.Second
	// backoffBase and backoffMax shape the jittered wait before moving to
	// another candidate: a different credential needs no real wait, but
	// candidates often share a provider, and a burst of requests failing
	// over at once should not hit it in step.
	backoffBase = 50 * time.Millisecond
	backoffMax  = time.Second
)

// FailoverConfig bounds failover (Config.Failover). Zero values take the
// defaults.
type FailoverConfig struct {
	// HeaderTimeout, default DefaultFailoverHeaderTimeout, bounds a
	// streamed attempt's wait for headers, and an unmetered one's (models,
	// count_tokens) for its whole answer, when failover may follow it;
	// otherwise Config.ResponseHeaderTimeout does.
	HeaderTimeout time.Duration
	// RetryAfterMax, default DefaultRetryAfterMax: a 429 or 5xx asking to
	// wait at most this long is sent to the same credential once more after
	// the wait; a longer one moves on. Negative: never retry the same
	// credential.
	RetryAfterMax time.Duration
	// Deadline, default DefaultFailoverDeadline: no attempt after the first
	// starts later than this after the request arrived.
	Deadline time.Duration
	// AfterMaybeBilled fails over on metered paths after an attempt the
	// provider may have billed: the whole request was sent, and then no
	// headers came in time, the connection closed, or a whole answer broke
	// off. Default false: such a request is answered with 502 or 504 as
	// before, since a second attempt could be billed twice. Unmetered paths
	// always fail over after it.
	AfterMaybeBilled bool
}

func (f FailoverConfig) withDefaults() FailoverConfig {
	if f.HeaderTimeout <= 0 {
		f.HeaderTimeout = DefaultFailoverHeaderTimeout
	}
	if f.RetryAfterMax == 0 {
		f.RetryAfterMax = DefaultRetryAfterMax
	}
	if f.Deadline <= 0 {
		f.Deadline = DefaultFailoverDeadline
	}
	return f
}

// HealthTracker is what the proxy asks of credential health
// (*health.Tracker). Observe's Header is valid during the call only.
type HealthTracker interface {
	Check(credID string) health.Verdict
	Observe(o health.Observation)
	States() []health.State
}

// sendPlan is what every attempt of a request shares: the request after
// governance, before any provider's model map or usage injection.
type sendPlan struct {
	method string
	// rest is the path after the route, query is the forwarded query
	// ("" or "?..."); body the body to send.
	rest, query string
	body        []byte
	// model is the model the plan sends (the alias target, else the
	// requested one); pathModel says it sits in the path (Gemini).
	model     string
	pathModel bool
	// modelSent is the admission's ModelSent.
	modelSent string
	lim       registry.Limits
}

// attempt is one try of one candidate.
type attempt struct {
	t resolver.Target
	p *registry.Provider
	// probe is the health verdict's: this attempt decides a half-open
	// circuit.
	probe   bool
	method  string
	url     string
	body    []byte
	timeout time.Duration
	start   time.Time
	// injected and modelSent go to the record if this attempt answers.
	injected  bool
	modelSent string
}

// attemptResult is how an attempt ended. done: it answered the client (or
// must, with ret); otherwise it failed in a way that permits another one.
type attemptResult struct {
	done bool
	ret  error
	// status is the provider's, 0 when none came; err the transport error
	// and answered whether headers had come before it (upstreamFailed).
	status   int
	err      error
	answered bool
	// retryAfter is the provider's Retry-After (hasWait), noRetry its
	// x-should-retry: false.
	retryAfter time.Duration
	hasWait    bool
	noRetry    bool
	// kept is the provider's error answer, for the client if no later
	// candidate answers.
	kept *keptAnswer
}

func answeredWith(err error) attemptResult { return attemptResult{done: true, ret: err} }

// keptAnswer is a provider error answer held back while another candidate
// is tried: its status, headers and (bounded, decoded) body.
type keptAnswer struct {
	a      *attempt
	status int
	header fasthttp.ResponseHeader
	body   []byte
}

// retryableStatus are the answers another attempt may fix: rate limited,
// overloaded (Anthropic's 529) or failing on the provider's side.
func retryableStatus(status int) bool {
	switch status {
	case http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout, 529:
		return true
	}
	return false
}

// credentialRejected reports an answer that is about the credential, not
// the caller's request: the caller never authenticates to the provider, so
// a 401 (Anthropic authentication_error, OpenAI invalid_api_key, Gemini
// UNAUTHENTICATED) is always tollgate's key being refused, and another
// credential may work. Gemini answers an invalid key with 400
// INVALID_ARGUMENT, told apart by its ErrorInfo reason API_KEY_INVALID.
// A 403 is not: Anthropic's permission_error, OpenAI's region refusal and
// Gemini's PERMISSION_DENIED judge what this request asks for (a model, a
// feature, a place), and the client sees them as they are.
func credentialRejected(status int, shape string, body []byte) bool {
	switch {
	case status == http.StatusUnauthorized:
		return true
	case status == http.StatusBadRequest && shape == registry.ShapeGemini:
		return gjson.GetBytes(body, `error.details.#(reason=="API_KEY_INVALID")`).Exists()
	}
	return false
}

// failsCredential says an answer counts against the credential's health.
func failsCredential(status int, shape string, body []byte) bool {
	return retryableStatus(status) || credentialRejected(status, shape, body)
}

// retryAfterOf reads how long the provider asks to wait: OpenAI's
// retry-after-ms, else Retry-After in seconds or as an HTTP date, else, on
// Gemini, the RetryInfo delay in the error body (its only carrier).
func retryAfterOf(h *fasthttp.ResponseHeader, shape string, body []byte, now time.Time) (time.Duration, bool) {
	if v := strings.TrimSpace(string(h.Peek("Retry-After-Ms"))); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil && ms >= 0 && ms < 1e9 {
			return time.Duration(ms * float64(time.Millisecond)), true
		}
	}
	if v := strings.TrimSpace(string(h.Peek(fiber.HeaderRetryAfter))); v != "" {
		if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 && s < 1e6 {
			return time.Duration(s * float64(time.Second)), true
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(0, t.Sub(now)), true
		}
	}
	if shape == registry.ShapeGemini {
		v := gjson.GetBytes(body, `error.details.#(@type=="type.googleapis.com/google.rpc.RetryInfo").retryDelay`)
		if d, err := time.ParseDuration(v.Str); err == nil && d >= 0 {
			return d, true
		}
	}
	return 0, false
}

// backoff is the jittered wait before the n-th attempt moves to another
// candidate (n ≥ 1): half to one and a half times an exponential step.
func backoff(n int) time.Duration {
	d := backoffBase << min(n-1, 8)
	d = min(d, backoffMax)
	return d/2 + rand.N(d)
}

// send tries the candidates in order until one answers, then returns what
// the handler returns. The first attempt always runs, unless health
// refuses every candidate; further ones honour the deadline.
func (cl *call) send(c *fiber.Ctx, p *sendPlan, cands []resolver.Target) error {
	s := cl.s
	fo := s.cfg.Failover
	deadline := cl.start.Add(fo.Deadline)
	var (
		kept         *keptAnswer
		last         attemptResult
		tried        int
		longest      time.Duration
		refusedUntil time.Time
		wait         time.Duration
	)
candidates:
	for i := range cands {
		t := cands[i]
		prov, ok := cl.candidateProvider(t, i == 0)
		if !ok {
			continue
		}
		v := cl.check(t.CredentialID)
		if !v.OK {
			if refusedUntil.IsZero() || v.Until.Before(refusedUntil) {
				refusedUntil = v.Until
			}
			s.log.Debug("failover: candidate skipped", "request_id", cl.rec.RequestID, "credential_id", t.CredentialID, "reason", v.Reason)
			continue
		}
		for again := false; ; again = true {
			if tried > 0 {
				if !again {
					wait = backoff(tried)
				}
				if s.cfg.timeNow().Add(wait).After(deadline) {
					break candidates
				}
				if !cl.pause(wait) {
					cl.listAttempts()
					return cl.upstreamFailed(fmt.Errorf("failover wait: %w", context.Cause(cl.ctx)), false)
				}
			}
			a, err := cl.prepare(p, t, prov, i < len(cands)-1 && s.cfg.timeNow().Before(deadline))
			if a != nil {
				// Only the first attempt is the probe a half-open
				// circuit handed out.
				a.probe = v.Probe && !again
			}
			if err != nil {
				// Only a body with two "model" keys cannot take a model
				// map: the caller's to fix, as governance says too.
				cl.listAttempts()
				return cl.reject(err)
			}
			tried++
			var res attemptResult
			if cl.rec.Stream {
				res = cl.sendStreamed(c, a, p.lim)
			} else {
				res = cl.sendWhole(c, a, p.lim)
			}
			if res.done {
				return res.ret
			}
			last = res
			if res.kept != nil {
				kept = res.kept
			}
			if res.hasWait {
				longest = max(longest, res.retryAfter)
			}
			if !again && res.hasWait && !res.noRetry && fo.RetryAfterMax > 0 && res.retryAfter <= fo.RetryAfterMax {
				// Jitter keeps requests that waited together from
				// arriving together. A wait past the deadline moves on
				// instead, as a long one does.
				wait = res.retryAfter + rand.N(res.retryAfter/10+time.Millisecond)
				if !s.cfg.timeNow().Add(wait).After(deadline) {
					continue
				}
			}
			break
		}
	}
	return cl.exhausted(c, kept, last, tried, len(cands) > 1, longest, refusedUntil)
}

// candidateProvider returns t's provider. An alternate whose provider is
// unknown or does not speak the dialect is skipped (the primary's was
// checked by forward).
func (cl *call) candidateProvider(t resolver.Target, primary bool) (*registry.Provider, bool) {
	p, err := cl.s.cfg.Registry.Current().Provider(t.Provider)
	if err != nil || (!primary && !p.Speaks(cl.dialect.Name)) {
		cl.s.log.Warn("failover: alternate skipped: its provider is unknown or does not speak the dialect",
			"request_id", cl.rec.RequestID, "credential_id", t.CredentialID, "provider", t.Provider)
		return nil, false
	}
	return p, true
}

// check asks the health tracker whether credID may be tried now.
func (cl *call) check(credID string) health.Verdict {
	if h := cl.s.cfg.Health; h != nil {
		return h.Check(credID)
	}
	return health.Verdict{OK: true}
}

// pause waits d, or returns false at once if the client leaves or
// tollgate shuts down.
func (cl *call) pause(d time.Duration) bool {
	if d <= 0 {
		return cl.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-cl.ctx.Done():
		return false
	}
}

// prepare builds t's attempt: its provider's base URL, the model its map
// names (a byte-exact edit of the body, or Gemini's path), usage injection
// if it allows it, and the header timeout. more says another candidate
// could follow it.
func (cl *call) prepare(p *sendPlan, t resolver.Target, prov *registry.Provider, more bool) (*attempt, error) {
	t0 := cl.s.cfg.timeNow()
	a := &attempt{t: t, p: prov, method: p.method, body: p.body, modelSent: p.modelSent, start: t0}
	rest := p.rest
	if sent := prov.MapModel(p.model); p.model != "" && sent != p.model {
		if p.pathModel {
			rest = governance.RewritePathModel(rest, sent)
		} else if len(a.body) > 0 {
			b, err := governance.RewriteModel(a.body, sent)
			switch {
			case errors.Is(err, governance.ErrNoModel):
			case err != nil:
				return nil, newError(kindBadRequest, "%s (provider %s renames the model)", err.Error(), prov.Name)
			default:
				a.body = b
			}
		}
		a.modelSent = sent
	}
	if a.modelSent == cl.rec.ModelRequest {
		a.modelSent = ""
	}
	if cl.path.IncludeUsage && cl.rec.Stream && prov.InjectsUsage() {
		a.body, a.injected, _ = metering.InjectIncludeUsage(a.body)
	}
	base := prov.BaseURL
	if t.BaseURL != "" {
		base = strings.TrimRight(t.BaseURL, "/")
	}
	a.url = base + rest + p.query
	a.timeout = cl.s.cfg.ResponseHeaderTimeout
	// The short bound only where failover could follow it: a streamed
	// answer's headers come before generation, an unmetered answer is
	// quick, and a non-streamed generation sends its headers at its end.
	if more && (cl.rec.Stream || !cl.path.Metered) && cl.timeoutFailsOver() {
		a.timeout = min(a.timeout, cl.s.cfg.Failover.HeaderTimeout)
	}
	// This attempt's identity goes into the record now: the in-flight
	// journal (begin) carries it should tollgate die while it runs.
	cl.rec.Provider, cl.rec.CredTier, cl.rec.CredentialID = prov.Name, t.Tier, t.CredentialID
	cl.rec.Injected, cl.rec.ModelSent = a.injected, a.modelSent
	cl.secret = t.Secret
	if len(cl.attempts) > 0 {
		cl.rec.Attempts = cl.attempts
	}
	cl.overhead += cl.s.cfg.timeNow().Sub(t0)
	return a, nil
}

// timeoutFailsOver says an attempt the provider may have billed may be
// followed by another.
func (cl *call) timeoutFailsOver() bool {
	return !cl.path.Metered || cl.s.cfg.Failover.AfterMaybeBilled
}

// observe tells the health tracker how an attempt went; h is nil when no
// answer came.
func (cl *call) observe(a *attempt, status int, failed bool, h *fasthttp.ResponseHeader) {
	ht := cl.s.cfg.Health
	if ht == nil {
		return
	}
	o := health.Observation{CredentialID: a.t.CredentialID, Provider: a.p.Name, Status: status, Failed: failed, Probe: a.probe}
	if h != nil {
		o.Header = func(name string) string { return string(h.Peek(name)) }
	}
	ht.Observe(o)
}

// note adds a's outcome to the request's attempts.
func (cl *call) note(a *attempt, status int, why string, mayBill bool) {
	cl.attempts = append(cl.attempts, metering.Attempt{
		CredentialID: a.t.CredentialID, Provider: a.p.Name, Status: status, Error: why,
		Duration: cl.s.cfg.timeNow().Sub(a.start), MayBill: mayBill,
	})
}

// commit makes a the attempt that answers the client: its identity is the
// record's, and the attempts are listed when there was more than one.
func (cl *call) commit(a *attempt) {
	// The answering provider's usage rules meter the answer.
	cl.provider = a.p
	cl.rec.Provider, cl.rec.CredTier, cl.rec.CredentialID = a.p.Name, a.t.Tier, a.t.CredentialID
	cl.rec.Injected, cl.rec.ModelSent = a.injected, a.modelSent
	cl.secret = a.t.Secret
	cl.listAttempts()
}

// listAttempts puts the attempts in the record when there was more than
// one.
func (cl *call) listAttempts() {
	cl.rec.Attempts = nil
	if len(cl.attempts) > 1 {
		cl.rec.Attempts = cl.attempts
	}
}

// answerStatus ends an attempt that got a non-2xx answer with body (read
// within the error limit): a failure another attempt may fix, or done
// after answering the client with it.
func (cl *call) answerStatus(c *fiber.Ctx, a *attempt, resp *fasthttp.Response, body []byte, t1 time.Time) attemptResult {
	status := resp.StatusCode()
	shape := cl.dialect.ErrorShape
	failed := failsCredential(status, shape, body)
	cl.observe(a, status, failed, &resp.Header)
	if !failed {
		cl.note(a, status, "", false)
		cl.commit(a)
		cl.answerHeaders(c, resp)
		return answeredWith(cl.upstreamError(c, status, body, a.t.Secret, t1))
	}
	cl.note(a, status, "status "+strconv.Itoa(status), false)
	r := attemptResult{status: status, answered: true}
	r.retryAfter, r.hasWait = retryAfterOf(&resp.Header, shape, body, t1)
	r.noRetry = string(resp.Header.Peek("X-Should-Retry")) == "false" || !retryableStatus(status)
	k := &keptAnswer{a: a, status: status, body: append([]byte(nil), body...)}
	resp.Header.CopyTo(&k.header)
	r.kept = k
	return r
}

// transportFailure ends an attempt that got no usable answer: err came
// before the headers (answered false) or while a 2xx body was read
// whole, before any byte went to the client. sent says the request was
// written whole. A request that never left (connect, TLS, a refused
// address) fails over; one the provider may have billed only as
// timeoutFailsOver says; one the client left, or tollgate's shutdown
// ended, or over the response limit, not at all.
func (cl *call) transportFailure(a *attempt, err error, sent, answered bool) attemptResult {
	status := 0
	if answered {
		status = http.StatusOK
	}
	gone := errors.Is(err, errClientGone) || cl.ctx.Err() != nil
	tooLarge := errors.Is(err, errResponseTooLarge) || errors.Is(err, fasthttp.ErrBodyTooLarge)
	refused := errors.Is(err, netguard.ErrRefused)
	mayBill := sent || answered
	if !gone && !refused {
		cl.observe(a, status, !tooLarge, nil)
	}
	why := errClass(err)
	if answered {
		why = "broke_off"
	} else if why == "timeout" && sent {
		why = "header_timeout"
	}
	cl.note(a, status, why, mayBill)
	if gone || tooLarge || (mayBill && !cl.timeoutFailsOver()) {
		cl.commit(a)
		return answeredWith(cl.upstreamFailed(err, answered))
	}
	if mayBill {
		cl.s.log.Warn("failover after an attempt the provider may bill", "request_id", cl.rec.RequestID, "credential_id", a.t.CredentialID, "err_class", why)
	}
	return attemptResult{status: status, err: err, answered: answered}
}

// exhausted answers a request no candidate answered: with the last error
// answer a provider gave, if any; as without failover when the request had
// one candidate and it was tried; else with 503 in the caller's envelope,
// and the longest wait a provider or the health tracker asked for as
// Retry-After.
func (cl *call) exhausted(c *fiber.Ctx, kept *keptAnswer, last attemptResult, tried int, several bool, longest time.Duration, refusedUntil time.Time) error {
	now := cl.s.cfg.timeNow()
	if kept != nil {
		cl.commit(kept.a)
		cl.rec.Status = kept.status
		copyResponseHeaders(c, &kept.header, kept.a.t.Secret)
		c.Status(kept.status)
		return cl.upstreamError(c, kept.status, kept.body, kept.a.t.Secret, now)
	}
	if tried > 0 && !several {
		cl.listAttempts()
		return cl.upstreamFailed(last.err, last.answered)
	}
	if !refusedUntil.IsZero() {
		longest = max(longest, refusedUntil.Sub(now))
	}
	wait := retryAfterSeconds(longest)
	e := &apiError{kind: kindExhausted, retryAfter: wait}
	if tried == 0 {
		e.msg = fmt.Sprintf("every credential for this request is cooling down after recent failures or has no rate-limit headroom left; try again in %d s", wait)
		cl.rec.Outcome = metering.OutcomeRejected
	} else {
		whys := make([]string, len(cl.attempts))
		for i, at := range cl.attempts {
			whys[i] = at.Error
		}
		e.msg = fmt.Sprintf("tollgate tried %d credentials for this request and none answered (%s); try again in %d s", tried, strings.Join(whys, ", "), wait)
		cl.rec.Outcome = metering.OutcomeUnreachable
		cl.rec.Attempts = cl.attempts
	}
	cl.rec.Status, cl.rec.Source = kindStatus[e.kind], metering.SourceNone
	cl.s.log.Warn("failover exhausted", "request_id", cl.rec.RequestID, "attempts", tried)
	cl.finish()
	return e
}

// fillHealth sets each candidate's health in a resolution view from the
// tracker; a credential it has not seen keeps nil (unknown).
func (s *Server) fillHealth(rows []resolver.Resolution) {
	if s.cfg.Health == nil {
		return
	}
	byID := map[string]health.State{}
	for _, st := range s.cfg.Health.States() {
		byID[st.CredentialID] = st
	}
	for i := range rows {
		for j := range rows[i].Candidates {
			if st, ok := byID[rows[i].Candidates[j].CredentialID]; ok {
				rows[i].Candidates[j].Health = st
			}
		}
	}
}
