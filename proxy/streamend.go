package proxy

import (
	"time"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/registry"
)

// tailBytes holds the last four bytes written to a client, which say
// whether its stream stands inside a line, inside an event or between
// events.
type tailBytes uint32

// noTail is the tail of a stream with nothing written: between events.
const noTail tailBytes = '\n'<<8 | '\n'

func (t *tailBytes) add(p []byte) {
	for _, c := range p[max(0, len(p)-4):] {
		*t = *t<<8 | tailBytes(c)
	}
}

// tailState is where the bytes a client has so far leave its SSE parser.
type tailState uint8

const (
	// atEventEnd: a blank line (LF LF, CR CR or CRLF CRLF) ended the last
	// event, or nothing was written.
	atEventEnd tailState = iota
	// afterLF: inside an event, just after a line ended by LF or CRLF.
	afterLF
	// afterCR: inside an event, just after a CR, a line end or the first
	// half of a CRLF.
	afterCR
	// inLine: inside a line.
	inLine
)

func (t tailBytes) state() tailState {
	switch {
	case t&0xffff == '\n'<<8|'\n', t&0xffff == '\r'<<8|'\r', t == '\r'<<24|'\n'<<16|'\r'<<8|'\n':
		return atEventEnd
	case byte(t) == '\n':
		return afterLF
	case byte(t) == '\r':
		return afterCR
	}
	return inLine
}

// streamEnd is everything that decides how a stream's last bytes go out,
// once the provider's bytes are all written.
type streamEnd struct {
	// outcome is the meter's settlement: a terminal event seen (ok,
	// incomplete, upstream_error) wins over how the body ended; without
	// one, upstream_idle says the idle timer fired and truncated that the
	// body ended.
	outcome string
	// cleanEOF: the provider ended its body itself, rather than a read
	// error (a cut, the idle timer or shutdown closing it).
	cleanEOF bool
	// clientGone: a write to the client failed.
	clientGone bool
	// overflow: an event was too large to meter, so the terminal event may
	// have passed unseen.
	overflow bool
	// shutdown: tollgate is shutting down, which closed the body.
	shutdown bool
	tail     tailState
	// style and cutAfterError are the dialect's stream_error and
	// cut_after_stream_error.
	style         string
	cutAfterError bool
}

// notice is tollgate's own error event at the end of a stream.
type notice uint8

const (
	noNotice notice = iota
	// noticeIdle: the provider sent nothing for the idle window.
	noticeIdle
	// noticeCut: the provider's stream broke off.
	noticeCut
	// noticeShutdown: tollgate ended the stream to shut down.
	noticeShutdown
	// noticeNoTerminal: the provider ended the stream cleanly but without
	// its terminal event.
	noticeNoTerminal
)

// streamEndPlan is what to write after the provider's bytes, and how to
// end the body.
type streamEndPlan struct {
	// closeLine ends the provider's terminal event, cut after its lines
	// but before its blank line: the meter counted it, so the client must
	// dispatch it too.
	closeLine string
	notice    notice
	// blankFirst puts a blank line before the notice, ending the event
	// the client is inside.
	blankFirst bool
	// cut breaks the connection instead of ending the body cleanly.
	cut bool
}

// decideStreamEnd is the end of a stream as a decision. A stream that did
// not finish gets the dialect's error event, so the client has a reason it
// can act on instead of a stream that just stops: after a cut, the idle
// timer, shutdown, or (on dialects whose SDKs require a terminal event) a
// clean end without one. An event too large to meter may have hidden the
// terminal event, so it gets none. A terminal event, tollgate's included,
// ends the stream cleanly: SDKs then read the event instead of reporting a
// cut connection (Codex showed only "error decoding response body"), and
// after the provider's own terminal event the answer is whole even if its
// connection then failed, so a clean end keeps a client from retrying, and
// paying for, it. Dialects with cut_after_stream_error break the
// connection after any error event instead: their clients take a clean end
// for a finished answer whatever came before it.
func decideStreamEnd(e streamEnd) streamEndPlan {
	var p streamEndPlan
	if e.clientGone {
		// Nobody is left to tell.
		p.cut = true
		return p
	}
	terminal := e.outcome == metering.OutcomeOK || e.outcome == metering.OutcomeIncomplete || e.outcome == metering.OutcomeUpstreamError
	switch {
	case e.outcome == metering.OutcomeUpstreamIdle:
		p.notice = noticeIdle
	case e.outcome != metering.OutcomeTruncated || e.overflow:
	case !e.cleanEOF && e.shutdown:
		p.notice = noticeShutdown
	case !e.cleanEOF:
		p.notice = noticeCut
	case requiresTerminal(e.style):
		p.notice = noticeNoTerminal
	}
	if p.notice != noNotice {
		p.blankFirst = e.tail != atEventEnd
	}
	if terminal && !e.cleanEOF {
		switch e.tail {
		case afterLF:
			p.closeLine = "\n"
		case afterCR:
			p.closeLine = "\r\n"
		}
	}
	failed := p.notice != noNotice || e.outcome == metering.OutcomeUpstreamError
	switch {
	case failed && e.cutAfterError:
		p.cut = true
	case p.notice != noNotice || terminal || e.cleanEOF:
		// A provider's clean end without a terminal event, on a dialect
		// whose clients take it as the end, passes through as it came.
	default:
		// A cut tollgate has nothing to say about passes through as a cut.
		p.cut = true
	}
	return p
}

// requiresTerminal reports whether a dialect's clients fail a stream that
// ends without its terminal event. Dialects whose failure is a typed event
// (Anthropic's event: error, Responses' response.failed) have a typed
// terminal event their SDKs wait for (the Anthropic SDK fails with "stream
// ended without producing a Message", Codex fails the turn), so tollgate's
// reason is better than theirs. Data-only dialects' clients take a clean
// end as the end: some compatible Chat backends never send [DONE], and
// Gemini has no end marker at all.
func requiresTerminal(style string) bool {
	return style == registry.StreamErrorEvent || style == registry.StreamErrorResponseFailed
}

// suffix renders the plan's bytes for a client of d; idle is the idle
// window and responseID the provider's id, for the notice.
func (p streamEndPlan) suffix(d *registry.Dialect, idle time.Duration, responseID string) []byte {
	var e *apiError
	switch p.notice {
	case noNotice:
		if p.closeLine == "" {
			return nil
		}
		return []byte(p.closeLine)
	case noticeIdle:
		e = newError(kindUpstreamTimeout, "the provider sent nothing for %s, so tollgate ended the stream; the answer is incomplete", idle)
	case noticeShutdown:
		e = newError(kindUnavailable, "tollgate is shutting down and ended the stream; the answer is incomplete: send the request again")
	case noticeCut:
		e = newError(kindUpstreamUnreachable, "the provider's stream broke off before its end; the answer is incomplete")
	case noticeNoTerminal:
		e = newError(kindUpstreamUnreachable, "the provider ended the stream without its final event; the answer may be incomplete")
	}
	ev := streamErrorEvent(d, e, responseID)
	if p.blankFirst {
		ev = append([]byte("\n\n"), ev...)
	}
	return ev
}
