package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tollgate/tollgate/internal/netguard"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
	"github.com/tollgate/tollgate/resolver"
)

const chatJSON = `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`

// Shutdown step 3 cancels the base context; a non-streamed request parked
// at the provider must end then, answered 502 and recorded, even though the
// fasthttp client has no cancellation of its own.
func TestShutdownEndsNonStreamedRequests(t *testing.T) {
	e := newEnv(t, envOptions{headerWait: time.Minute})
	tok := e.token("ws", "p", "u", "")
	type result struct {
		resp *http.Response
		took time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		resp := e.do("POST", "/openai/v1/chat/completions", tok, chatJSON, upstreamtest.HeaderTTFB, "30s")
		done <- result{resp, time.Since(start)}
	}()
	testkit.Eventually(t, 5*time.Second, "the request to reach the provider", func() bool { return e.fake.Counters().Requests == 1 })
	e.cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the request outlived the base context by 5 s")
	}
	body := readAll(t, r.resp.Body)
	r.resp.Body.Close()
	if r.resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "could not be reached") {
		t.Errorf("status %d body %s, want 502 in the OpenAI envelope", r.resp.StatusCode, body)
	}
	rec := e.record(r.resp)
	if rec.Outcome != metering.OutcomeUnreachable || rec.Status != http.StatusBadGateway {
		t.Errorf("record outcome %s status %d, want unreachable 502", rec.Outcome, rec.Status)
	}
	// A request after the base context ended must not dial at all.
	resp := e.do("POST", "/openai/v1/chat/completions", tok, chatJSON)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || e.fake.Counters().Requests != 1 {
		t.Errorf("after cancel: status %d, provider saw %d requests; want 502 and 1", resp.StatusCode, e.fake.Counters().Requests)
	}
}

// closingUpstream is a provider whose first connection answers one request
// and then closes on the second without a byte, the way a provider drops a
// keep-alive connection it considers idle. Later connections answer all.
type closingUpstream struct {
	ln       net.Listener
	requests atomic.Int64
	conns    atomic.Int64
	lastURI  atomic.Value // string: the request target as received
}

func startClosingUpstream(t *testing.T) *closingUpstream {
	u := &closingUpstream{}
	u.ln = serveTCP(t, func(c net.Conn) { u.serve(c, u.conns.Add(1) == 1) })
	return u
}

// serveTCP runs handle for every connection to a loopback listener, each
// on its own goroutine, until the test ends.
func serveTCP(t *testing.T, handle func(net.Conn)) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}()
	return ln
}

