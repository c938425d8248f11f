//go:build cluster

// The harness of `make test-governance`: the cluster of `make
// test-cluster` (one PostgreSQL database, real `tollgate serve` replicas,
// the fake provider as a process), with one fake per replica so each
// replica's answers report their own output size, a registry that passes
// the fake's X-Fake-* pacing and fault headers through, and the admin API
// calls and database reads the governance proofs check against.

package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/internal/testkit"
)

const (
	// govLease and govHeartbeat are every replica's budget lease settings:
	// short, so the kill -9 case ends within seconds.
	govLease     = 3 * time.Second
	govHeartbeat = 500 * time.Millisecond
	// govModel is priced in the default table, Anthropic Messages.
	govModel = "claude-sonnet-4-5"
	// govFakeInput is the input every fake reports: all uncached, far below
	// any request body's size, so the byte-bound input ceiling holds.
	govFakeInput = 40
)

// govFakeArgs are the fake's flags for a usage of govFakeInput uncached
// input tokens and output tokens, nothing cached.
func govFakeArgs(output int) []string {
	return []string{"-input", fmt.Sprint(govFakeInput), "-cache-read", "0", "-cache-write-5m", "0", "-cache-write-1h", "0",
		"-output", fmt.Sprint(output), "-reasoning", "0"}
}

// govRegistry writes harnesses.yaml with every provider at fakeURL and
// the fake's X-Fake-* headers forwarded, and returns its path.
func govRegistry(t *testing.T, fakeURL string) string {
	t.Helper()
	reg, err := os.ReadFile("../../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	y := string(reg)
	for _, u := range []string{"https://api.anthropic.com", "https://api.openai.com", "https://generativelanguage.googleapis.com"} {
		y = strings.ReplaceAll(y, "base_url: "+u+"\n", "base_url: "+fakeURL+"\n    forward_headers: [X-Fake-Fault, X-Fake-Gap, X-Fake-Events, X-Fake-TTFB]\n")
	}
	p := filepath.Join(t.TempDir(), "harnesses.yaml")
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// govCluster is the cluster with one fake provider per replica.
type govCluster struct {
	*cluster
	fakes []*fakeProc
	envs  [][]string
	// sql is the test's own connection to the replicas' database.
	sql *sql.DB
}

// govOpts shape a govCluster: env for every replica, and each replica's
// fake's flags.
type govOpts struct {
	env      []string
	fakeArgs func(replica int) []string
}

func newGovCluster(t *testing.T, o govOpts) *govCluster {
	t.Helper()
	g := &govCluster{cluster: &cluster{t: t, pg: newPGFixture(t, clusterReplicas), bin: clusterBinary(t)}}
	g.db = g.pg.newDatabase()
	env := append([]string{
		"TOLLGATE_BUDGET_LEASE=" + govLease.String(),
		"TOLLGATE_BUDGET_HEARTBEAT=" + govHeartbeat.String(),
	}, o.env...)
	for i := range clusterReplicas {
		var args []string
		if o.fakeArgs != nil {
			args = o.fakeArgs(i)
		}
		f := startFake(t, args...)
		g.fakes = append(g.fakes, f)
		e := clusterEnv(t, f.url, append([]string{"TOLLGATE_HARNESSES=" + govRegistry(t, f.url)}, env...)...)
		g.envs = append(g.envs, e)
		g.spools = append(g.spools, filepath.Join(t.TempDir(), "spool"))
	}
	g.fake, g.env = g.fakes[0], g.envs[0]
	g.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 400, IdleConnTimeout: 30 * time.Second}}
	t.Cleanup(g.client.CloseIdleConnections)
	g.reps = make([]*serveProc, clusterReplicas)
	g.start(0)
	for i := 1; i < clusterReplicas; i++ {
		g.start(i)
	}
	g.admin(0, "PUT", "/platform-keys/anthropic", map[string]string{"key": clusterPlatformKey}, nil)
	g.sql = g.pg.open(g.db)
	return g
}

