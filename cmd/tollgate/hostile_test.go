//go:build hostile

// The heavy hostile-client runs of `make test-hostile`: floods against the
// real binary under a low descriptor limit, on loopback, in under two
// minutes. Not part of `make test`.

package main

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
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
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

const hostileNofile = 256

// hostileBinary is the binary under test: TOLLGATE_HOSTILE_BIN (make builds
// bin/tollgate), else a fresh build.
func hostileBinary(t *testing.T) string {
	return testBinary(t, "TOLLGATE_HOSTILE_BIN", ".")
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
	// pause between requests; 0 means 20 ms.
	pause    time.Duration
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
		time.Sleep(cmp.Or(lc.pause, 20*time.Millisecond))
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
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{Keys: []string{hostileCanary}, RecordLimit: -1})
	c, tok := hostileCLI(t, fakeURL)
	ctx := context.Background()

	// No connection cap: the descriptor flood must meet EMFILE, which the
	// listener has to survive; the caps are the subject of the unit tests.
	hs := startHostile(t, bin, c, "TOLLGATE_MAX_CONNS=-1", "TOLLGATE_MAX_CONNS_PER_IP=-1")
	base, addr, pid, logs, alive := hs.base, hs.addr, hs.pid, hs.logs, hs.alive

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

	// 3. Compression bombs: 256 MiB of zeros as a 256 KB gzip body, from
	// 20 clients at once, each with a valid token so the body is read; and
	// the stacked "gzip, gzip" shape. Decoding must stop at the limit.
	var zbuf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zbuf, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for range 256 {
		zw.Write(zeros)
	}
	zw.Close()
	bomb := zbuf.Bytes()
	bombRSSBefore := procStatusKiB(pid, "VmRSS")
	var bombPeak atomic.Int64
	var bombNot413, stackedNotRefused atomic.Int32
	var bwg sync.WaitGroup
	stopPeak := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopPeak:
				return
			case <-time.After(20 * time.Millisecond):
				if v := procStatusKiB(pid, "VmRSS"); v > bombPeak.Load() {
					bombPeak.Store(v)
				}
			}
		}
	}()
	for i := range 20 {
		bwg.Add(1)
		go func() {
			defer bwg.Done()
			coding := "gzip"
			if i%5 == 4 {
				coding = "gzip, gzip"
			}
			req, _ := http.NewRequest("POST", base+"/anthropic/v1/messages", bytes.NewReader(bomb))
			req.Header.Set("x-api-key", tok)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Content-Encoding", coding)
			resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
			status := 0
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			switch {
			case coding == "gzip" && status != http.StatusRequestEntityTooLarge:
				bombNot413.Add(1)
			case coding != "gzip" && status != http.StatusUnsupportedMediaType:
				stackedNotRefused.Add(1)
			}
		}()
	}
	bwg.Wait()
	close(stopPeak)
	alive("the compression bombs")
	stopLegit()
	lwg.Wait()
	hwm := procStatusKiB(pid, "VmHWM")

	ok, fail, p99 := lc.summary()
	report := fmt.Sprintf("hostile: descriptor flood held %d connections at RLIMIT_NOFILE=%d; %d rate-limited accept-retry log lines; fresh client after it: %v\n"+
		"hostile: claimed-size flood 80 x 32 MiB claimed, 10 B sent: RSS %d MiB before, %d MiB peak during; %d of 10 over-limit claims not refused at once with 413\n"+
		"hostile: gzip bombs 20 x %d KiB (256 MiB decoded; 4 of them \"gzip, gzip\"): RSS %d MiB before, %d MiB peak; %d not 413, %d stacked not 415\n"+
		"hostile: peak RSS (VmHWM) %d MiB\n"+
		"hostile: legitimate client: %d ok, %d failed, p99 latency %s\n",
		len(held), hostileNofile, acceptRetries, fresh == nil, rssBefore>>10, rssPeakDuring>>10, slow413,
		len(bomb)>>10, bombRSSBefore>>10, bombPeak.Load()>>10, bombNot413.Load(), stackedNotRefused.Load(), hwm>>10, ok, fail, p99)
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
	if bombNot413.Load() > 0 || stackedNotRefused.Load() > 0 {
		t.Errorf("compression bombs: %d not refused with 413, %d stacked not refused with 415", bombNot413.Load(), stackedNotRefused.Load())
	}
	if hwm > 300<<10 {
		t.Errorf("peak RSS %d MiB, want under 300 MiB through the claimed-size and gzip floods", hwm>>10)
	}
	if ok == 0 || fail > ok/10 {
		t.Errorf("the legitimate client: %d ok, %d failed", ok, fail)
	}

	// The server never exited, and still stops cleanly.
	alive("the run")
	hs.stop()
}

const hostileCanary = "sk-ant-api03-CANARYhostile0123456789abcdefgh"

// hostileCLI is a CLI against a fresh database whose platform Anthropic
// credential is hostileCanary (for a fake provider at providerURL), and a
// workspace token.
func hostileCLI(t *testing.T, providerURL string) (*cli, string) {
	t.Helper()
	c := newCLI(t, providerURL)
	ctx := context.Background()
	if _, errs, code := c.run(ctx, hostileCanary+"\n", "credential", "set", "--platform", "--provider", "anthropic", "--key-stdin"); code != 0 {
		t.Fatalf("credential set: %s", errs)
	}
	tok, _, _ := c.run(ctx, "", "token", "issue", "--workspace", "ws-hostile", "--project", "p", "--user", "u")
	return c, strings.TrimSpace(tok)
}

