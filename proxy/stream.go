package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// errIdle is the close cause when the idle timer fires.
var errIdle = errors.New("upstream idle")

const (
	// streamReadBuffer is what one upstream Read fills. A parked stream
	// holds it, so it is small: fasthttp returns one upstream chunk per
	// Read, an event of a few hundred bytes, and bursts gather in the
	// output buffer. 1 KiB instead of 4 took S4 from about 38 to 34 KB per
	// held stream with S3's CPU per stream unchanged (make bench).
	streamReadBuffer = 1 << 10
	// streamOutBuffer bounds what is held for the client before a write,
	// and the output buffers kept in the pool.
	streamOutBuffer = 16 << 10
	// inflightProgressEvery spaces a stream's progress lines in the
	// in-flight journal after the first usage: a crash then loses at most
	// this much of a growing count (Gemini, Responses), at one write(2) per
	// stream per period, not one per event.
	inflightProgressEvery = 5 * time.Second
)

var (
	readBufs   = sync.Pool{New: func() any { b := make([]byte, streamReadBuffer); return &b }}
	streamBufs = sync.Pool{New: func() any { return new([]byte) }}
)

// getStreamBuf returns an empty pooled output buffer; appending grows it.
// Fresh ones were several KiB of garbage per stream, the largest share of
// the GC work under S3 (make bench, allocation profile).
func getStreamBuf() *[]byte {
	b := streamBufs.Get().(*[]byte)
	*b = (*b)[:0]
	return b
}

func putStreamBuf(b *[]byte) {
	if b != nil && cap(*b) <= streamOutBuffer {
		streamBufs.Put(b)
	}
}

// streamBody is the response body of a streamed answer. fasthttp's
// connection goroutine drives it after the handler returned, so it owns
// copies of every request fact (in call). It passes upstream bytes through
// unchanged while the meter frames them on the side; only in hidden-usage
// mode does it forward whole frames and leave out the usage-only chunk
// tollgate asked for (streaming-on-fiber.md §4.7, R14). Either way lines
// are written whole (lineHolder), and how the stream ends is decided in
// one place (decideStreamEnd).
//
// fasthttp writes it with WriteTo, and every client write is a chunk and a
// flush. Upstream bytes are gathered and written when fasthttp's buffer of
// the provider's bytes is empty: just before each read from the provider's
// socket, where it may wait (the connection's read hook), or at the end. A
// provider's burst of events then costs one client write instead of one per
// chunk, as with net/http's chunked reader, and no whole line tollgate
// has decoded waits on the network.
type streamBody struct {
	cl *call
	up *fastStream
	// client is the client's connection, whose write deadline bounds each
	// write.
	client net.Conn
	meter  *metering.Meter
	idle   *time.Timer
	idleD  time.Duration
	hide   bool
	// idled is set by the idle timer before it closes the upstream body,
	// departed by the departure watcher, which runs while the stream does:
	// a provider may be silent for minutes, and only a write would notice.
	idled    atomic.Bool
	departed atomic.Bool
	watch    *departure
	unwatch  sync.Once

	rd      *[]byte // pooled read buffer, held for the whole stream
	lines   lineHolder
	w       io.Writer
	written int64 // bytes WriteTo has written, the read hook's included
	// end is how the upstream body ended (io.EOF or its error); clientErr is
	// a failed client write. Either ends the stream.
	end       error
	clientErr error
	first     bool
	tail      tailBytes
	// settled is the record's settlement, kept because the record belongs
	// to the sink once settled.
	settled metering.Settlement
	once    sync.Once
	// ownerNoted: the response's id was seen and its owner noted, so a
	// cancel or GET mid-stream finds it (owner.go).
	ownerNoted bool
	// progressVer is the meter's usage version last handed to the
	// InflightSink, at progressAt.
	progressVer uint32
	progressAt  time.Time
}

func newStreamBody(cl *call, up *fastStream, client net.Conn, maxEvent int, hide bool) *streamBody {
	b := &streamBody{
		cl: cl, up: up, client: client, hide: hide,
		meter: metering.NewMeterFor(cl.dialect, cl.provider, maxEvent),
		idleD: cl.s.cfg.StreamIdleTimeout,
		lines: lineHolder{max: streamOutBuffer / 2},
		tail:  noTail,
	}
	// Closing the body from the timer's goroutine unblocks a parked Read;
	// fasthttp waits for that Read before it pools anything (upstream.go).
	b.idle = time.AfterFunc(b.idleD, func() {
		b.idled.Store(true)
		up.closeBody(errIdle)
	})
	b.watch = watchDeparture(client, func(error) {
		b.departed.Store(true)
		up.closeBody(errClientGone)
	})
	return b
}

