package proxy

import "bytes"

// lineHolder holds a stream's bytes between the provider's reads and the
// client's writes. It hands out whole lines: the client can use none of a
// line before its end, and a cut must not leave it the start of one it can
// never parse. A line's start waits for its end only up to a bound, so a
// huge event still flows; on a cut, an unfinished line is dropped.
type lineHolder struct {
	buf *[]byte // pooled bytes in hand; nil when none
	off int     // how much of buf was already handed out
	// held counts the leading bytes in hand known to hold no line end, so a
	// long line that arrives in small pieces is scanned once.
	held int
	// max is the size past which an unfinished line is written anyway.
	max int
}

// appendable returns the buffer to append to; give it back with set.
func (h *lineHolder) appendable() []byte {
	if h.buf == nil {
		h.buf = getStreamBuf()
	}
	return *h.buf
}

// set keeps b, the buffer appendable returned with bytes appended.
func (h *lineHolder) set(b []byte) { *h.buf = b }

// pending is the number of bytes in hand.
func (h *lineHolder) pending() int {
	if h.buf == nil {
		return 0
	}
	return len(*h.buf) - h.off
}

// flush writes the whole lines in hand with write, keeping an unfinished
// line's start for later, unless all is set or that start has reached the
// bound. After a failed write nothing is kept: the client is gone.
func (h *lineHolder) flush(write func([]byte) error, all bool) error {
	if h.pending() == 0 {
		return nil
	}
	p := (*h.buf)[h.off:]
	n := len(p)
	if !all {
		if e := linesEnd(p, h.held); e < len(p) && len(p) < h.max {
			n = e
		}
	}
	if n > 0 {
		if err := write(p[:n]); err != nil {
			h.release()
			return err
		}
	}
	rest := p[n:]
	if len(rest) == 0 {
		h.release()
		return nil
	}
	*h.buf = (*h.buf)[:copy(*h.buf, rest)]
	h.off = 0
	// What is left is an unfinished line.
	h.held = len(rest)
	return nil
}

// take copies bytes in hand into p, whole lines or not, for a caller that
// reads the body instead of having it written.
func (h *lineHolder) take(p []byte) int {
	if h.pending() == 0 {
		return 0
	}
	n := copy(p, (*h.buf)[h.off:])
	h.off += n
	h.held = max(h.held-n, 0)
	if h.off == len(*h.buf) {
		h.release()
	}
	return n
}

// dropPartial forgets the start of an unfinished line after a cut and
// returns how many bytes it dropped.
func (h *lineHolder) dropPartial() int {
	if h.pending() == 0 {
		return 0
	}
	p := (*h.buf)[h.off:]
	n := linesEnd(p, h.held)
	*h.buf = (*h.buf)[:h.off+n]
	h.held = 0
	return len(p) - n
}

// release returns the buffer to the pool.
func (h *lineHolder) release() {
	putStreamBuf(h.buf)
	h.buf, h.off, h.held = nil, 0, 0
}

// linesEnd is where the last whole line in p ends, just past its CR or
// LF, or 0. p[:from] is known to hold no line end.
func linesEnd(p []byte, from int) int {
	i := max(bytes.LastIndexByte(p[from:], '\n'), bytes.LastIndexByte(p[from:], '\r'))
	if i < 0 {
		return 0
	}
	return from + i + 1
}
