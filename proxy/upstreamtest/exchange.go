package upstreamtest

import (
	"context"
	"net/http"
	"strconv"
	"time"
)

// Header values shared by every response; net/http only reads them.
var (
	ctJSON        = []string{"application/json"}
	ctGeminiJSON  = []string{"application/json; charset=UTF-8"}
	ctSSE         = []string{"text/event-stream; charset=utf-8"}
	ctGeminiSSE   = []string{"text/event-stream"}
	noCache       = []string{"no-cache"}
	limitRequests = []string{"4000"}
	remainingOK   = []string{"3999"}
	remainingNone = []string{"0"}
	retryAfterOne = []string{"1"}
	resetOneSec   = []string{"1s"}
	openAIVersion = []string{"2020-10-01"}
)

// exchange is one request being answered. Every byte goes out through
// write, so the record holds exactly what the client was sent.
type exchange struct {
	s       *Server
	w       http.ResponseWriter
	r       *http.Request
	rc      *http.ResponseController
	e       *entry // nil when recording is off
	dialect Dialect
	seq     uint64

	isStream bool
	outcome  Outcome
}

// setHeaders sets the provider's usual response headers: content type,
// no-cache, a request id and rate-limit state. Keys are never echoed.
func (x *exchange) setHeaders(status int, contentType []string) {
	h := x.w.Header()
	h["Content-Type"] = contentType
	h["Cache-Control"] = noCache
	remaining := remainingOK
	if status == http.StatusTooManyRequests {
		remaining = remainingNone
		h["Retry-After"] = retryAfterOne
	}
	switch x.dialect {
	case Anthropic:
		h["Request-Id"] = []string{x.requestID()}
		h["Anthropic-Ratelimit-Requests-Limit"] = limitRequests
		h["Anthropic-Ratelimit-Requests-Remaining"] = remaining
	case OpenAIChat, OpenAIResponses:
		h["X-Request-Id"] = []string{x.requestID()}
		h["Openai-Version"] = openAIVersion
		h["X-Ratelimit-Limit-Requests"] = limitRequests
		h["X-Ratelimit-Remaining-Requests"] = remaining
		if status == http.StatusTooManyRequests {
			h["X-Ratelimit-Reset-Requests"] = resetOneSec
		}
	}
}

func (x *exchange) requestID() string {
	b := make([]byte, 0, 24)
	b = append(b, "req_fake"...)
	s := strconv.FormatUint(x.seq, 16)
	for range 16 - len(s) {
		b = append(b, '0')
	}
	return string(append(b, s...))
}

func (x *exchange) writeHeader(status int) {
	if x.e != nil {
		hdr := x.w.Header().Clone()
		x.e.update(func(q *Request) { q.Status, q.ResponseHeader = status, hdr })
	}
	x.w.WriteHeader(status)
}

// write sends b and records the part that was written.
func (x *exchange) write(b []byte) error {
	n, err := x.w.Write(b)
	x.e.appendResponse(b[:n])
	return err
}

func (x *exchange) jsonType() []string {
	if x.dialect == Gemini {
		return ctGeminiJSON
	}
	return ctJSON
}

// errorResponse answers status with the dialect's error body; msg replaces
// the provider's usual message when not empty.
func (x *exchange) errorResponse(status int, msg string) {
	body := errorBody(x.dialect, status, msg)
	x.setHeaders(status, x.jsonType())
	x.w.Header()["Content-Length"] = []string{strconv.Itoa(len(body))}
	x.writeHeader(status)
	if x.write(body) != nil {
		x.outcome = OutcomeCancelled
	}
}

// json answers 200 with body, applying the faults that make sense for a
// JSON response.
func (x *exchange) json(p plan, body []byte) {
	ctx := x.r.Context()
	if !sleep(ctx, p.ttfb) {
		x.outcome = OutcomeCancelled
		return
	}
	if p.fault.silence {
		<-ctx.Done()
		x.outcome = OutcomeCancelled
		return
	}
	x.setHeaders(http.StatusOK, x.jsonType())
	x.w.Header()["Content-Length"] = []string{strconv.Itoa(len(body))}
	x.writeHeader(http.StatusOK)
	if p.fault.cut >= 0 {
		_ = x.write(body[:len(body)/2])
		x.abort()
	}
	if x.write(body) != nil {
		x.outcome = OutcomeCancelled
	}
}