// stopWatch ends the departure watch before fasthttp reads the connection
// again: after the stream, or when it is closed without being written.
func (b *streamBody) stopWatch() {
	b.unwatch.Do(func() { b.watch.stop(time.Time{}) })
}

// SupportsBodyWriteTo tells fasthttp to use WriteTo.
func (b *streamBody) SupportsBodyWriteTo() bool { return true }

// WriteTo forwards the stream to w, which fasthttp frames as one chunk and
// one flush per Write.
func (b *streamBody) WriteTo(w io.Writer) (int64, error) {
	b.w = w
	// The connection serves further requests after this stream.
	defer b.client.SetWriteDeadline(time.Time{})
	defer b.stopWatch()
	// fastStream.Close takes the hook off before the connection is pooled.
	hooked := b.up.setReadHook(b)
	for b.end == nil && b.clientErr == nil {
		b.step()
		// Half the pool's bound, so the next append stays within it.
		if !hooked || b.lines.pending() >= streamOutBuffer/2 {
			b.flush()
		}
	}
	b.flushAll()
	plan := decideStreamEnd(streamEnd{
		outcome:       b.settled.Outcome,
		cleanEOF:      b.end == io.EOF,
		clientGone:    b.clientErr != nil || b.departed.Load(),
		overflow:      b.settled.Overflow,
		shutdown:      b.cl.s.cfg.BaseContext.Err() != nil,
		tail:          b.tail.state(),
		style:         b.cl.dialect.StreamError,
		cutAfterError: b.cl.dialect.CutAfterStreamError,
	})
	if end := plan.suffix(b.cl.dialect, b.idleD, b.settled.UpstreamID); end != nil {
		if err := b.write(end); err != nil {
			return b.written, err
		}
	}
	switch {
	case !plan.cut:
		return b.written, nil
	case b.clientErr != nil:
		return b.written, b.clientErr
	case b.end == io.EOF:
		return b.written, io.ErrUnexpectedEOF
	}
	return b.written, b.end
}

// beforeSocketRead is the connection's read hook: the upstream Read is
// about to read the provider's socket, where it may wait, so what is in
// hand goes to the client first. A failed write fails that Read, which ends
// the stream at once.
func (b *streamBody) beforeSocketRead() error {
	b.flush()
	return b.clientErr
}

// Read serves callers that copy the body without WriteTo: one upstream
// read at a time. It never returns (0, nil): fasthttp's chunked writer
// would spin on it.
func (b *streamBody) Read(p []byte) (int, error) {
	for b.lines.pending() == 0 {
		if b.end != nil {
			return 0, b.end
		}
		b.step()
	}
	return b.lines.take(p), nil
}

// step reads the upstream once and adds what the client is to get to the
// bytes in hand. Bytes are metered and counted before an upstream error or
// EOF settles the record.
func (b *streamBody) step() {
	b.idle.Reset(b.idleD)
	if b.rd == nil {
		b.rd = readBufs.Get().(*[]byte)
	}
	p := *b.rd
	n, err := b.up.Read(p)
	if b.clientErr != nil {
		// The read hook failed this Read; the client is gone.
		return
	}
	t := time.Now()
	out := b.lines.appendable()
	before := len(out)
	if b.hide {
		out = b.meter.Filter(out, p[:n])
		if err == io.EOF {
			out = b.meter.FilterFlush(out)
		}
	} else if n > 0 {
		b.meter.Observe(p[:n])
		out = append(out, p[:n]...)
	}
	b.lines.set(out)
	if !b.ownerNoted {
		b.ownerNoted = b.cl.noteOwner(b.meter.UpstreamID())
	}
	if len(out) > before {
		b.firstByte(t)
		b.cl.rec.BytesOut += int64(len(out) - before)
	}
	if err == nil && b.cl.s.inflight != nil && b.cl.path.Metered {
		b.noteProgress(t)
	}
	b.cl.overhead += time.Since(t)
	if err != nil {
		b.end = err
		if err != io.EOF && !b.hide {
			// Before the record is settled, so that it counts only what
			// the client gets. The meter never counts a partial line
			// either (Framer.Flush); the client could never parse it, and
			// would read it instead of the notice that follows (an SDK
			// fails on its bad JSON first). The event's whole lines stay:
			// the notice's blank line ends that event, as the meter's
			// Flush does. A provider's clean end passes everything through
			// as it came.
			b.cl.rec.BytesOut -= int64(b.lines.dropPartial())
		}
		b.settleUpstream()
	}
}

