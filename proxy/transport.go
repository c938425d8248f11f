package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// fasthttp's client has no cancellation: DoTimeout only sets deadlines on
// the pooled connection it acquires, and during the header wait the caller
// does not know which one that is (valyala/fasthttp#2206; real
// cancellation is #2198/#2377, open). So fastUpstream is the client's
// RoundTripper: a copy of fasthttp 1.74's transport.RoundTrip built from
// its exported parts, which binds each call's connection to the call's
// abort slot while the call owns it (hostile-clients.md §5). An abort
// closes that connection, which fails the write or header read in flight
// at once. Re-read fasthttp's transport.RoundTrip and clientStreamBody at
// every fasthttp upgrade, and drop this once a release has DoContext.
//
// Differences from the original, all because tollgate's client does not
// use the feature: no Client.ReadTimeout, WriteTimeout or MaxConnDuration.

// errClientGone is the cause when the client left before its answer.
var errClientGone = errors.New("client went away")

// abortSlot is one call's link to the connection it is using. bind and
// unbind hold mu, and so does abort: an abort therefore closes a
// connection only while it is still this call's, never one back in the
// pool and serving another call.
type abortSlot struct {
	deadline time.Time
	mu       sync.Mutex
	conn     net.Conn
	aborted  bool
	// body is a streamed answer's body, set by RoundTrip.
	body io.Reader
	// sent is set once the whole request was written to a connection:
	// from then on the provider may have taken it, and may bill it even
	// when no answer comes back (failover.go).
	sent atomic.Bool
}

func (sl *abortSlot) bind(c net.Conn) bool {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.aborted {
		return false
	}
	sl.conn = c
	return true
}

func (sl *abortSlot) unbind() {
	sl.mu.Lock()
	sl.conn = nil
	sl.mu.Unlock()
}

func (sl *abortSlot) abort() {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	sl.aborted = true
	if sl.conn != nil {
		_ = sl.conn.Close()
	}
}

func (sl *abortSlot) isAborted() bool {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.aborted
}

func (u *fastUpstream) slot(req *fasthttp.Request) *abortSlot {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.slots[req]
}

// do sends req and reads the answer's headers (and, unless resp streams,
// its body) within timeout. When ctx ends first, the connection is closed
// and do returns ctx's cause: errClientGone when the client left. For a
// streamed answer it returns the body to read, which closes or pools the
// connection when closed. sent says the whole request was written, so a
// failure may still have reached the provider.
func (u *fastUpstream) do(ctx context.Context, req *fasthttp.Request, resp *fasthttp.Response, timeout time.Duration) (body io.Reader, sent bool, err error) {
	if ctx.Err() != nil {
		return nil, false, context.Cause(ctx)
	}
	sl := &abortSlot{deadline: time.Now().Add(timeout)}
	u.mu.Lock()
	u.slots[req] = sl
	u.mu.Unlock()
	stop := context.AfterFunc(ctx, sl.abort)
	err = u.client.DoTimeout(req, resp, timeout)
	stop()
	u.mu.Lock()
	delete(u.slots, req)
	u.mu.Unlock()
	if sl.isAborted() {
		if sl.body != nil {
			// Headers came just as the client left.
			closeStream(sl.body, errClientGone)
		}
		return nil, sl.sent.Load(), fmt.Errorf("upstream call aborted: %w", context.Cause(ctx))
	}
	if err != nil {
		return nil, sl.sent.Load(), err
	}
	return sl.body, true, nil
}

func closeStream(body io.Reader, cause error) {
	if c, ok := body.(interface{ CloseWithError(error) error }); ok {
		_ = c.CloseWithError(cause)
	}
}

