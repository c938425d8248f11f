//go:build cluster

// The harness of `make test-cluster`: a PostgreSQL database of the test's
// own, one login role per replica (so one replica can be cut off), real
// `tollgate serve` processes, the fake provider as a process, and a load
// client that keeps what every request got.

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

const (
	clusterReplicas = 3
	// clusterStaleness is every replica's TOLLGATE_MAX_STALENESS: shorter
	// than the 5 s default, to keep the partition and outage cases short.
	clusterStaleness   = 3 * time.Second
	clusterPlatformKey = "sk-ant-api03-CLUSTERplatform0123456789abcdef"
	// requestTimeout bounds one proxied request (streams included).
	requestTimeout = 30 * time.Second
	// pollPause is the pause between two requests of a propagation poll:
	// the resolution of its figures, at a load the shared machine bears.
	pollPause = 2 * time.Millisecond
)

// clusterPostgres is the server DSN to run against, or skips the test.
func clusterPostgres(t *testing.T) string {
	dsn := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if dsn == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES is not set (make test-cluster sets it)")
	}
	return dsn
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// pgFixture is an owner role and one login role per replica, each a member
// of the owner and acting as it (ALTER ROLE ... SET role), so every replica
// can use the tables any one of them created; all dropped when the test
// ends.
type pgFixture struct {
	t      *testing.T
	base   *url.URL
	admin  *sql.DB
	prefix string
	owner  string
	roles  []string
}

func newPGFixture(t *testing.T, replicas int) *pgFixture {
	t.Helper()
	base := clusterPostgres(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("TOLLGATE_TEST_POSTGRES: %v", err)
	}
	admin, err := store.Open(context.Background(), base)
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	f := &pgFixture{t: t, base: u, admin: admin.DB, prefix: "tg_" + randHex(4)}
	f.owner = f.prefix + "_owner"
	t.Cleanup(func() {
		for _, r := range append(slices.Clone(f.roles), f.owner) {
			_, _ = admin.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1`, r)
			if _, err := admin.Exec(`DROP ROLE IF EXISTS ` + r); err != nil {
				t.Logf("cleanup: drop role %s: %v", r, err)
			}
		}
		admin.Close()
	})
	f.exec(`CREATE ROLE ` + f.owner + ` NOLOGIN`)
	for i := range replicas {
		r := fmt.Sprintf("%s_r%d", f.prefix, i)
		f.roles = append(f.roles, r)
		f.exec(`CREATE ROLE ` + r + ` LOGIN IN ROLE ` + f.owner)
		f.exec(`ALTER ROLE ` + r + ` SET role = '` + f.owner + `'`)
	}
	return f
}

func (f *pgFixture) exec(q string, args ...any) {
	f.t.Helper()
	if _, err := f.admin.Exec(q, args...); err != nil {
		f.t.Fatalf("postgres: %s: %v", q, err)
	}
}

// newDatabase creates an empty database owned by the owner role, dropped
// when the test ends.
func (f *pgFixture) newDatabase() string {
	f.t.Helper()
	name := f.prefix + "_" + randHex(3)
	f.exec(`CREATE DATABASE ` + name + ` OWNER ` + f.owner + ` TEMPLATE template0`)
	f.t.Cleanup(func() {
		if _, err := f.admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`); err != nil {
			f.t.Logf("cleanup: drop database %s: %v", name, err)
		}
	})
	return name
}

// dsn is the URL replica i (its role) uses for db, named app in
// pg_stat_activity.
func (f *pgFixture) dsn(db string, i int, app string) string {
	u := *f.base
	u.User = url.User(f.roles[i])
	u.Path = "/" + db
	q := u.Query()
	q.Set("connect_timeout", "2")
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	return u.String()
}

// open connects to db as the fixture's administrator (for the checks).
func (f *pgFixture) open(db string) *sql.DB {
	f.t.Helper()
	u := *f.base
	u.Path = "/" + db
	s, err := store.Open(context.Background(), u.String())
	if err != nil {
		f.t.Fatalf("postgres %s: %v", db, err)
	}
	f.t.Cleanup(func() { s.Close() })
	return s.DB
}