// noteProgress hands the usage seen so far to the InflightSink when it
// changed: at once the first time, then at most every
// inflightProgressEvery. Usage that comes with the end (Anthropic's
// message_delta, Responses' terminal event) writes none: the record
// follows at once. Chat's usage chunk does when [DONE] comes in a later
// read.
func (b *streamBody) noteProgress(t time.Time) {
	v := b.meter.UsageVersion()
	if v == b.progressVer || (!b.progressAt.IsZero() && t.Sub(b.progressAt) < inflightProgressEvery) {
		return
	}
	st, ok := b.meter.InFlight()
	if !ok {
		return
	}
	b.progressVer, b.progressAt = v, t
	b.cl.progress(st, t.Sub(b.cl.start))
}

// flush writes the whole lines in hand to the client; hidden-usage mode
// holds whole frames only, so it writes them all.
func (b *streamBody) flush() {
	if b.clientErr == nil {
		b.clientErr = b.lines.flush(b.writeLines, b.hide)
	}
}

// flushAll writes everything in hand to the client.
func (b *streamBody) flushAll() {
	if b.clientErr == nil {
		b.clientErr = b.lines.flush(b.writeLines, true)
	}
}

// writeLines writes bytes in hand. A slow client is not a silent
// provider: the idle timer waits while tollgate writes. Stop fails once
// the stream is settled; it then stays stopped. A client that takes
// nothing for as long is gone: without a deadline it would hold the
// stream, and the provider's connection, for good.
func (b *streamBody) writeLines(p []byte) error {
	active := b.idle.Stop()
	err := b.write(p)
	if active {
		b.idle.Reset(b.idleD)
	}
	return err
}

// write sends p to the client as one chunk, allowing it the idle window.
func (b *streamBody) write(p []byte) error {
	p = redactStreamLines(p, b.cl.secret, b.cl.dialect.ErrorShape)
	_ = b.client.SetWriteDeadline(time.Now().Add(b.idleD))
	n, err := b.w.Write(p)
	b.written += int64(n)
	b.tail.add(p[:n])
	return err
}

func (b *streamBody) firstByte(t time.Time) {
	if !b.first {
		b.first = true
		b.cl.rec.TTFB = t.Sub(b.cl.start)
	}
}

// settleUpstream notes how the upstream body ended and settles the record
// at once, before the bytes still in hand and the stream's last chunk are
// written: a client that saw the whole answer must find its record even if
// the process dies right after (the record is durable once the sink
// returns). Bytes the read hook wrote earlier may already be out.
func (b *streamBody) settleUpstream() {
	end := metering.EndEOF
	switch {
	case b.departed.Load():
		end = metering.EndClientGone
	case b.idled.Load():
		end = metering.EndIdle
	}
	b.settle(end)
}

// CloseWithError is called once by fasthttp when the body ends: err is nil
// at EOF, our own upstream error, or the client write error. There is
// deliberately no Close method: fasthttp calls Close first, and the write
// error would be lost (measured, streaming-on-fiber.md §2).
func (b *streamBody) CloseWithError(err error) error {
	b.stopWatch()
	end := metering.EndEOF
	if err != nil {
		// The upstream has not ended (else it settled already), so a write
		// error means the client went away.
		end = metering.EndClientGone
	}
	b.settle(end)
	// fasthttp reads no more after this call.
	b.lines.release()
	if b.rd != nil {
		readBufs.Put(b.rd)
		b.rd = nil
	}
	return nil
}

// settle ends the stream once: stop the timer, close the upstream body
// (pooling its connection if it was read to the end), and hand the record
// to the sink.
func (b *streamBody) settle(end metering.End) {
	b.once.Do(func() {
		b.idle.Stop()
		b.up.Close()
		st := b.meter.Settle(end)
		b.settled = metering.Settlement{Outcome: st.Outcome, UpstreamID: st.UpstreamID, Overflow: st.Overflow}
		b.cl.settle(st, b.cl.path.Metered)
		b.cl.finish()
	})
}
