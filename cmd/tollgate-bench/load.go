package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
	"github.com/valyala/fasthttp"
)

// Client-side bounds: every request and every loop ends.
const (
	requestTimeout = 30 * time.Second
	// streamTimeout bounds one stream, including a 5000-stream connect burst.
	streamTimeout = 90 * time.Second
	// maxOpenLoopWorkers bounds vegeta's goroutines (benchmark-method.md §3).
	maxOpenLoopWorkers = 4096
)

// target is one way to reach the fake provider.
type target struct {
	name string
	url  string // the chat completions URL
	auth string // Authorization header value
	proc *proc  // the proxy process; nil for direct
	// path is appended to a (re)started proxy's base URL; launch starts
	// the proxy.
	path   string
	launch func(context.Context) (*proc, error)
}

// ref is what the direct path returns for a request shape: every response
// through a proxy must have the same length and digest.
type ref struct {
	size int
	sum  [32]byte
}

// tally is what a load run observed on the client side.
type tally struct {
	requests int
	non2xx   int
	errors   int
	firstErr string
	mismatch int // 2xx body differing from direct's in length or digest
	bytes    int64
	expBytes int64           // what direct returns for the same 2xx answers
	lat      []time.Duration // request latency, or TTFB for streams
	total    []time.Duration // whole-stream duration (streams only)
	elapsed  time.Duration
}

func (t *tally) add(o *tally) {
	t.requests += o.requests
	t.non2xx += o.non2xx
	t.errors += o.errors
	if t.firstErr == "" {
		t.firstErr = o.firstErr
	}
	t.mismatch += o.mismatch
	t.bytes += o.bytes
	t.expBytes += o.expBytes
	t.lat = append(t.lat, o.lat...)
	t.total = append(t.total, o.total...)
}

func (t *tally) err(s string) {
	t.errors++
	if t.firstErr == "" {
		t.firstErr = s
	}
}

func (t *tally) check(status int, body []byte, want ref) {
	if status < 200 || status > 299 {
		t.non2xx++
		if t.firstErr == "" {
			t.firstErr = fmt.Sprintf("status %d: %.200s", status, body)
		}
		return
	}
	t.bytes += int64(len(body))
	t.expBytes += int64(want.size)
	if len(body) != want.size || sha256.Sum256(body) != want.sum {
		t.mismatch++
	}
}

// closedLoop runs conns keep-alive connections, each sending the next
// request when the last answer arrived, for d (S1: throughput only).
// fasthttp's client costs the shared load core less than net/http's.
func closedLoop(ctx context.Context, tg target, body []byte, conns int, d time.Duration, want ref) *tally {
	u, _ := url.Parse(tg.url)
	hc := &fasthttp.HostClient{
		Addr:                     u.Host,
		MaxConns:                 conns,
		ReadTimeout:              requestTimeout,
		WriteTimeout:             requestTimeout,
		MaxIdleConnDuration:      time.Minute,
		NoDefaultUserAgentHeader: true,
	}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(d)
	parts := make([]*tally, conns)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range parts {
		t := &tally{lat: make([]time.Duration, 0, 4096)}
		parts[i] = t
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI(tg.url)
			req.Header.SetMethod(fasthttp.MethodPost)
			req.Header.SetContentType("application/json")
			req.Header.Set("Authorization", tg.auth)
			req.SetBodyRaw(body)
			for ctx.Err() == nil && time.Now().Before(deadline) {
				t0 := time.Now()
				err := hc.Do(req, resp)
				lat := time.Since(t0)
				t.requests++
				if err != nil {
					t.err(err.Error())
					continue
				}
				t.lat = append(t.lat, lat)
				t.check(resp.StatusCode(), resp.Body(), want)
			}
		}()
	}
	wg.Wait()
	all := &tally{elapsed: time.Since(start)}
	for _, t := range parts {
		all.add(t)
	}
	return all
}

// newHTTPClient is the client of the open-loop and stream runs: keep-alive,
// HTTP/1.1, no compression, conns idle connections kept.
func newHTTPClient(conns int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          conns,
			MaxIdleConnsPerHost:   conns,
			IdleConnTimeout:       30 * time.Second,
			DisableCompression:    true,
			ResponseHeaderTimeout: streamTimeout,
		},
	}
}

// openLoop sends rate requests per second for d with vegeta, whatever the
// answers' latency (S2, S5). The client is shared between a warm-up and the
// measured run so the measured run starts on warm connections.
func openLoop(ctx context.Context, client *http.Client, tg target, body []byte, hdr http.Header, rate int, d time.Duration, want ref) *tally {
	h := hdr.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set("Content-Type", "application/json")
	h.Set("Authorization", tg.auth)
	tr := vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodPost, URL: tg.url, Body: body, Header: h})
	c := *client
	c.Timeout = requestTimeout
	atk := vegeta.NewAttacker(
		vegeta.Client(&c),
		vegeta.Workers(uint64(min(rate, 512))),
		vegeta.MaxWorkers(maxOpenLoopWorkers),
		vegeta.MaxBody(-1),
	)
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()
	t := &tally{lat: make([]time.Duration, 0, rate*int(d/time.Second+1))}
	start := time.Now()
	for res := range atk.Attack(tr, vegeta.Rate{Freq: rate, Per: time.Second}, d, "") {
		t.requests++
		if res.Code == 0 {
			t.err(res.Error)
			continue
		}
		t.lat = append(t.lat, res.Latency)
		t.check(int(res.Code), res.Body, want)
	}
	t.elapsed = time.Since(start)
	return t
}

// dataLine finds the first "data:" at the start of a line across reads.
type dataLine struct {
	col, match int
	found      bool
}

