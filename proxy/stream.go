package proxy

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// errIdle is the close cause when the idle timer fires.
var errIdle = errors.New("upstream idle")

// streamOutBuffer bounds the output buffers kept in the pool; one that grew
// around a huge event is left to the GC.
const streamOutBuffer = 16 << 10

// streamBufs recycles the hidden-usage mode's output buffers. Fresh ones
// were several KiB of garbage per stream, the largest share of the GC work
// under S3 (make bench, allocation profile).
var streamBufs = sync.Pool{New: func() any { return new([]byte) }}

// getStreamBuf returns an empty pooled buffer; appending grows it.
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
// connection goroutine drives Read after the handler returned, so it owns
// copies of every request fact (in call). It passes upstream bytes through
// unchanged while the meter frames them on the side; only in hidden-usage
// mode does it forward whole frames and leave out the usage-only chunk
// tollgate asked for (streaming-on-fiber.md §4.7, R14).
type streamBody struct {
	cl    *call
	up    *fastStream
	meter *metering.Meter
	idle  *time.Timer
	idleD time.Duration
	hide  bool
	// idled is set by the idle timer before it closes the upstream body.
	idled atomic.Bool

	// hidden-usage mode: filtered bytes not yet forwarded, in a pooled
	// buffer (outBuf) held only while some are left.
	out    []byte
	outOff int
	outBuf *[]byte

	// pending is an upstream error held back until the bytes read with it
	// are forwarded: fasthttp drops the error of a Read that returned bytes.
	pending error
	first   bool
	once    sync.Once
}

func newStreamBody(cl *call, up *fastStream, maxEvent int, hide bool) *streamBody {
	b := &streamBody{
		cl: cl, up: up, hide: hide,
		meter: metering.NewMeter(cl.dialect, maxEvent),
		idleD: cl.s.cfg.StreamIdleTimeout,
	}
	// Closing the body from the timer's goroutine unblocks a parked Read;
	// fasthttp waits for that Read before it pools anything (upstream.go).
	b.idle = time.AfterFunc(b.idleD, func() {
		b.idled.Store(true)
		up.closeBody(errIdle)
	})
	return b
}

// Read never returns (0, nil): fasthttp's chunked writer would spin on it.
// Bytes are metered and counted before an upstream error or EOF settles the
// record.
func (b *streamBody) Read(p []byte) (int, error) {
	if b.outOff < len(b.out) {
		n := copy(p, b.out[b.outOff:])
		b.outOff += n
		if b.outOff == len(b.out) {
			b.releaseOut()
		}
		return n, nil
	}
	if b.pending != nil {
		return 0, b.pending
	}
	for {
		b.idle.Reset(b.idleD)
		if !b.hide {
			n, err := b.up.Read(p)
			if n > 0 {
				t := time.Now()
				b.firstByte(t)
				b.meter.Observe(p[:n])
				b.cl.rec.BytesOut += int64(n)
				b.cl.overhead += time.Since(t)
			}
			if err != nil {
				b.pending = b.upstreamErr(err)
			}
			if n > 0 {
				return n, nil
			}
			if b.pending != nil {
				return 0, b.pending
			}
			continue
		}
		// Read straight into fasthttp's buffer; the filtered frames go to a
		// pooled buffer held only until they are copied back, so a parked
		// stream holds no buffer of its own (make bench, S4).
		n, err := b.up.Read(p)
		t := time.Now()
		if b.outBuf == nil {
			b.outBuf = getStreamBuf()
		}
		out := b.meter.Filter((*b.outBuf)[:0], p[:n])
		if err == io.EOF {
			out = b.meter.FilterFlush(out)
		}
		*b.outBuf = out
		if len(out) > 0 {
			b.firstByte(t)
			b.cl.rec.BytesOut += int64(len(out))
		}
		b.cl.overhead += time.Since(t)
		if err != nil {
			b.pending = b.upstreamErr(err)
		}
		if len(out) > 0 {
			c := copy(p, out)
			b.out, b.outOff = out, c
			if c == len(out) {
				b.releaseOut()
			}
			return c, nil
		}
		b.releaseOut()
		if b.pending != nil {
			return 0, b.pending
		}
	}
}

// releaseOut returns the hidden-usage output buffer to the pool.
func (b *streamBody) releaseOut() {
	putStreamBuf(b.outBuf)
	b.outBuf, b.out, b.outOff = nil, nil, 0
}

func (b *streamBody) firstByte(t time.Time) {
	if !b.first {
		b.first = true
		b.cl.rec.TTFB = t.Sub(b.cl.start)
	}
}

// upstreamErr notes how the upstream body ended and settles the record at
// once, before fasthttp writes the stream's last chunk: a client that saw
// the whole answer must find its record even if the process dies right
// after (the record is durable once the sink returns).
func (b *streamBody) upstreamErr(err error) error {
	end := metering.EndEOF
	if b.idled.Load() {
		end = metering.EndIdle
	}
	b.settle(end)
	return err
}

// CloseWithError is called once by fasthttp when the body ends: err is nil
// at EOF, our own upstream error, or the client write error. There is
// deliberately no Close method: fasthttp calls Close first, and the write
// error would be lost (measured, streaming-on-fiber.md §2).
func (b *streamBody) CloseWithError(err error) error {
	end := metering.EndEOF
	if err != nil {
		// The upstream has not ended (else Read settled already), so a
		// write error means the client went away.
		end = metering.EndClientGone
	}
	b.settle(end)
	// fasthttp reads no more after this call.
	b.releaseOut()
	return nil
}

// settle ends the stream once: stop the timer, close the upstream body
// (pooling its connection if it was read to the end), and hand the record
// to the sink.
func (b *streamBody) settle(end metering.End) {
	b.once.Do(func() {
		b.idle.Stop()
		b.up.Close()
		b.cl.settle(b.meter.Settle(end), b.cl.path.Metered)
		b.cl.finish()
	})
}