// startHostile starts bin serving with c's environment plus env.
func startHostile(t *testing.T, bin string, c *cli, env ...string) *serveProc {
	return startHostileAt(t, bin, hostileNofile, c, env...)
}

// startHostileAt is startHostile under a descriptor limit of nofile.
func startHostileAt(t *testing.T, bin string, nofile int, c *cli, env ...string) *serveProc {
	cmd := exec.Command("sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" serve`, nofile), bin)
	// A free admin port, so floods never clash with a tollgate on 8788.
	cmd.Env = append(append(os.Environ(), "TOLLGATE_ADMIN_ADDR=127.0.0.1:0"), env...)
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return mustStartServe(t, cmd)
}

// dirBytes sums the sizes of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// badTokenFlood sends well-formed unknown tokens from guessers clients on
// 127.0.0.1, as fast as each gets answers, for d; it returns the count of
// each status (-1: no answer).
func badTokenFlood(ctx context.Context, base string, guessers int, d time.Duration, seq int) map[int]int {
	var mu sync.Mutex
	statuses := map[int]int{}
	fctx, stop := context.WithTimeout(ctx, d)
	defer stop()
	var wg sync.WaitGroup
	for g := range guessers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			body := `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`
			for i := 0; fctx.Err() == nil; i++ {
				req, _ := http.NewRequestWithContext(fctx, "POST", base+"/anthropic/v1/messages", strings.NewReader(body))
				req.Header.Set("x-api-key", fmt.Sprintf("tgw_%d%02d%040d", seq, g, i))
				resp, err := client.Do(req)
				code := -1
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				mu.Lock()
				statuses[code]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return statuses
}

func readAllString(resp *http.Response) []byte {
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

func answered(statuses map[int]int) (n int) {
	for code, k := range statuses {
		if code != -1 {
			n += k
		}
	}
	return n
}

// TestHostileBadTokenFlood: guessers on 127.0.0.1 send well-formed unknown
// tokens as fast as they can. Refusals are throttled and counted, not
// recorded: over a 10 s flood alone the database, its WAL and the spool
// grow by less than 1 MiB. Then, flooded again, a legitimate client on
// 127.0.0.2 keeps working (its own records are what the disk grows by).
func TestHostileBadTokenFlood(t *testing.T) {
	bin := hostileBinary(t)
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{Keys: []string{hostileCanary}, RecordLimit: -1})
	c, tok := hostileCLI(t, fakeURL)
	ctx := context.Background()
	dbDir, spool := filepath.Dir(c.env["TOLLGATE_DB"]), c.env["TOLLGATE_SPOOL"]
	disk := func() int64 { return dirBytes(dbDir) + dirBytes(spool) }

	hs := startHostile(t, bin, c)
	const guessers, floodFor = 4, 10 * time.Second

	// 1. The flood alone, for its cost on disk, flush included (every 5 s).
	before := disk()
	alone := badTokenFlood(ctx, hs.base, guessers, floodFor, 1)
	time.Sleep(6 * time.Second)
	grown := disk() - before
	hs.alive("the bad-token flood")

	// 2. Flooded again, with a legitimate client beside it.
	lctx, stopLegit := context.WithCancel(ctx)
	lc := &legitClient{}
	var lwg sync.WaitGroup
	lwg.Add(1)
	go func() { defer lwg.Done(); lc.run(lctx, hs.base, tok) }()
	beside := badTokenFlood(ctx, hs.base, guessers, floodFor, 2)
	stopLegit()
	lwg.Wait()
	hs.alive("the second bad-token flood")
	var metrics string
	if resp, err := http.Get(hs.adminBase + "/metrics"); err == nil {
		metrics = string(readAllString(resp))
	}
	hs.stop() // flushes the writer and the refusal counts

	db, err := store.Open(ctx, c.env["TOLLGATE_DB"])
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rejected, refusalRows, refused int64
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM usage_records WHERE outcome = 'rejected'`).Scan(&rejected); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(count), 0) FROM refusals`).Scan(&refusalRows, &refused); err != nil {
		t.Fatal(err)
	}
	sent := answered(alone) + answered(beside)
	ok, fail, p99 := lc.summary()
	report := fmt.Sprintf("hostile: bad-token flood, %d guessers x %s from 127.0.0.1: %d requests (%.0f/s), statuses %v\n"+
		"hostile: disk (database + WAL + spool) grew %d KiB over it; %d usage records of refusals; %d refusal rows counting %d refusals (both floods)\n"+
		"hostile: legitimate client during a second flood (%d requests, statuses %v): %d ok, %d failed, p99 latency %s\n",
		guessers, floodFor, answered(alone), float64(answered(alone))/floodFor.Seconds(), alone, grown>>10, rejected, refusalRows, refused,
		answered(beside), beside, ok, fail, p99)
	fmt.Print(report)
	t.Log(report)

	if grown >= 1<<20 {
		t.Errorf("disk grew %d KiB during a 10 s bad-token flood, want < 1 MiB", grown>>10)
	}
	if rejected != 0 {
		t.Errorf("%d usage records for refused authentications", rejected)
	}
	if !strings.Contains(metrics, `tollgate_auth_refusals_total{`) || !strings.Contains(metrics, `tollgate_refusal_reason="throttled"`) {
		t.Errorf("/metrics has no throttled series of tollgate_auth_refusals_total")
	}
	if alone[http.StatusTooManyRequests] == 0 || refused < int64(sent) {
		t.Errorf("the flood was not throttled and counted: statuses %v, %d counted of %d answered", alone, refused, sent)
	}
	if ok == 0 || fail > 0 {
		t.Errorf("the legitimate client: %d ok, %d failed", ok, fail)
	}
}
