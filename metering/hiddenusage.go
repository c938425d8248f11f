package metering

import (
	"bytes"
	"strings"
)

// Filter meters p and appends to dst the bytes to forward, for OpenAI Chat
// when tollgate injected stream_options.include_usage (wire-formats.md §7).
// It forwards whole frames only, holding back a trailing partial frame until
// its blank line, and leaves out exactly the usage-only chunk: usage non-null
// and choices empty or absent. Unrequested usage-only chunks crash clients
// that index choices[0] (TheR1D/shell_gpt#741, BerriAI/litellm#30761). Chunks
// with choices, [DONE], comments and oversized frames are forwarded as they
// came. Whatever the reads' sizes, the concatenated output is the same.
func (m *Meter) Filter(dst, p []byte) []byte {
	if len(p) == 0 {
		return dst
	}
	off := 0
	if m.atBoundary && m.fr.cr && p[0] == '\n' {
		// The '\n' of a "\r\n" that ended the previous frame belongs to it.
		if !m.lastDropped {
			dst = append(dst, '\n')
		}
		m.fr.cr = false
		off = 1
	}
	m.atBoundary = false
	start := off
	for off < len(p) {
		n, ok := m.fr.Next(p[off:])
		off += n
		if !ok {
			break
		}
		fr := m.fr.frame
		m.event(fr)
		// A frame longer than the bound cannot be the small usage chunk, and
		// must be decided the same way whether or not it arrived in one read.
		keep := m.committed || len(m.pend)+off-start > m.fr.max || !m.usageOnly(fr)
		if keep {
			dst = append(dst, m.pend...)
			dst = append(dst, p[start:off]...)
		}
		m.pend = m.pend[:0]
		if cap(m.pend) > maxIdleBufferBytes {
			m.pend = nil
		}
		m.committed = false
		m.lastDropped = !keep
		start = off
		m.atBoundary = off == len(p) && p[off-1] == '\r'
	}
	if start < len(p) {
		switch {
		case m.committed:
			dst = append(dst, p[start:]...)
		case len(m.pend)+len(p)-start > m.fr.max:
			dst = append(dst, m.pend...)
			dst = append(dst, p[start:]...)
			m.pend = m.pend[:0]
			m.committed = true
		default:
			m.pend = append(m.pend, p[start:]...)
		}
	}
	return dst
}

// FilterFlush ends a filtered stream: it meters a final frame that lacked
// its blank line and appends it to dst unless it is the usage-only chunk.
func (m *Meter) FilterFlush(dst []byte) []byte {
	fr, ok := m.flush()
	if len(m.pend) > 0 && !(ok && m.usageOnly(fr)) {
		dst = append(dst, m.pend...)
	}
	m.pend = nil
	m.committed = false
	return dst
}

// usageOnly reports whether a frame is the chunk include_usage adds: usage
// non-null and choices empty or absent (wire-formats.md §7; absent choices
// per ROCm/ATOM#1711).
func (m *Meter) usageOnly(fr Frame) bool {
	if !fr.HasData || fr.Overflow || m.plan == nil || m.plan.filterUsage < 0 {
		return false
	}
	data := bytes.TrimSpace(fr.Data)
	if len(data) == 0 || data[0] != '{' {
		return false
	}
	m.scanTop(jsonView(data))
	if u := m.plan.top.get(&m.top, m.plan.filterUsage); u == "" || u[0] != '{' {
		return false
	}
	switch c := m.plan.top.get(&m.top, m.plan.filterChoices); {
	case c == "" || c == "null":
		return true
	case len(c) >= 2 && c[0] == '[' && c[len(c)-1] == ']':
		return strings.TrimSpace(c[1:len(c)-1]) == ""
	}
	return false
}