// stream sends frames one by one, each flushed, paced against deadlines
// counted from the stream's start, with the plan's faults applied.
func (x *exchange) stream(p plan, frames [][]byte, sh shape) {
	s := x.s
	x.isStream = true
	s.streams.Add(1)
	s.streamsActive.Add(1)
	ctx := x.r.Context()
	if !sleep(ctx, p.ttfb) {
		x.outcome = OutcomeCancelled
		return
	}
	ct := ctSSE
	switch {
	case sh.dialect == Gemini && sh.geminiSSE:
		ct = ctGeminiSSE
	case sh.dialect == Gemini:
		ct = ctGeminiJSON
	}
	x.setHeaders(http.StatusOK, ct)
	x.writeHeader(http.StatusOK)

	cut := -1
	if p.fault.cut >= 0 {
		// Never send the terminal event: that is what makes it a cut.
		cut = min(p.fault.cut, len(frames)-1)
	}
	pace := pacer{gap: p.gap, next: time.Now()}
	defer pace.stop()
	for i, f := range frames {
		if i > 0 && !pace.wait(ctx) {
			x.outcome = OutcomeCancelled
			return
		}
		if i == cut {
			x.abort()
		}
		if ctx.Err() != nil || x.write(f) != nil || x.rc.Flush() != nil {
			x.outcome = OutcomeCancelled
			return
		}
		if i > 0 {
			continue
		}
		if p.fault.silence {
			<-ctx.Done()
			x.outcome = OutcomeCancelled
			return
		}
		if s.cfg.Hold != nil {
			s.cfg.Hold(ctx, x.r)
			if ctx.Err() != nil {
				x.outcome = OutcomeCancelled
				return
			}
			// Resume pacing from the release, not from the stream's start,
			// or the held-back events would all go out at once.
			pace.next = time.Now()
		}
	}
	x.outcome = OutcomeCompleted
}

// abort flushes what was written and breaks the connection, so the client
// sees a body that ends without its terminator (an unexpected EOF), not a
// clean end. net/http recovers http.ErrAbortHandler silently and closes the
// connection; it works for HTTP/2 too, where hijacking does not.
func (x *exchange) abort() {
	_ = x.rc.Flush()
	x.outcome = OutcomeCut
	panic(http.ErrAbortHandler)
}

// finish settles the record and the stream counters; it runs deferred, so
// also while abort's panic unwinds.
func (x *exchange) finish() {
	if x.outcome == OutcomeInFlight {
		x.outcome = OutcomeCompleted
	}
	out := x.outcome
	x.e.update(func(q *Request) { q.Outcome = out })
	if !x.isStream {
		return
	}
	switch out {
	case OutcomeCompleted:
		x.s.streamsCompleted.Add(1)
	case OutcomeCancelled:
		x.s.streamsCancelled.Add(1)
	case OutcomeCut:
		x.s.streamsCut.Add(1)
	}
	x.s.streamsActive.Add(-1)
}

// pacer schedules stream events gap apart against absolute deadlines, so a
// late event does not push every later one back.
type pacer struct {
	gap  time.Duration
	next time.Time
	t    *time.Timer
}

// wait blocks until the next deadline or until ctx is done; it reports
// whether the stream should go on.
func (p *pacer) wait(ctx context.Context) bool {
	if p.gap <= 0 {
		return ctx.Err() == nil
	}
	p.next = p.next.Add(p.gap)
	d := time.Until(p.next)
	if d <= 0 {
		return ctx.Err() == nil
	}
	if p.t == nil {
		p.t = time.NewTimer(d)
	} else {
		p.t.Reset(d)
	}
	select {
	case <-p.t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (p *pacer) stop() {
	if p.t != nil {
		p.t.Stop()
	}
}