func (u *closingUpstream) serve(c net.Conn, first bool) {
	defer c.Close()
	br := bufio.NewReader(c)
	for n := 0; ; n++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		u.lastURI.Store(req.RequestURI)
		u.requests.Add(1)
		if first && n == 1 {
			return
		}
		body := `{"object":"list","data":[]}`
		if req.Method == http.MethodPost {
			body = `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
}

// A kept-alive connection the provider closed: a GET is sent again on a
// new connection, a billed POST never is (net/http's rule: only replayable
// requests are retried once written), so a request is never charged twice.
func TestDroppedKeepAliveRetriesOnlyReplayableRequests(t *testing.T) {
	for _, tc := range []struct {
		name, method, path, body string
		wantStatus               int
		wantRequests             int64
	}{
		{"GET", "GET", "/openai/v1/models", "", http.StatusOK, 3},
		{"POST", "POST", "/openai/v1/chat/completions", chatJSON, http.StatusBadGateway, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startClosingUpstream(t)
			e := newEnv(t, envOptions{upstreamURL: "http://" + up.ln.Addr().String()})
			tok := e.token("ws", "p", "u", "")
			resp := e.do(tc.method, tc.path, tok, tc.body)
			readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("first request: status %d", resp.StatusCode)
			}
			resp = e.do(tc.method, tc.path, tok, tc.body)
			b := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("second request: status %d, want %d: %s", resp.StatusCode, tc.wantStatus, b)
			}
			if got := up.requests.Load(); got != tc.wantRequests {
				t.Errorf("provider saw %d requests, want %d", got, tc.wantRequests)
			}
		})
	}
}

// A non-streamed answer over the response limit is refused with a message
// that names the limit, not passed on unmetered.
func TestNonStreamedAnswerOverTheLimit(t *testing.T) {
	e := newEnv(t, envOptions{registryEdit: func(y string) string {
		return strings.Replace(y, "max_response_body_bytes: 67108864", "max_response_body_bytes: 200", 1)
	}})
	tok := e.token("ws", "p", "u", "")
	resp := e.do("POST", "/openai/v1/chat/completions", tok, chatJSON)
	b := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "max_response_body_bytes") {
		t.Errorf("status %d body %s, want 502 naming the limit", resp.StatusCode, b)
	}
	if e.fake.Counters().Requests != 1 {
		t.Errorf("provider saw %d requests, want 1", e.fake.Counters().Requests)
	}
}

// The request target reaches the provider byte for byte: fasthttp would
// otherwise decode and re-encode the path (DisablePathNormalizing).
func TestNonStreamedPathIsNotNormalised(t *testing.T) {
	up := startClosingUpstream(t)
	e := newEnv(t, envOptions{upstreamURL: "http://" + up.ln.Addr().String()})
	tok := e.token("ws", "p", "u", "")
	const rest = "/v1/models/ft%3Agpt-4o%20x?limit=2&after=a%2Bb"
	resp := e.do("GET", "/openai"+rest, tok, "")
	readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got, _ := up.lastURI.Load().(string); got != rest {
		t.Errorf("provider got request target %q, want %q", got, rest)
	}
}

// connectProxy is an HTTP CONNECT proxy that sends every tunnel to target,
// whatever host the client named, and remembers the names.
type connectProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	hosts  []string
}

func startConnectProxy(t *testing.T, target string) *connectProxy {
	p := &connectProxy{target: target}
	p.ln = serveTCP(t, p.tunnel)
	return p
}

func (p *connectProxy) tunnel(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect {
		return
	}
	p.mu.Lock()
	p.hosts = append(p.hosts, req.Host)
	p.mu.Unlock()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	go func() {
		io.Copy(up, br)
		up.Close()
	}()
	io.Copy(c, up)
}

// A gateway deployed behind a corporate proxy reaches providers through
// it, streamed or not. Loopback is never proxied, so the provider gets a
// name only the proxy can resolve.
func TestUpstreamHonoursProxyEnvironment(t *testing.T) {
	fake, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{Keys: canaries})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(fakeURL, "http://"))
	px := startConnectProxy(t, "127.0.0.1:"+port)
	t.Setenv("HTTP_PROXY", "http://"+px.ln.Addr().String())
	t.Setenv("HTTPS_PROXY", "http://"+px.ln.Addr().String())
	t.Setenv("NO_PROXY", "")
	e := newEnv(t, envOptions{upstreamURL: "http://provider.test:" + port})
	tok := e.token("ws", "p", "u", "")
	for _, body := range []string{chatJSON, `{"model":"gpt-4o","stream":true,"messages":[]}`} {
		resp := e.do("POST", "/openai/v1/chat/completions", tok, body)
		b := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d through the proxy: %s", resp.StatusCode, b)
		}
	}
	if n := fake.Counters().Requests; n != 2 {
		t.Errorf("provider saw %d requests, want 2", n)
	}
	px.mu.Lock()
	defer px.mu.Unlock()
	if len(px.hosts) == 0 || px.hosts[0] != "provider.test:"+port {
		t.Errorf("proxy tunnels %v, want provider.test:%s", px.hosts, port)
	}
}

// Agent contexts run to megabytes; the request body reaches the provider
// byte for byte without a copy, streamed or not.
func TestLargeRequestBodiesArriveIntact(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	big := strings.Repeat("0123456789abcdef", 1<<17) // 2 MiB
	for _, body := range []string{
		`{"model":"gpt-4o","messages":[{"role":"user","content":"` + big + `"}]}`,
		`{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"` + big + `"}]}`,
	} {
		resp := e.do("POST", "/openai/v1/chat/completions", tok, body)
		readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if up := e.lastFake(); string(up.Body) != body {
			t.Errorf("provider got %d bytes, want the %d sent", len(up.Body), len(body))
		}
	}
}

// A provider that cuts a stream between two chunks leaves a dead
// connection. fasthttp takes that EOF for the body's end and pooled the
// connection, so the next request to the provider failed with a 502.
func TestCutStreamLeavesNoDeadConnectionInThePool(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	for i := 0; i < 3; i++ {
		resp := e.do("POST", "/openai/v1/chat/completions", tok, `{"model":"gpt-4o","stream":true,"messages":[]}`, upstreamtest.HeaderFault, "cut=3")
		io.ReadAll(resp.Body)
		resp.Body.Close()
		resp = e.do("POST", "/openai/v1/chat/completions", tok, chatJSON)
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d after a cut stream: %d %s", i+1, resp.StatusCode, body)
		}
	}
}

// A non-streamed answer whose body breaks off after its headers: the
// client's 502 says so, not "could not be reached", and the record is
// truncated with unknown usage, since the provider may bill it.
func TestNonStreamedAnswerThatBreaksOff(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	resp := e.do("POST", "/anthropic/v1/messages", tok, `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[]}`, upstreamtest.HeaderFault, "cut=3")
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "the provider's answer broke off before its end") || !strings.Contains(string(body), `"type":"api_error"`) {
		t.Errorf("status %d body %s", resp.StatusCode, body)
	}
	rec := e.record(resp)
	if rec.Outcome != metering.OutcomeTruncated || rec.Source != metering.SourceMissing || rec.Usage != nil {
		t.Errorf("record outcome %s source %s usage %+v, want truncated, missing, nil", rec.Outcome, rec.Source, rec.Usage)
	}
}

// The same for a chunked answer cut between two chunks, which fasthttp
// reports unlike a short Content-Length body.
func TestNonStreamedChunkedAnswerThatBreaksOff(t *testing.T) {
	ln := serveTCP(t, func(c net.Conn) {
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"id\"\r\n")
	})
	e := newEnv(t, envOptions{upstreamURL: "http://" + ln.Addr().String()})
	resp := e.do("POST", "/openai/v1/chat/completions", e.token("ws", "p", "u", ""), chatJSON)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "broke off before its end") {
		t.Errorf("status %d body %s", resp.StatusCode, body)
	}
	if rec := e.record(resp); rec.Outcome != metering.OutcomeTruncated || rec.Source != metering.SourceMissing {
		t.Errorf("record outcome %s source %s, want truncated, missing", rec.Outcome, rec.Source)
	}
}

// A credential whose base URL names the cloud metadata service is refused
// when it is created through the admin API, even where loopback and
// private base URLs are allowed; without that setting a loopback one is
// refused too, and the answer names the setting.
func TestCredentialBaseURLOnMetadataRefusedAtCreation(t *testing.T) {
	for _, tc := range []struct {
		name, url, want string
		strict          bool
	}{
		{"Metadata", "http://169.254.169.254", "link-local", false},
		{"MetadataV6", "http://[fd00:ec2::254]/latest", "link-local", false},
		{"LoopbackStrict", "http://127.0.0.1:8080", netguard.AllowPrivateSetting, true},
		{"LocalhostStrict", "http://localhost:11434/v1", netguard.AllowPrivateSetting, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{strictBaseURL: tc.strict})
			code, v := e.admin("POST", "/credentials", `{"name":"meta","provider":"openai","key":"sk-meta-0000000000","base_url":"`+tc.url+`"}`)
			if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(v), tc.want) {
				t.Fatalf("create with base URL %s: %d %v, want 400 naming %q", tc.url, code, v, tc.want)
			}
		})
	}
}

// TestCredentialBaseURLRebindingRefusedAtDial: a base URL whose name was
// public when it was written and resolves to loopback when dialled (DNS
// rebinding) is refused at connect, in a gateway that does not allow
// private base URLs; the provider on that address sees nothing, and the
// caller and the record say why.
func TestCredentialBaseURLRebindingRefusedAtDial(t *testing.T) {
	for _, v := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
		t.Setenv(v, "")
	}
	e := newEnv(t, envOptions{strictBaseURL: true})
	e.srv.fast.guard.direct.Resolver = loopbackDNS(t)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(e.fakeURL, "http://"))
	ctx := context.Background()
	cr, err := e.svc.CreateCredential(ctx, resolver.CredentialSpec{Name: "rebind", Provider: "openai", Secret: resolver.NewSecret(canaryOpenAI), BaseURL: "http://rebind.test:" + port})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Bind(ctx, resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "proj-rebind", Dialect: "openai-chat"}, cr.ID); err != nil {
		t.Fatal(err)
	}
	tok := e.token("ws", "proj-rebind", "u", "")
	for _, body := range []string{chatJSON, `{"model":"gpt-4o","stream":true,"messages":[]}`} {
		resp := e.do("POST", "/openai/v1/chat/completions", tok, body)
		b := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "refuses to reach") {
			t.Errorf("status %d body %s, want 502 saying the address is refused", resp.StatusCode, b)
		}
		if rec := e.record(resp); rec.Outcome != metering.OutcomeRejected {
			t.Errorf("record outcome %s, want %s", rec.Outcome, metering.OutcomeRejected)
		}
	}
	if n := e.fake.Counters().Requests; n != 0 {
		t.Errorf("the provider on loopback saw %d requests, want 0", n)
	}
	if !strings.Contains(e.logs.String(), "refused at dial") {
		t.Errorf("no log line names the refused dial")
	}
}

// Behind an HTTP proxy the proxy resolves and connects, so tollgate checks
// what the name resolves to before it asks the proxy for a tunnel.
func TestCredentialBaseURLOnLoopbackRefusedBeforeTheProxy(t *testing.T) {
	fake, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{Keys: canaries})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(fakeURL, "http://"))
	px := startConnectProxy(t, "127.0.0.1:"+port)
	t.Setenv("HTTP_PROXY", "http://"+px.ln.Addr().String())
	t.Setenv("HTTPS_PROXY", "http://"+px.ln.Addr().String())
	t.Setenv("NO_PROXY", "")
	e := newEnv(t, envOptions{strictBaseURL: true})
	e.srv.fast.guard.direct.Resolver = loopbackDNS(t)
	ctx := context.Background()
	cr, err := e.svc.CreateCredential(ctx, resolver.CredentialSpec{Name: "rebind", Provider: "openai", Secret: resolver.NewSecret(canaryOpenAI), BaseURL: "http://rebind.test:" + port})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Bind(ctx, resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "proj-rebind", Dialect: "openai-chat"}, cr.ID); err != nil {
		t.Fatal(err)
	}
	resp := e.do("POST", "/openai/v1/chat/completions", e.token("ws", "proj-rebind", "u", ""), chatJSON)
	b := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "refuses to reach") {
		t.Errorf("status %d body %s, want 502 saying the address is refused", resp.StatusCode, b)
	}
	if n := fake.Counters().Requests; n != 0 {
		t.Errorf("the provider behind the proxy saw %d requests, want 0", n)
	}
	px.mu.Lock()
	defer px.mu.Unlock()
	if len(px.hosts) != 0 {
		t.Errorf("the proxy was asked to tunnel to %v", px.hosts)
	}
}

// loopbackDNS is a DNS server on loopback that answers every A query with
// 127.0.0.1, and a resolver that asks only it.
func loopbackDNS(t *testing.T) *net.Resolver {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			if q.Type == dnsmessage.TypeA {
				b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: [4]byte{127, 0, 0, 1}})
			}
			if out, err := b.Finish(); err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", pc.LocalAddr().String())
	}}
}