func (d *dataLine) feed(p []byte) bool {
	for _, c := range p {
		if d.found {
			return true
		}
		switch {
		case c == '\n':
			d.col, d.match = 0, 0
			continue
		case d.col == d.match && c == "data:"[d.match]:
			d.match++
			if d.match == len("data:") {
				d.found = true
			}
		}
		d.col++
	}
	return d.found
}

// streamOut is one stream's outcome.
type streamOut struct {
	status int
	ttfb   time.Duration // request written → first "data:" byte
	total  time.Duration
	bytes  int64
	sum    [32]byte
	err    string
}

// oneStream sends one streaming request and reads the whole answer,
// calling first once the first data line arrived.
func oneStream(ctx context.Context, client *http.Client, tg target, body []byte, hdr http.Header, buf []byte, first func()) streamOut {
	ctx, cancel := context.WithTimeout(ctx, streamTimeout)
	defer cancel()
	var wrote time.Time
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { wrote = time.Now() }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodPost, tg.url, bytes.NewReader(body))
	if err != nil {
		return streamOut{err: err.Error()}
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", tg.auth)
	resp, err := client.Do(req)
	if err != nil {
		return streamOut{err: err.Error()}
	}
	defer resp.Body.Close()
	out := streamOut{status: resp.StatusCode}
	h := sha256.New()
	var dl dataLine
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if !dl.found && dl.feed(buf[:n]) {
				out.ttfb = time.Since(wrote)
				if first != nil {
					first()
				}
			}
			out.bytes += int64(n)
			h.Write(buf[:n])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			out.err = err.Error()
			break
		}
	}
	out.total = time.Since(wrote)
	h.Sum(out.sum[:0])
	return out
}

func (t *tally) addStream(o streamOut, want ref) {
	t.requests++
	switch {
	case o.status == 0:
		t.err(o.err)
		return
	case o.status < 200 || o.status > 299:
		t.non2xx++
		if t.firstErr == "" {
			t.firstErr = fmt.Sprintf("status %d", o.status)
		}
		return
	case o.err != "":
		t.err("mid-stream: " + o.err)
	}
	t.bytes += o.bytes
	t.expBytes += int64(want.size)
	if o.bytes != int64(want.size) || o.sum != want.sum {
		t.mismatch++
	}
	t.lat = append(t.lat, o.ttfb)
	t.total = append(t.total, o.total)
}

// streams runs total streams, conc at a time (S3).
func streams(ctx context.Context, client *http.Client, tg target, body []byte, hdr http.Header, total, conc int, want ref) *tally {
	var next atomic.Int64
	parts := make([]*tally, conc)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range parts {
		t := &tally{}
		parts[i] = t
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for ctx.Err() == nil && next.Add(1) <= int64(total) {
				t.addStream(oneStream(ctx, client, tg, body, hdr, buf, nil), want)
			}
		}()
	}
	wg.Wait()
	all := &tally{elapsed: time.Since(start)}
	for _, t := range parts {
		all.add(t)
	}
	return all
}

// pacedStreams starts rate streams per second for d, whatever the answers
// take: S3's latency point. The closed loop keeps the load side's core
// busy, so its TTFB is mostly that core's queue (benchmark-method.md §1
// and §8); paced starts measure the time to first byte the way S2
// measures latency, below saturation.
func pacedStreams(ctx context.Context, client *http.Client, tg target, body []byte, rate int, d time.Duration, want ref) *tally {
	n := max(int(d.Seconds()*float64(rate)), 1)
	outs := make([]streamOut, 0, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	inflight := make(chan struct{}, maxOpenLoopWorkers)
	bufs := sync.Pool{New: func() any { return make([]byte, 32<<10) }}
	start := time.Now()
	for i := 0; i < n; i++ {
		// Each start is due at its own time from the beginning, so a late
		// one does not push back the rest.
		if err := sleepCtx(ctx, time.Until(start.Add(time.Duration(i)*time.Second/time.Duration(rate)))); err != nil {
			break
		}
		inflight <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-inflight; wg.Done() }()
			buf := bufs.Get().([]byte)
			o := oneStream(ctx, client, tg, body, nil, buf, nil)
			bufs.Put(buf)
			mu.Lock()
			outs = append(outs, o)
			mu.Unlock()
		}()
	}
	wg.Wait()
	t := &tally{elapsed: time.Since(start)}
	for _, o := range outs {
		t.addStream(o, want)
	}
	return t
}

// heldSample is one RSS reading during S4.
type heldSample struct {
	at     time.Duration
	rssKB  int64
	active int64 // streams past their first data line and not finished
}

// held opens n streams at once and keeps them until they end (S4),
// sampling the proxy's RSS every 100 ms.
func held(ctx context.Context, client *http.Client, tg target, body []byte, hdr http.Header, n int, want ref) (*tally, []heldSample) {
	var active, started atomic.Int64
	parts := make([]streamOut, n)
	var wg sync.WaitGroup
	start := time.Now()
	gate := make(chan struct{})
	for i := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4<<10)
			<-gate
			var counted bool
			parts[i] = oneStream(ctx, client, tg, body, hdr, buf, func() {
				counted = true
				started.Add(1)
				active.Add(1)
			})
			if counted {
				active.Add(-1)
			}
		}()
	}
	var samples []heldSample
	done := make(chan struct{})
	var sw sync.WaitGroup
	if tg.proc != nil {
		sw.Add(1)
		go func() {
			defer sw.Done()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-tick.C:
					rss, _ := memKB(tg.proc.pid)
					samples = append(samples, heldSample{at: time.Since(start), rssKB: rss, active: active.Load()})
				}
			}
		}()
	}
	close(gate)
	wg.Wait()
	close(done)
	sw.Wait()
	t := &tally{elapsed: time.Since(start)}
	for _, o := range parts {
		t.addStream(o, want)
	}
	return t, samples
}
