package proxy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/registry"
)

// TestDecideStreamEnd pins how every kind of stream ends for the client,
// one row per way it can end (after net/http/httputil's
// TestSelectFlushInterval).
func TestDecideStreamEnd(t *testing.T) {
	const (
		anthropic = registry.StreamErrorEvent
		responses = registry.StreamErrorResponseFailed
		chunk     = registry.StreamErrorChunk // Chat and Gemini
	)
	for _, tc := range []struct {
		name string
		in   streamEnd
		want streamEndPlan
	}{
		{"terminal then clean end",
			streamEnd{outcome: metering.OutcomeOK, cleanEOF: true, style: anthropic},
			streamEndPlan{}},
		{"terminal then cut",
			streamEnd{outcome: metering.OutcomeOK, style: anthropic},
			streamEndPlan{}},
		{"terminal's lines then cut before its blank line",
			streamEnd{outcome: metering.OutcomeOK, tail: afterLF, style: anthropic},
			streamEndPlan{closeLine: "\n"}},
		{"terminal's CR lines then cut before its blank line",
			streamEnd{outcome: metering.OutcomeOK, tail: afterCR, style: anthropic},
			streamEndPlan{closeLine: "\r\n"}},
		{"terminal's lines then clean end passes through",
			streamEnd{outcome: metering.OutcomeOK, cleanEOF: true, tail: afterLF, style: anthropic},
			streamEndPlan{}},
		{"incomplete then cut",
			streamEnd{outcome: metering.OutcomeIncomplete, tail: afterLF, style: responses},
			streamEndPlan{closeLine: "\n"}},
		{"cut between events",
			streamEnd{outcome: metering.OutcomeTruncated, style: anthropic},
			streamEndPlan{notice: noticeCut}},
		{"cut inside an event",
			streamEnd{outcome: metering.OutcomeTruncated, tail: afterLF, style: anthropic},
			streamEndPlan{notice: noticeCut, blankFirst: true}},
		{"cut inside a line written past the bound",
			streamEnd{outcome: metering.OutcomeTruncated, tail: inLine, style: responses},
			streamEndPlan{notice: noticeCut, blankFirst: true}},
		{"cut on a dialect that needs the connection cut",
			streamEnd{outcome: metering.OutcomeTruncated, style: chunk, cutAfterError: true},
			streamEndPlan{notice: noticeCut, cut: true}},
		{"clean end without terminal",
			streamEnd{outcome: metering.OutcomeTruncated, cleanEOF: true, style: anthropic},
			streamEndPlan{notice: noticeNoTerminal}},
		{"clean end without terminal inside an event",
			streamEnd{outcome: metering.OutcomeTruncated, cleanEOF: true, tail: afterLF, style: responses},
			streamEndPlan{notice: noticeNoTerminal, blankFirst: true}},
		{"clean end without terminal on a data-only dialect",
			streamEnd{outcome: metering.OutcomeTruncated, cleanEOF: true, style: chunk},
			streamEndPlan{}},
		{"idle fired",
			streamEnd{outcome: metering.OutcomeUpstreamIdle, style: anthropic},
			streamEndPlan{notice: noticeIdle}},
		{"idle fired inside an event",
			streamEnd{outcome: metering.OutcomeUpstreamIdle, tail: afterCR, style: anthropic},
			streamEndPlan{notice: noticeIdle, blankFirst: true}},
		{"idle fired after the terminal event",
			streamEnd{outcome: metering.OutcomeOK, style: anthropic},
			streamEndPlan{}},
		{"shutdown",
			streamEnd{outcome: metering.OutcomeTruncated, shutdown: true, style: anthropic},
			streamEndPlan{notice: noticeShutdown}},
		{"shutdown after the terminal event",
			streamEnd{outcome: metering.OutcomeOK, shutdown: true, style: anthropic},
			streamEndPlan{}},
		{"provider error then clean end",
			streamEnd{outcome: metering.OutcomeUpstreamError, cleanEOF: true, style: anthropic},
			streamEndPlan{}},
		{"provider error then cut",
			streamEnd{outcome: metering.OutcomeUpstreamError, tail: afterLF, style: chunk},
			streamEndPlan{closeLine: "\n"}},
		{"gemini after a provider error",
			streamEnd{outcome: metering.OutcomeUpstreamError, cleanEOF: true, style: chunk, cutAfterError: true},
			streamEndPlan{cut: true}},
		{"gemini after a provider's finished answer",
			streamEnd{outcome: metering.OutcomeOK, cleanEOF: true, style: chunk, cutAfterError: true},
			streamEndPlan{}},
		{"overflowed event then cut",
			streamEnd{outcome: metering.OutcomeTruncated, overflow: true, tail: inLine, style: anthropic},
			streamEndPlan{cut: true}},
		{"overflowed event then clean end",
			streamEnd{outcome: metering.OutcomeTruncated, overflow: true, cleanEOF: true, style: anthropic},
			streamEndPlan{}},
		{"client gone",
			streamEnd{outcome: metering.OutcomeTruncated, clientGone: true, tail: afterLF, style: anthropic},
			streamEndPlan{cut: true}},
	} {
		if got := decideStreamEnd(tc.in); got != tc.want {
			t.Errorf("%s: decideStreamEnd(%+v) = %+v, want %+v", tc.name, tc.in, got, tc.want)
		}
	}
}