// RoundTrip is fasthttp's transport.RoundTrip with the abort slot bound
// around the exchange. Calls without a slot take fasthttp's own.
func (u *fastUpstream) RoundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response) (bool, error) {
	sl := u.slot(req)
	if sl == nil {
		return fasthttp.DefaultTransport.RoundTrip(hc, req, resp)
	}
	customSkipBody := resp.SkipBody
	customStreamBody := resp.StreamBody

	timeout := time.Until(sl.deadline)
	if timeout <= 0 {
		return false, fasthttp.ErrTimeout
	}
	cc, err := hc.AcquireConn(timeout, req.ConnectionClose())
	if err != nil {
		return false, err
	}
	conn := cc.Conn()
	if !sl.bind(conn) {
		// Aborted before anything was written: the connection is unused.
		hc.ReleaseConn(cc)
		return false, errClientGone
	}
	// closeConn unbinds first: from then on an abort cannot touch it.
	closeConn := func() {
		sl.unbind()
		hc.CloseConn(cc)
	}

	resp.ParseNetConn(conn)
	if err = conn.SetWriteDeadline(sl.deadline); err != nil {
		closeConn()
		return true, err
	}
	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	if x, ok := err.(interface{ Timeout() bool }); ok && x.Timeout() {
		err = fasthttp.ErrTimeout
	}
	if err != nil {
		closeConn()
		return true, err
	}
	sl.sent.Store(true)

	if err = conn.SetReadDeadline(sl.deadline); err != nil {
		closeConn()
		return true, err
	}
	if customSkipBody || req.Header.IsHead() {
		resp.SkipBody = true
	}
	if hc.DisableHeaderNamesNormalizing {
		resp.Header.DisableNormalizing()
	}
	br := hc.AcquireReader(conn)
	err = resp.ReadLimitBody(br, hc.MaxResponseBodySize)
	if err != nil {
		hc.ReleaseReader(br)
		closeConn()
		// ErrBodyTooLarge would come again.
		return err != fasthttp.ErrBodyTooLarge, err
	}

	connClose := req.ConnectionClose() || resp.ConnectionClose()
	if customStreamBody && resp.BodyStream() != nil {
		// The body stream owns the connection from here; it is closed
		// through the stream (fastStream.closeBody), which is safe from
		// any goroutine.
		sl.unbind()
		sl.body = &upstreamBody{
			reader:    resp.BodyStream(),
			fullyRead: resp.Header.ContentLength() == 0,
			interrupt: func() { _ = conn.Close() },
			release: func(discard bool) {
				hc.ReleaseReader(br)
				// The request stream itself goes back to fasthttp's pool
				// when the response is released.
				if connClose || discard || resp.ConnectionClose() {
					hc.CloseConn(cc)
				} else {
					hc.ReleaseConn(cc)
				}
			},
		}
		return false, nil
	}
	hc.ReleaseReader(br)
	sl.unbind()
	if connClose {
		hc.CloseConn(cc)
	} else {
		hc.ReleaseConn(cc)
	}
	return false, nil
}

// upstreamBody is fasthttp's clientStreamBody: it serialises reads and
// keeps the pooled reader and connection until a Read in flight returned,
// so that a close from another goroutine (the idle timer, a departure)
// interrupts the Read instead of racing it (valyala/fasthttp#2353).
type upstreamBody struct {
	reader    io.Reader
	interrupt func()
	release   func(discard bool)
	closed    atomic.Bool
	fullyRead bool
	readLock  sync.Mutex
	closeOnce sync.Once
}

func (s *upstreamBody) Read(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, io.ErrClosedPipe
	}
	s.readLock.Lock()
	defer s.readLock.Unlock()
	if s.closed.Load() {
		return 0, io.ErrClosedPipe
	}
	n, err := s.reader.Read(p)
	if errors.Is(err, io.EOF) {
		s.fullyRead = true
	}
	return n, err
}

// CloseWithError pools the connection only if the body was read to its
// end and err is nil; otherwise it closes it, first interrupting a Read in
// flight and waiting for it.
func (s *upstreamBody) CloseWithError(err error) error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		locked := s.readLock.TryLock()
		discard := err != nil || !locked
		if discard || !s.fullyRead {
			discard = true
			s.interrupt()
		}
		if !locked {
			s.readLock.Lock()
		}
		defer s.readLock.Unlock()
		s.release(discard)
	})
	return nil
}