// start (re)starts replica i on its spool, with its own fake.
func (g *govCluster) start(i int) {
	g.t.Helper()
	sp := mustStartServe(g.t, serveCmd(g.bin, g.envs[i], g.pg.dsn(g.db, i, fmt.Sprintf("tollgate-r%d", i)), g.spools[i]))
	g.mu.Lock()
	g.reps[i] = sp
	g.mu.Unlock()
}

// upstreamCalls sums the requests every fake saw.
func (g *govCluster) upstreamCalls() int64 {
	var n int64
	for _, f := range g.fakes {
		n += f.counters().Requests
	}
	return n
}

// seenIDs counts the client request ids with prefix that reached any
// fake.
func (g *govCluster) seenIDs(prefix string) int {
	n := 0
	for _, f := range g.fakes {
		for id, c := range f.clientIDs() {
			if strings.HasPrefix(id, prefix) {
				n += c.Seen
			}
		}
	}
	return n
}

// createPolicy POSTs a budget ("budgets", answer key "budget") or a limit
// ("limits", "limit") through replica i and returns its id. Any other
// answer fails the test: a missing route must not pass as a skip.
func (g *govCluster) createPolicy(i int, kind string, in map[string]any) string {
	g.t.Helper()
	code, b := g.adminTry(i, "POST", "/"+kind, in)
	if code != http.StatusCreated && code != http.StatusOK {
		g.t.Fatalf("POST /admin/v1/%s %v on r%d: %d %s", kind, in, i, code, b)
	}
	var out map[string]struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		g.t.Fatalf("POST /admin/v1/%s: %v: %s", kind, err, b)
	}
	id := out[strings.TrimSuffix(kind, "s")].ID
	if id == "" {
		g.t.Fatalf("POST /admin/v1/%s: no id in %s", kind, b)
	}
	return id
}

// govScope is who a token is for: the query of the effective view.
type govScope struct{ project, user, workspace string }

func (s govScope) query() string {
	return url.Values{"project": {s.project}, "user": {s.user}, "workspace": {s.workspace}}.Encode()
}

// issue issues a token for s through replica 0.
func (g *govCluster) issue(s govScope) string {
	g.t.Helper()
	var out struct {
		Token string `json:"token"`
	}
	g.admin(0, "POST", "/tokens", map[string]string{"workspace": s.workspace, "project": s.project, "user": s.user}, &out)
	return out.Token
}

// govHeadroom is one budget's state from the effective view.
type govHeadroom struct {
	Spent    int64 `json:"spent"`
	Reserved int64 `json:"reserved"`
	Allotted int64 `json:"allotted"`
	Limit    int64 `json:"limit"`
}

// govPolicy is one entry of the effective view: a policy's kind and id,
// and a budget's headroom.
type govPolicy struct {
	kind, id string
	headroom *govHeadroom
}