// The plan's notice is the dialect's error event, after a blank line when
// the client is inside an event.
func TestStreamEndSuffix(t *testing.T) {
	d := &registry.Dialect{ErrorShape: registry.ShapeAnthropic, StreamError: registry.StreamErrorEvent}
	if got := (streamEndPlan{}).suffix(d, time.Second, ""); got != nil {
		t.Errorf("empty plan wrote %q", got)
	}
	if got := string((streamEndPlan{closeLine: "\r\n"}).suffix(d, time.Second, "")); got != "\r\n" {
		t.Errorf("close line %q", got)
	}
	got := string((streamEndPlan{notice: noticeIdle, blankFirst: true}).suffix(d, 300*time.Millisecond, "msg_1"))
	if !strings.HasPrefix(got, "\n\nevent: error\ndata: {") || !strings.HasSuffix(got, "}\n\n") || !strings.Contains(got, "the provider sent nothing for 300ms") {
		t.Errorf("idle notice %q", got)
	}
}

func TestTailState(t *testing.T) {
	for _, c := range []struct {
		written string
		want    tailState
	}{
		{"", atEventEnd},
		{"data: a\n\n", atEventEnd},
		{"data: a\r\r", atEventEnd},
		{"data: a\r\n\r\n", atEventEnd},
		{"data: a\n", afterLF},
		{"data: a\r\n", afterLF},
		{"data: a\r", afterCR},
		{"data: a", inLine},
	} {
		tail := noTail
		tail.add([]byte(c.written))
		if got := tail.state(); got != c.want {
			t.Errorf("after %q: state %d, want %d", c.written, got, c.want)
		}
	}
}

// The line holder writes whole lines, holds a line's start up to its
// bound, and drops an unfinished line on a cut.
func TestLineHolder(t *testing.T) {
	var out []string
	write := func(p []byte) error { out = append(out, string(p)); return nil }
	add := func(h *lineHolder, s string) { h.set(append(h.appendable(), s...)) }

	h := lineHolder{max: 16}
	add(&h, "data: a\ndata: b")
	if err := h.flush(write, false); err != nil || len(out) != 1 || out[0] != "data: a\n" || h.pending() != len("data: b") {
		t.Fatalf("whole lines: wrote %q, %d in hand (%v)", out, h.pending(), err)
	}
	add(&h, "cd")
	if h.flush(write, false); len(out) != 1 {
		t.Fatalf("a line's start under the bound was written: %q", out)
	}
	add(&h, "efghijklmn")
	if h.flush(write, false); len(out) != 2 || out[1] != "data: bcdefghijklmn" || h.pending() != 0 {
		t.Fatalf("a line's start over the bound was held: %q", out)
	}

	add(&h, "data: c\nevent: x\ndata: {\"par")
	if n := h.dropPartial(); n != len(`data: {"par`) {
		t.Errorf("dropPartial dropped %d bytes", n)
	}
	if h.flush(write, true); out[2] != "data: c\nevent: x\n" {
		t.Errorf("after the cut wrote %q", out[2])
	}

	add(&h, "data: d\ndata: e")
	p := make([]byte, 4)
	if n := h.take(p); n != 4 || h.pending() != len("data: d\ndata: e")-4 {
		t.Errorf("take %d, %d left", n, h.pending())
	}
	failed := errors.New("gone")
	if err := h.flush(func([]byte) error { return failed }, false); err != failed || h.pending() != 0 {
		t.Errorf("failed write: %v, %d still in hand", err, h.pending())
	}
}
