package metering

import "bytes"

// Framing bounds, each with its reason.
const (
	// maxEventNameBytes bounds an SSE "event:" value. The longest name any
	// dialect uses is under 64 bytes (response.function_call_arguments.delta);
	// a longer one is dropped rather than buffered.
	maxEventNameBytes = 256
	// maxIdleBufferBytes is the largest data buffer a Framer keeps between
	// events. One base64 image grows the buffer to megabytes; keeping that for
	// the rest of a long agent stream would multiply per-stream memory
	// (streaming-on-fiber.md R13), so a buffer above this is released.
	maxIdleBufferBytes = 256 << 10
	// maxFieldNameBytes covers the longest field name the Framer must
	// recognise ("event"); longer names are ignored without being buffered.
	maxFieldNameBytes = 8
)

// Frame is one SSE frame: the lines up to and including a blank line. Its
// slices are only valid until the next call to the Framer.
type Frame struct {
	// Event is the value of the last "event:" line, or nil.
	Event []byte
	// Data is the frame's "data:" lines joined with "\n", per the SSE spec.
	Data []byte
	// HasData is true when the frame had at least one data line, that is,
	// when a browser would dispatch an event. Comment-only frames (": ping")
	// and stray blank lines have HasData false.
	HasData bool
	// Overflow is true when the data exceeded the Framer's bound; Data is then
	// nil and the event cannot be metered.
	Overflow bool
}

// Framer cuts a byte stream into SSE frames incrementally. It accepts "\n",
// "\r\n" and "\r" line ends, multi-line data, event names and comments, and a
// frame split across any number of reads. It copies only the data and event
// values it keeps, never whole lines, and never more than its bound per
// event: an event over the bound is reported with Overflow and skipped, which
// is never an error (streaming-on-fiber.md R13).
type Framer struct {
	max int

	data      []byte
	complete  int  // len(data) at the end of the last complete data line
	dataLines int  // complete data lines in the current frame
	hasData   bool // a data line started in the current frame
	overflow  bool
	event     []byte
	eventLong bool

	// Line state, carried across reads.
	phase    uint8
	field    uint8
	lineLen  int // bytes of the current line seen so far
	name     [maxFieldNameBytes]byte
	nameLen  int
	nameLong bool
	cr       bool // the last line ended in '\r'; a '\n' next belongs to it

	frame Frame
}

const (
	ssePhaseName  = iota // reading the field name
	ssePhaseStart        // after the colon, before the optional space
	ssePhaseValue        // reading the value
	ssePhaseSkip         // comment or ignored field: discard to end of line
)

const (
	sseFieldOther = iota
	sseFieldData
	sseFieldEvent
)

// NewFramer returns a Framer that keeps at most maxEventBytes of data per
// event; maxEventBytes <= 0 means the registry default (10 MiB).
func NewFramer(maxEventBytes int) *Framer {
	f := &Framer{}
	f.init(maxEventBytes)
	return f
}

func (f *Framer) init(maxEventBytes int) {
	if maxEventBytes <= 0 {
		maxEventBytes = defaultMaxEventBytes
	}
	f.max = maxEventBytes
}

// Next consumes p up to and including the blank line that ends the next
// frame. It returns how many bytes it consumed and whether a frame ended
// there; the frame is then available from Frame until the next call. When
// ok is false, all of p was consumed and the Framer waits for more bytes.
func (f *Framer) Next(p []byte) (n int, ok bool) {
	i := 0
	for i < len(p) {
		if f.cr {
			f.cr = false
			if p[i] == '\n' {
				i++
				continue
			}
		}
		rest := p[i:]
		e := sseLineEnd(rest)
		if e < 0 {
			f.consume(rest)
			return len(p), false
		}
		f.consume(rest[:e])
		i += e + 1
		if rest[e] == '\r' {
			if i < len(p) {
				if p[i] == '\n' {
					i++
				}
			} else {
				f.cr = true
			}
		}
		if f.endLine() {
			return i, true
		}
	}
	return len(p), false
}

// Frame returns the frame Next last reported.
func (f *Framer) Frame() Frame { return f.frame }

// Flush ends the stream. When the last frame never got its blank line but
// has complete data lines, Flush reports them as a frame: a provider that
// closes right after its final "data:" line still sent that event, while a
// partial line (a connection cut mid-JSON) is never reported, because a
// truncated number would be metered as a smaller one.
func (f *Framer) Flush() (Frame, bool) {
	f.resetLine()
	f.cr = false
	if f.dataLines == 0 {
		f.resetFrame()
		return Frame{}, false
	}
	fr := Frame{Event: f.eventValue(), HasData: true, Overflow: f.overflow}
	if !f.overflow {
		fr.Data = f.data[:f.complete]
	}
	f.frame = fr
	f.resetFrame()
	return fr, true
}