// partition cuts replicas off the database: their roles may no longer log
// in, and their sessions end (NOLOGIN alone leaves them open).
func (f *pgFixture) partition(replicas ...int) {
	f.t.Helper()
	for _, i := range replicas {
		f.exec(`ALTER ROLE ` + f.roles[i] + ` NOLOGIN`)
		f.exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1`, f.roles[i])
	}
}

// terminate ends the sessions whose application_name is LIKE pattern and
// returns how many it ended.
func (f *pgFixture) terminate(pattern string) int {
	f.t.Helper()
	var n int
	if err := f.admin.QueryRow(`SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE $1 AND usename = ANY($2)`, pattern, f.roles).Scan(&n); err != nil {
		f.t.Fatalf("postgres: terminate %s: %v", pattern, err)
	}
	return n
}

// heal lets the replicas log in again.
func (f *pgFixture) heal(replicas ...int) {
	f.t.Helper()
	for _, i := range replicas {
		f.exec(`ALTER ROLE ` + f.roles[i] + ` LOGIN`)
	}
}

// fakeProc is cmd/fakeprovider run as a process.
type fakeProc struct {
	t   *testing.T
	url string
}

// startFake runs the fake provider with -key-tags, -client-ids and args.
func startFake(t *testing.T, args ...string) *fakeProc {
	t.Helper()
	bin := testBinary(t, "TOLLGATE_FAKEPROVIDER_BIN", "../fakeprovider")
	cmd := exec.Command(bin, append([]string{"-key-tags", "-client-ids", "-grace", "1s"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// It prints its address as tollgate does, so the same reader serves.
	sp, err := startListening(t, cmd, false)
	if err == nil {
		err = sp.ready()
	}
	if err != nil {
		t.Fatalf("fakeprovider: %v", err)
	}
	return &fakeProc{t: t, url: sp.base}
}

func (p *fakeProc) counters() upstreamtest.Counters {
	p.t.Helper()
	var c upstreamtest.Counters
	getJSON(p.t, p.url+upstreamtest.CountersPath, &c)
	return c
}

// fakeIDCount is what the fake saw of one X-Client-Request-Id.
type fakeIDCount struct{ Seen, Answered int }

func (p *fakeProc) clientIDs() map[string]fakeIDCount {
	p.t.Helper()
	m := map[string]fakeIDCount{}
	getJSON(p.t, p.url+"/_fake/client-ids", &m)
	return m
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}

// keyTag is the fake's -key-tags tag of key: cmd/fakeprovider.KeyTag,
// which a command's package cannot export to this one.
func keyTag(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:4])
}

// cluster is clusterReplicas tollgate replicas on one database.
type cluster struct {
	t    *testing.T
	pg   *pgFixture
	db   string
	bin  string
	fake *fakeProc
	env  []string

	mu     sync.Mutex
	reps   []*serveProc
	spools []string

	client *http.Client
}

// clusterBinary is the tollgate under test (make builds bin/tollgate).
func clusterBinary(t *testing.T) string {
	return testBinary(t, "TOLLGATE_CLUSTER_BIN", ".")
}

// clusterEnv is what every replica and CLI run shares: the registry
// pointing at the fake, the master key, the admin token, free ports, the
// freshness bound; no auth-failure limits, since the propagation polls
// meet many refusals from one address by design.
func clusterEnv(t *testing.T, fakeURL string, extra ...string) []string {
	env := os.Environ()
	for k, v := range newCLI(t, fakeURL).env {
		env = append(env, k+"="+v)
	}
	return append(env, append([]string{
		"TOLLGATE_LOG_LEVEL=warn",
		"TOLLGATE_MAX_STALENESS=" + clusterStaleness.String(),
		"TOLLGATE_AUTH_FAILURE_BURST=-1",
		"TOLLGATE_AUTH_FAILURES_GLOBAL=-1",
		"TOLLGATE_SHUTDOWN_GRACE=5s",
	}, extra...)...)
}

// newCluster starts the fake (with fakeArgs) and clusterReplicas replicas
// on a new database, and sets the platform Anthropic key through r0.
func newCluster(t *testing.T, env []string, fakeArgs ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, pg: newPGFixture(t, clusterReplicas), bin: clusterBinary(t), fake: startFake(t, fakeArgs...)}
	c.db = c.pg.newDatabase()
	c.env = clusterEnv(t, c.fake.url, env...)
	c.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}}
	t.Cleanup(c.client.CloseIdleConnections)
	c.reps = make([]*serveProc, clusterReplicas)
	for range clusterReplicas {
		c.spools = append(c.spools, filepath.Join(t.TempDir(), "spool"))
	}
	// The first one migrates alone: the cold-start race is a case of its
	// own, not every case's precondition.
	c.start(0)
	for i := 1; i < clusterReplicas; i++ {
		c.start(i)
	}
	c.admin(0, "PUT", "/platform-keys/anthropic", map[string]string{"key": clusterPlatformKey}, nil)
	return c
}

// serveCmd is replica i's `tollgate serve` on db with spool.
func serveCmd(bin string, env []string, dsn, spool string) *exec.Cmd {
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(slices.Clone(env), "TOLLGATE_DB="+dsn, "TOLLGATE_SPOOL="+spool)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// start (re)starts replica i on its spool.
func (c *cluster) start(i int) {
	c.t.Helper()
	sp := mustStartServe(c.t, serveCmd(c.bin, c.env, c.pg.dsn(c.db, i, fmt.Sprintf("tollgate-r%d", i)), c.spools[i]))
	c.mu.Lock()
	c.reps[i] = sp
	c.mu.Unlock()
}

func (c *cluster) rep(i int) *serveProc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reps[i]
}

// stopAll stops every replica cleanly, which flushes their writers.
func (c *cluster) stopAll() {
	var wg sync.WaitGroup
	for i := range clusterReplicas {
		wg.Go(func() { c.rep(i).stop() })
	}
	wg.Wait()
}

// adminTry calls the admin API of replica i and returns the status and
// body, failing the test only when there is no answer.
func (c *cluster) adminTry(i int, method, path string, in any) (int, []byte) {
	c.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, c.rep(i).adminBase+"/admin/v1"+path, body)
	req.Header.Set("Authorization", "Bearer adm")
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Fatalf("admin %s %s on r%d: %v", method, path, i, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// admin calls the admin API of replica i, decoding the answer into out;
// anything but 2xx fails the test.
func (c *cluster) admin(i int, method, path string, in, out any) {
	c.t.Helper()
	status, b := c.adminTry(i, method, path, in)
	if status/100 != 2 {
		c.t.Fatalf("admin %s %s on r%d: %d %s", method, path, i, status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("admin %s %s on r%d: %v: %s", method, path, i, err, b)
		}
	}
}

// issueToken issues a workspace token through replica i and returns it
// and its id.
func (c *cluster) issueToken(i int, workspace, project string) (string, string) {
	c.t.Helper()
	var out struct {
		Token string `json:"token"`
		Info  struct {
			ID string `json:"id"`
		} `json:"info"`
	}
	c.admin(i, "POST", "/tokens", map[string]string{"workspace": workspace, "project": project, "user": "u"}, &out)
	return out.Token, out.Info.ID
}

// answer is what one proxied request got.
type answer struct {
	replica int
	sent    time.Time
	took    time.Duration
	// status is 0 when there was no answer (err says why).
	status     int
	retryAfter string
	// reqID is tollgate's X-Tollgate-Request-Id, tag the fake's key tag.
	reqID, tag string
	clientID   string
	// complete: the whole body arrived (for a stream, its message_stop).
	complete bool
	err      error
}

// inferOpts shape one request.
type inferOpts struct {
	stream   bool
	clientID string
}

// infer sends one Anthropic Messages request with tok to replica i.
func (c *cluster) infer(ctx context.Context, i int, tok string, o inferOpts) answer {
	a := answer{replica: i, sent: time.Now(), clientID: o.clientID}
	body := `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`
	if o.stream {
		body = `{"model":"claude-sonnet-4-5","max_tokens":8,"stream":true,"messages":[]}`
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", c.rep(i).base+"/anthropic/v1/messages", strings.NewReader(body))
	req.Header.Set("x-api-key", tok)
	req.Header.Set("Content-Type", "application/json")
	if o.clientID != "" {
		req.Header.Set("X-Client-Request-Id", o.clientID)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		a.err, a.took = err, time.Since(a.sent)
		return a
	}
	a.status, a.retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
	a.reqID = resp.Header.Get("X-Tollgate-Request-Id")
	if rid := resp.Header.Get("Request-Id"); rid != "" {
		a.tag = rid[strings.LastIndexByte(rid, '-')+1:]
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	a.took = time.Since(a.sent)
	a.err = err
	a.complete = err == nil && resp.StatusCode == http.StatusOK && (!o.stream || bytes.Contains(b, []byte("message_stop")))
	return a
}

// waitFor sends requests with tok to replica i every pollPause until want
// holds for the answer, for at most within; it returns how long after
// since the answering request came back, and whether want ever held. It
// also returns the statuses seen before, other than 200.
func (c *cluster) waitFor(i int, tok string, since time.Time, within time.Duration, want func(answer) bool) (time.Duration, bool, []int) {
	var odd []int
	for time.Since(since) < within {
		a := c.infer(context.Background(), i, tok, inferOpts{})
		if want(a) {
			return time.Since(since), true, odd
		}
		if a.status != http.StatusOK && len(odd) < 10 {
			odd = append(odd, a.status)
		}
		time.Sleep(pollPause)
	}
	return time.Since(since), false, odd
}

// load is a bounded load client spread over the replicas.
type load struct {
	mu      sync.Mutex
	answers []answer
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

// startLoad runs workers clients, each sending a request at a time with
// tok, round robin over the replicas, pause apart, until the returned
// load is finished.
func (c *cluster) startLoad(tok string, workers int, pause time.Duration, stream bool) *load {
	ctx, stop := context.WithCancel(context.Background())
	l := &load{stop: stop}
	for w := range workers {
		l.wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				i := (w + n) % clusterReplicas
				a := c.infer(context.Background(), i, tok, inferOpts{stream: stream, clientID: fmt.Sprintf("w%d-%d", w, n)})
				l.mu.Lock()
				l.answers = append(l.answers, a)
				l.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(pause):
				}
			}
		})
	}
	return l
}

// finish stops the load, lets the requests in flight end, and returns
// every answer.
func (l *load) finish() []answer {
	l.stop()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.answers)
}

// statusCounts counts answers by status (0: no answer).
func statusCounts(as []answer) map[int]int {
	m := map[int]int{}
	for _, a := range as {
		m[a.status]++
	}
	return m
}

// percentiles are p50, p99 and the max of ds (zero for none).
func percentiles(ds []time.Duration) (p50, p99, top time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return at(0.50), at(0.99), s[len(s)-1]
}

// fmtPct formats percentiles as "p50 X p99 Y max Z".
func fmtPct(ds []time.Duration) string {
	p50, p99, top := percentiles(ds)
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return fmt.Sprintf("p50 %v p99 %v max %v (n=%d)", r(p50), r(p99), r(top), len(ds))
}

// readyz is replica i's /readyz on the proxy port, or with admin on the
// admin port.
func (c *cluster) readyz(i int, admin bool) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	base := c.rep(i).base
	if admin {
		base = c.rep(i).adminBase
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/readyz", nil)
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// recordCount counts the usage records of requests that reached the
// provider (refusals before any upstream call are outcome "rejected").
func recordCount(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM usage_records WHERE outcome <> 'rejected'`).Scan(&n); err != nil {
		t.Fatalf("count usage records: %v", err)
	}
	return n
}