// effective is replica i's GET /admin/v1/budgets/effective for scope s.
func (g *govCluster) effective(i int, s govScope) []govPolicy {
	g.t.Helper()
	code, b := g.adminTry(i, "GET", "/budgets/effective?"+s.query(), nil)
	if code != http.StatusOK {
		g.t.Fatalf("GET /admin/v1/budgets/effective?%s on r%d: %d %s", s.query(), i, code, b)
	}
	type ided struct {
		ID string `json:"id"`
	}
	var out struct {
		Policies []struct {
			Kind     string       `json:"kind"`
			Budget   *ided        `json:"budget"`
			Limit    *ided        `json:"limit"`
			Rule     *ided        `json:"rule"`
			Headroom *govHeadroom `json:"headroom"`
		} `json:"policies"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		g.t.Fatalf("effective view: %v: %s", err, b)
	}
	var ps []govPolicy
	for _, p := range out.Policies {
		gp := govPolicy{kind: p.Kind, headroom: p.Headroom}
		for _, x := range []*ided{p.Budget, p.Limit, p.Rule} {
			if x != nil {
				gp.id = x.ID
			}
		}
		ps = append(ps, gp)
	}
	return ps
}

// headroom is budget id's spent and reserved through replica i's
// effective view for scope s.
func (g *govCluster) headroom(i int, s govScope, id string) govHeadroom {
	g.t.Helper()
	for _, p := range g.effective(i, s) {
		if p.id == id && p.headroom != nil {
			return *p.headroom
		}
	}
	g.t.Fatalf("the effective view of r%d for %s has no headroom for budget %s", i, s.query(), id)
	return govHeadroom{}
}

// waitVisible waits until every replica's effective view for s lists
// policy id: a policy written through one replica reaches the others by
// notification or poll, and a proof must not race that propagation.
func (g *govCluster) waitVisible(s govScope, id string) {
	g.t.Helper()
	for i := range clusterReplicas {
		ok := testkit.Poll(5*time.Second, 20*time.Millisecond, func() bool {
			for _, p := range g.effective(i, s) {
				if p.id == id {
					return true
				}
			}
			return false
		})
		if !ok {
			g.t.Fatalf("policy %s is not in r%d's effective view for %s within 5 s", id, i, s.query())
		}
	}
}

// waitReleased polls budget id until nothing is reserved, for at most
// within; it returns the last state and how long it took.
func (g *govCluster) waitReleased(i int, s govScope, id string, within time.Duration) (govHeadroom, time.Duration, bool) {
	t0 := time.Now()
	var h govHeadroom
	ok := testkit.Poll(within, 50*time.Millisecond, func() bool {
		h = g.headroom(i, s, id)
		return h.Reserved == 0
	})
	return h, time.Since(t0), ok
}

// govReq is one proxied request.
type govReq struct {
	body     string
	stream   bool
	clientID string
	// events, gap and fault become X-Fake-Events, X-Fake-Gap, X-Fake-Fault.
	events int
	gap    time.Duration
	fault  string
}

// govAnswer is what it got.
type govAnswer struct {
	replica    int
	sent       time.Time
	status     int
	retryAfter string
	reqID      string
	body       string
	complete   bool
	err        error
}

// messagesBody is an Anthropic Messages request for govModel of a fixed
// size (so every request has the same ceiling) with maxTokens.
func messagesBody(maxTokens int, stream bool) string {
	return fmt.Sprintf(`{"model":%q,"max_tokens":%d,"stream":%v,"messages":[{"role":"user","content":"governance proof: count to ten, slowly."}]}`, govModel, maxTokens, stream)
}

// send sends r with tok to replica i.
func (g *govCluster) send(ctx context.Context, i int, tok string, r govReq) govAnswer {
	a := govAnswer{replica: i, sent: time.Now()}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", g.rep(i).base+"/anthropic/v1/messages", strings.NewReader(r.body))
	req.Header.Set("x-api-key", tok)
	req.Header.Set("Content-Type", "application/json")
	if r.clientID != "" {
		req.Header.Set("X-Client-Request-Id", r.clientID)
	}
	if r.events > 0 {
		req.Header.Set("X-Fake-Events", fmt.Sprint(r.events))
	}
	if r.gap > 0 {
		req.Header.Set("X-Fake-Gap", r.gap.String())
	}
	if r.fault != "" {
		req.Header.Set("X-Fake-Fault", r.fault)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		a.err = err
		return a
	}
	a.status, a.retryAfter, a.reqID = resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("X-Tollgate-Request-Id")
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	a.err = err
	if resp.StatusCode != http.StatusOK {
		a.body = string(b)
	}
	a.complete = err == nil && resp.StatusCode == http.StatusOK && (!r.stream || bytes.Contains(b, []byte("message_stop")))
	return a
}

// govRecord is the part of a usage record the budget checks read.
type govRecord struct {
	id, outcome, governance string
	status                  int
	cost                    sql.NullInt64
	reservedMicroUSD        int64
	// tokens is input (every bucket) + output; hasUsage says usage is
	// known.
	tokens   int64
	hasUsage bool
}

// records reads the usage records of one project.
func (g *govCluster) records(project string) []govRecord {
	g.t.Helper()
	// Before the ledger's migration (h2) the governance columns are absent:
	// the harness check still runs, reading them as empty.
	governance, reserved := "''", "0"
	if g.hasColumn("usage_records", "governance") {
		governance = "COALESCE(governance, '')"
	}
	if g.hasColumn("usage_records", "reserved_micro_usd") {
		reserved = "COALESCE(reserved_micro_usd, 0)"
	}
	rows, err := g.sql.Query(`SELECT request_id, outcome, `+governance+`, status, cost_micro_usd, `+reserved+`,
		COALESCE(input_uncached, 0) + COALESCE(cache_read, 0) + COALESCE(cache_write_5m, 0) + COALESCE(cache_write_1h, 0) + COALESCE(input_other, 0) + COALESCE(output_tokens, 0),
		input_uncached IS NOT NULL OR output_tokens IS NOT NULL
		FROM usage_records WHERE project = $1`, project)
	if err != nil {
		g.t.Fatalf("usage records of %s: %v", project, err)
	}
	defer rows.Close()
	var out []govRecord
	for rows.Next() {
		var r govRecord
		if err := rows.Scan(&r.id, &r.outcome, &r.governance, &r.status, &r.cost, &r.reservedMicroUSD, &r.tokens, &r.hasUsage); err != nil {
			g.t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		g.t.Fatal(err)
	}
	return out
}

// hasColumn reports whether table has column.
func (g *govCluster) hasColumn(table, column string) bool {
	g.t.Helper()
	var n int
	if err := g.sql.QueryRow(`SELECT COUNT(*) FROM information_schema.columns WHERE table_name = $1 AND column_name = $2`, table, column).Scan(&n); err != nil {
		g.t.Fatal(err)
	}
	return n > 0
}

// settlement is what the contract's settlement rule charges a budget of
// metric for r, given what it reserved in the budget's unit: the cost or
// tokens when known; 0 when nothing can have been billed; else the
// reservation.
func (r govRecord) settlement(metric string, reserved int64) int64 {
	if r.governance != "" {
		return 0
	}
	if metric == "cost" && r.cost.Valid {
		return r.cost.Int64
	}
	if metric == "tokens" && r.hasUsage {
		return r.tokens
	}
	if !r.hasUsage && (r.outcome == "rejected" || r.outcome == "upstream_error" || r.outcome == "unreachable") {
		return 0
	}
	return reserved
}

// waitRecords polls until project has n usage records.
func (g *govCluster) waitRecords(project string, n int, within time.Duration) bool {
	return testkit.Poll(within, 100*time.Millisecond, func() bool {
		var got int
		if err := g.sql.QueryRow(`SELECT COUNT(*) FROM usage_records WHERE project = $1`, project).Scan(&got); err != nil {
			g.t.Fatal(err)
		}
		return got >= n
	})
}

// govRedis is the real Redis to run against (TOLLGATE_TEST_REDIS), or
// skips the test.
func govRedis(t *testing.T) string {
	u := os.Getenv("TOLLGATE_TEST_REDIS")
	if u == "" {
		t.Skip("TOLLGATE_TEST_REDIS is not set (make test-governance sets it)")
	}
	return u
}

// redisPrefix is a key prefix of the test's own; its keys are deleted
// when the test ends.
func redisPrefix(t *testing.T, redisURL string) string {
	prefix := "tgtest:" + randHex(4) + ":"
	t.Cleanup(func() {
		opt, err := redis.ParseURL(redisURL)
		if err != nil {
			t.Logf("cleanup: redis url: %v", err)
			return
		}
		rc := redis.NewClient(opt)
		defer rc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var n int
		iter := rc.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			if err := rc.Del(ctx, iter.Val()).Err(); err == nil {
				n++
			}
		}
		if err := iter.Err(); err != nil {
			t.Logf("cleanup: redis scan %s*: %v", prefix, err)
		}
	})
	return prefix
}

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