// sseLineEnd returns the index of the first '\r' or '\n' in p, or -1. Two
// IndexByte scans beat a byte loop: '\r' is rare and the scans are SIMD.
func sseLineEnd(p []byte) int {
	j := bytes.IndexByte(p, '\n')
	q := p
	if j >= 0 {
		q = p[:j]
	}
	if k := bytes.IndexByte(q, '\r'); k >= 0 {
		return k
	}
	return j
}

// consume feeds part of one line (no line terminator) to the line state.
func (f *Framer) consume(seg []byte) {
	for len(seg) > 0 {
		switch f.phase {
		case ssePhaseName:
			if f.lineLen == 0 && seg[0] == ':' {
				f.phase = ssePhaseSkip
				return
			}
			c := bytes.IndexByte(seg, ':')
			part := seg
			if c >= 0 {
				part = seg[:c]
			}
			f.lineLen += len(part)
			if !f.nameLong {
				if f.nameLen+len(part) > len(f.name) {
					f.nameLong = true
				} else {
					f.nameLen += copy(f.name[f.nameLen:], part)
				}
			}
			if c < 0 {
				return
			}
			f.lineLen++
			seg = seg[c+1:]
			f.startValue()
		case ssePhaseStart:
			if seg[0] == ' ' {
				seg = seg[1:]
			}
			f.phase = ssePhaseValue
		case ssePhaseValue:
			switch f.field {
			case sseFieldData:
				f.appendData(seg)
			case sseFieldEvent:
				f.appendEvent(seg)
			}
			return
		default:
			return
		}
	}
}

// startValue classifies the field whose name just ended and prepares its value.
func (f *Framer) startValue() {
	f.field = sseFieldOther
	if !f.nameLong {
		switch string(f.name[:f.nameLen]) {
		case "data":
			f.field = sseFieldData
		case "event":
			f.field = sseFieldEvent
		}
	}
	switch f.field {
	case sseFieldData:
		if f.hasData {
			f.appendData(sseNewline)
		}
		f.hasData = true
		f.phase = ssePhaseStart
	case sseFieldEvent:
		f.event = f.event[:0]
		f.eventLong = false
		f.phase = ssePhaseStart
	default:
		f.phase = ssePhaseSkip
	}
}

var sseNewline = []byte{'\n'}

func (f *Framer) appendData(b []byte) {
	if f.overflow {
		return
	}
	if len(f.data)+len(b) > f.max {
		f.overflow = true
		f.data = f.data[:0]
		return
	}
	f.data = append(f.data, b...)
}

func (f *Framer) appendEvent(b []byte) {
	if f.eventLong {
		return
	}
	if len(f.event)+len(b) > maxEventNameBytes {
		f.eventLong = true
		f.event = f.event[:0]
		return
	}
	f.event = append(f.event, b...)
}

func (f *Framer) eventValue() []byte {
	if f.eventLong || len(f.event) == 0 {
		return nil
	}
	return f.event
}

// endLine finishes the current line and reports whether it was the blank
// line that ends a frame.
func (f *Framer) endLine() bool {
	switch f.phase {
	case ssePhaseName:
		if f.lineLen == 0 {
			fr := Frame{Event: f.eventValue(), HasData: f.hasData, Overflow: f.overflow}
			if f.hasData && !f.overflow {
				fr.Data = f.data
			}
			f.frame = fr
			f.resetFrame()
			return true
		}
		// A line without a colon is a field with an empty value.
		f.startValue()
	}
	if f.field == sseFieldData && f.phase != ssePhaseSkip {
		f.dataLines++
		f.complete = len(f.data)
	}
	f.resetLine()
	return false
}

func (f *Framer) resetLine() {
	f.phase = ssePhaseName
	f.field = sseFieldOther
	f.lineLen = 0
	f.nameLen = 0
	f.nameLong = false
}

// resetFrame clears the frame state. The data the last Frame points at stays
// intact until the next append, which only happens on the next Next call.
func (f *Framer) resetFrame() {
	if cap(f.data) > maxIdleBufferBytes {
		// The frame just reported may still point at the old array; dropping
		// our reference does not invalidate it.
		f.data = nil
	} else {
		f.data = f.data[:0]
	}
	f.complete = 0
	f.dataLines = 0
	f.hasData = false
	f.overflow = false
	f.event = f.event[:0]
	f.eventLong = false
}
