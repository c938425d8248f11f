//go:build hostile

// The heavy hostile-client runs of `make test-hostile`: floods against the
// real binary under a low descriptor limit, on loopback, in under two
// minutes. Not part of `make test`.

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

const hostileNofile = 256

// hostileBinary is the binary under test: TOLLGATE_HOSTILE_BIN (make builds
// bin/tollgate), else a fresh build.
func hostileBinary(t *testing.T) string {
	if p := os.Getenv("TOLLGATE_HOSTILE_BIN"); p != "" {
		return p
	}
	p := filepath.Join(t.TempDir(), "tollgate")
	out, err := exec.Command("go", "build", "-o", p, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return p
}

// lockedBuffer collects the server's log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// logTail is the last n lines of a log.
func logTail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// procStatusKiB reads a kB field of /proc/<pid>/status.
func procStatusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return -1
}

// legitClient sends one small request at a time from 127.0.0.2 (its own
// per-IP budget) and records each latency, or a failure.
type legitClient struct {
	mu       sync.Mutex
	ok, fail int
	lat      []time.Duration
}

func (lc *legitClient) run(ctx context.Context, base, tok string) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 2}}
	body := `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`
	for ctx.Err() == nil {
		req, _ := http.NewRequest("POST", base+"/anthropic/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		t0 := time.Now()
		resp, err := client.Do(req)
		ok := err == nil && resp.StatusCode == http.StatusOK
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		lc.mu.Lock()
		if ok {
			lc.ok++
			lc.lat = append(lc.lat, time.Since(t0))
		} else {
			lc.fail++
		}
		lc.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
}

func (lc *legitClient) summary() (ok, fail int, p99 time.Duration) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	l := slices.Clone(lc.lat)
	slices.Sort(l)
	if len(l) > 0 {
		p99 = l[min(len(l)-1, len(l)*99/100)]
	}
	return lc.ok, lc.fail, p99
}

// TestHostileFloodsAgainstTheBinary: a descriptor flood past RLIMIT_NOFILE
// and a flood of claimed body sizes; the server keeps serving a legitimate
// client, its RSS stays bounded, and it never exits.
func TestHostileFloodsAgainstTheBinary(t *testing.T) {
	bin := hostileBinary(t)
	const canary = "sk-ant-api03-CANARYhostile0123456789abcdefgh"
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{Keys: []string{canary}, RecordLimit: -1})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	if _, errs, code := c.run(ctx, canary+"\n", "credential", "set", "--platform", "--provider", "anthropic", "--key-stdin"); code != 0 {
		t.Fatalf("credential set: %s", errs)
	}
	tok, _, _ := c.run(ctx, "", "token", "issue", "--workspace", "ws-hostile", "--project", "p", "--user", "u")
	tok = strings.TrimSpace(tok)

	// No connection cap: the descriptor flood must meet EMFILE, which the
	// listener has to survive; the caps are the subject of the unit tests.
	cmd := exec.Command("sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" serve`, hostileNofile), bin)
	cmd.Env = append(os.Environ(), "TOLLGATE_MAX_CONNS=-1", "TOLLGATE_MAX_CONNS_PER_IP=-1")
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("server printed no address: %v\n%s", err, logs.String())
	}
	go io.Copy(io.Discard, stdout)
	base := strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	addr := strings.TrimPrefix(base, "http://")
	pid := cmd.Process.Pid
	alive := func(stage string) {
		t.Helper()
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("server exited during %s: %v\nlast log lines:\n%s", stage, err, logTail(logs.String(), 5))
		default:
		}
	}

	lctx, stopLegit := context.WithCancel(ctx)
	lc := &legitClient{}
	var lwg sync.WaitGroup
	lwg.Add(1)
	go func() { defer lwg.Done(); lc.run(lctx, base, tok) }()
	time.Sleep(500 * time.Millisecond)

	// 1. Descriptor flood: hold more idle connections than the process has
	// descriptors, so accept meets EMFILE.
	var held []net.Conn
	for range 2 * hostileNofile {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			break
		}
		held = append(held, conn)
	}
	time.Sleep(4 * time.Second)
	alive("the descriptor flood")
	for _, conn := range held {
		conn.Close()
	}
	acceptRetries := strings.Count(logs.String(), "accept failed; retrying")
	// Accept recovered: a fresh client from the flooding address is served.
	var fresh error = fmt.Errorf("not tried")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				fresh = nil
				break
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		fresh = err
	}
	if fresh != nil {
		t.Errorf("after the descriptor flood a new client is not served: %v", fresh)
	}

	// 2. Claimed body sizes: each connection declares just under the limit
	// (or one chunk as large) and sends 10 bytes.
	rssBefore := procStatusKiB(pid, "VmRSS")
	var claims []net.Conn
	for i := range 80 {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("claimed-size connection %d: %v", i, err)
		}
		claims = append(claims, conn)
		if i%2 == 0 {
			fmt.Fprintf(conn, "POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"model\":", tok, 32<<20-1)
		} else {
			fmt.Fprintf(conn, "POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n{\"model\":", tok, 32<<20-1)
		}
	}
	var rssPeakDuring int64
	for range 20 {
		rssPeakDuring = max(rssPeakDuring, procStatusKiB(pid, "VmRSS"))
		time.Sleep(100 * time.Millisecond)
	}
	// Over the limit: 413 from the headers, without waiting for the body.
	var slow413 int
	for range 10 {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		fmt.Fprintf(conn, "POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nContent-Length: 134000000\r\n\r\n{\"model\":", tok)
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge || time.Since(t0) > 2*time.Second {
			slow413++
		}
		conn.Close()
	}
	for _, conn := range claims {
		conn.Close()
	}
	alive("the claimed-size flood")
	stopLegit()
	lwg.Wait()
	hwm := procStatusKiB(pid, "VmHWM")

	ok, fail, p99 := lc.summary()
	report := fmt.Sprintf("hostile: descriptor flood held %d connections at RLIMIT_NOFILE=%d; %d rate-limited accept-retry log lines; fresh client after it: %v\n"+
		"hostile: claimed-size flood 80 x 32 MiB claimed, 10 B sent: RSS %d MiB before, %d MiB peak during; %d of 10 over-limit claims not refused at once with 413\n"+
		"hostile: peak RSS (VmHWM) %d MiB\n"+
		"hostile: legitimate client: %d ok, %d failed, p99 latency %s\n",
		len(held), hostileNofile, acceptRetries, fresh == nil, rssBefore>>10, rssPeakDuring>>10, slow413, hwm>>10, ok, fail, p99)
	fmt.Print(report)
	t.Log(report)

	if acceptRetries == 0 {
		t.Errorf("the descriptor flood never met EMFILE: the run proves nothing")
	}
	if slow413 > 0 {
		t.Errorf("%d over-limit claims were not refused at once", slow413)
	}
	if rssPeakDuring-rssBefore > 64<<10 {
		t.Errorf("RSS grew %d MiB for 80 connections that sent 10 bytes each", (rssPeakDuring-rssBefore)>>10)
	}
	if ok == 0 || fail > ok/10 {
		t.Errorf("the legitimate client: %d ok, %d failed", ok, fail)
	}

	// The server never exited, and still stops cleanly.
	alive("the run")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("server did not stop cleanly: %v", err)
		}
	case <-time.After(45 * time.Second):
		t.Errorf("server did not stop within 45 s of SIGTERM")
	}
}
