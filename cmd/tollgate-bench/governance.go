package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

// S1g is S1 with governance on: a second tollgate, built and loaded like
// S1's, whose database holds a soft cost budget on the bench project, an
// rpm/tpm limit on the bench workspace shared through Redis, and a model
// allow rule for the bench model. Every request then passes all three
// checks (model policy, one rate-limit acquisition in Redis, a budget
// reservation settled with its usage record), and none may be refused.
// Each repetition drives governance off (S1's tollgate) and on back to
// back, alternating which goes first, so a drift of the machine hits both;
// the figures are on ÷ off and on − off per repetition.
const (
	govTarget = "tollgate-gov"
	// The policies are far above anything a run can reach, so they are
	// checked on every request and refuse none: about 10⁶ requests at
	// the fake's usage cost a few hundred dollars, and a reservation that
	// is never settled is charged at its ceiling (about $1.28 for gpt-5
	// without max_tokens).
	govBudgetUSD = "10000000"
	govRPM       = "1000000000"
	govTPM       = "1000000000000"
	govModel     = "gpt-5" // the model of chatBody and streamBody
	// probeModel is refused by the allow rule: the probe proves the rule
	// is in force before any load.
	probeModel = "gpt-4.1"
)

// govRun is what S1g set up and observed.
type govRun struct {
	target   target
	dir      string
	redisURL string
	// ownRedis says the bench started redis-server itself inside the
	// private network namespace.
	ownRedis bool
	redis    *proc
	prefix   string
	policies []string // the CLI commands that created the policies

	probeStatus  int
	probeBody    string
	probeReached int64 // requests the fake saw for the probe (want 0)

	redisCmds   map[string]float64 // per measured point: Redis commands per request
	keysAfter   int                // keys under prefix after the load
	keysDeleted int

	usage  *usageCheck
	ledger ledgerCheck

	skipped  string
	failures []string
}

// ledgerCheck is what the governance database says after the run.
type ledgerCheck struct {
	Rows           int            `json:"usage_rows"`
	Reserved       int            `json:"rows_with_reservation"`
	Refused        map[string]int `json:"refused_by_kind"`
	Reservations   map[string]int `json:"reservations_by_state"`
	SpentMicroUSD  int64          `json:"spent_micro_usd"`
	HeldMicroUSD   int64          `json:"reserved_micro_usd_left"`
	ReservedPerReq float64        `json:"reserved_micro_usd_per_request"`
	Err            string         `json:"error,omitempty"`
}

func (b *bench) s1gClosed() string { return fmt.Sprintf("closed loop, %d conns", b.cfg.S1Conns) }
func (b *bench) s1gOpen() string   { return fmt.Sprintf("open loop, %d rps", b.cfg.S1gRate) }

// s1g runs the scenario. A failure of its own is recorded, fails the
// run at the end and leaves the other scenarios to run.
func (b *bench) s1g(ctx context.Context) error {
	g := &govRun{redisURL: b.cfg.RedisURL, redisCmds: map[string]float64{}}
	b.gov = g
	err := b.s1gRun(ctx, g)
	if err != nil && ctx.Err() == nil {
		g.failures = append(g.failures, err.Error())
		b.note("S1g FAILED: %v", err)
		return nil
	}
	return err
}

func (b *bench) s1gRun(ctx context.Context, g *govRun) error {
	proxyCPU, loadCPU, procs := b.cpus()
	logs := filepath.Join(b.work, "logs")
	if err := b.govRedis(ctx, g, loadCPU, logs); err != nil {
		g.skipped = err.Error()
		b.note("S1g skipped: %s", g.skipped)
		return nil
	}
	defer func() {
		if g.redis != nil {
			g.redis.stop(5 * time.Second)
		}
	}()
	var p [6]byte
	_, _ = rand.Read(p[:])
	g.prefix = "tgbench-" + hex.EncodeToString(p[:]) + ":"
	// Runs after tollgate stopped, on every path: a shared Redis keeps
	// nothing of the run.
	cleaned := false
	defer func() {
		if cleaned {
			return
		}
		if rc, err := dialRedis(context.WithoutCancel(ctx), g.redisURL); err == nil {
			_, _ = rc.deleteKeys(g.prefix)
			rc.close()
		}
	}()
	dir, env, tok, err := b.setupTollgate(ctx, govTarget)
	if err != nil {
		return err
	}
	g.dir = dir
	env = append(env, "TOLLGATE_REDIS_URL="+g.redisURL, "TOLLGATE_REDIS_PREFIX="+g.prefix)
	// Created before tollgate starts, so its first policy load has them.
	for _, args := range [][]string{
		{"budget", "set", "--project", "bench", "--cost", govBudgetUSD, "--window", "month", "--mode", "soft"},
		{"limit", "set", "--workspace", "bench", "--rpm", govRPM, "--tpm", govTPM},
		{"models", "allow", "--project", "bench", govModel},
	} {
		out, err := b.cli(ctx, env, "", args...)
		if err != nil {
			return fmt.Errorf("creating the S1g policies: %w", err)
		}
		g.policies = append(g.policies, "tollgate "+strings.Join(args, " "))
		b.logf("  S1g policy: tollgate %s → %s", strings.Join(args, " "), firstLine(out))
	}
	g.target = target{name: govTarget, path: "/openai/v1/chat/completions", auth: "Bearer " + tok,
		launch: func(ctx context.Context) (*proc, error) {
			return startProc(ctx, logs, govTarget, proxyCPU, procs, env, filepath.Join(b.bin, "tollgate"), "serve")
		}}
	pr, err := g.target.launch(ctx)
	if err != nil {
		return err
	}
	g.target.proc, g.target.url = pr, pr.URL+g.target.path
	b.totals[govTarget] = &tally{}
	stopped := false
	defer func() {
		if !stopped {
			pr.stop(stopBound)
		}
	}()
	if err := b.govProbe(ctx, g); err != nil {
		return err
	}

	rc, err := dialRedis(ctx, g.redisURL)
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	defer rc.close()
	off := b.targets[2]
	b.logf("S1g: governance off against on (budget, Redis rate limit, model rule), %s and %s, %s per point, %d reps; Redis %s",
		b.s1gClosed(), b.s1gOpen(), b.cfg.Duration, b.cfg.Reps, g.redisWhere())
	cmds := map[string][]float64{}
	for rep := 1; rep <= b.cfg.Reps; rep++ {
		order := []target{off, g.target}
		if rep%2 == 0 {
			order[0], order[1] = order[1], order[0]
		}
		for _, tg := range order {
			b.load(tg, func() *tally { return closedLoop(ctx, tg, b.chat, b.cfg.S1Conns, b.cfg.Warmup, b.refBody) })
			b.govMeasure(rc, g, cmds, b.s1gClosed(), rep, tg, func() *tally {
				return closedLoop(ctx, tg, b.chat, b.cfg.S1Conns, b.cfg.Duration, b.refBody)
			})
		}
		for _, tg := range order {
			client := newHTTPClient(4096)
			b.load(tg, func() *tally {
				return openLoop(ctx, client, tg, b.chat, http.Header{}, b.cfg.S1gRate, b.cfg.Warmup, b.refBody)
			})
			b.govMeasure(rc, g, cmds, b.s1gOpen(), rep, tg, func() *tally {
				return openLoop(ctx, client, tg, b.chat, http.Header{}, b.cfg.S1gRate, b.cfg.Duration, b.refBody)
			})
			client.CloseIdleConnections()
		}
	}
	for pt, v := range cmds {
		g.redisCmds[pt] = summarize(v).Median
	}
	if ks, err := rc.keys(g.prefix); err == nil {
		g.keysAfter = len(ks)
	} else {
		b.note("S1g: listing Redis keys under %s: %v", g.prefix, err)
	}

	// SIGTERM flushes the spool; only then are the usage records and the
	// settlements complete.
	stopped = true
	if !pr.stop(stopBound) {
		b.uncleanStops++
		b.note("%s did not exit within %s of SIGTERM and was killed", govTarget, stopBound)
	}
	if n, err := rc.deleteKeys(g.prefix); err != nil {
		b.note("S1g: deleting Redis keys under %s: %v", g.prefix, err)
	} else {
		g.keysDeleted, cleaned = n, true
	}
	db := filepath.Join(g.dir, "tollgate.db")
	if g.usage, err = checkUsage(ctx, db, filepath.Join(g.dir, "spool"), b.refBody, b.refStream); err != nil {
		b.note("S1g usage check failed: %v", err)
	}
	g.ledger = readLedger(ctx, db)
	b.govJudge(g)
	return ctx.Err()
}

// govRedis finds the Redis S1g talks to. Inside a private network
// namespace the host's Redis is out of reach, so a loopback -redis URL is
// served by a redis-server the bench starts there.
func (b *bench) govRedis(ctx context.Context, g *govRun, cpu, logs string) error {
	u, _, err := redisAddr(g.redisURL)
	if err != nil {
		return err
	}
	private := strings.HasPrefix(b.netns, "private")
	if private && b.cfg.RedisSrv != "off" {
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("-redis %s is not on loopback, and nothing but loopback exists in the private network namespace (run with -netns off to reach it)", g.redisURL)
		}
		p, err := startRedis(ctx, logs, b.cfg.RedisSrv, cpu, g.redisURL)
		if err != nil {
			return fmt.Errorf("no Redis in the private network namespace: %v (install redis-server, or run with -netns off to use %s)", err, g.redisURL)
		}
		g.redis, g.ownRedis = p, true
		return nil
	}
	if err := pingRedis(ctx, g.redisURL); err != nil {
		where := ""
		if private {
			where = " from inside the private network namespace (-redis-server off)"
		}
		return fmt.Errorf("Redis at %s does not answer%s: %v", g.redisURL, where, err)
	}
	return nil
}

func (g *govRun) redisWhere() string {
	if g.ownRedis {
		return fmt.Sprintf("%s, a redis-server the bench started in the private namespace on the load CPU, keys under %s", g.redisURL, g.prefix)
	}
	return fmt.Sprintf("%s (shared: its command counts include other clients), keys under %s", g.redisURL, g.prefix)
}

// govProbe checks the governed tollgate once before load: the bench model
// answers exactly like the fake (a JSON answer and a stream), and a model
// outside the allow rule is refused without reaching the fake.
func (b *bench) govProbe(ctx context.Context, g *govRun) error {
	client := newHTTPClient(2)
	defer client.CloseIdleConnections()
	tg := g.target
	if err := b.answersLikeDirect(ctx, client, tg); err != nil {
		return fmt.Errorf("with its policies in force, %w", err)
	}
	f0 := b.fakeRequests()
	body, status, err := post(ctx, client, tg, []byte(strings.Replace(chatBody, `"`+govModel+`"`, `"`+probeModel+`"`, 1)))
	if err != nil {
		return fmt.Errorf("model probe: %w", err)
	}
	g.probeReached = b.fakeRequests() - f0
	g.probeStatus, g.probeBody = status, firstLine(string(body))
	if len(g.probeBody) > 200 {
		g.probeBody = g.probeBody[:200]
	}
	b.logf("  S1g probe: model %s → status %d (fake reached %d times): %s", probeModel, status, g.probeReached, g.probeBody)
	return nil
}

// govMeasure is one measured S1g point, with the Redis commands it cost
// when governance is on.
func (b *bench) govMeasure(rc *redisConn, g *govRun, cmds map[string][]float64, point string, rep int, tg target, fn func() *tally) {
	on := tg.name == govTarget
	var c0 redisCalls
	if on {
		c0, _ = rc.calls()
	}
	r, _ := b.measure("S1g", point, rep, tg, fn)
	if on {
		// The INFO that read the counters is itself a command.
		if c1, err := rc.calls(); err == nil && c0.commands > 0 && r.Requests > 0 {
			v := float64(c1.commands-c0.commands-1) / float64(r.Requests)
			r.Metrics["redis_cmds_per_req"] = v
			r.Metrics["redis_scripts_per_req"] = float64(c1.scripts-c0.scripts) / float64(r.Requests)
			cmds[point] = append(cmds[point], v)
		}
	}
	b.logf("  S1g %-22s %-12s rep %d: %7.0f req/s, p50 %.3f ms, p99 %.3f ms, CPU %.1f µs/req, CPU0 %.0f%% CPU1 %.0f%%", point, tg.name, rep,
		r.Metrics["rps"], r.Metrics["p50_ms"], r.Metrics["p99_ms"], r.Metrics["cpu_us_per_req"], r.Metrics["cpu0_busy_pct"], r.Metrics["cpu1_busy_pct"])
}

// readLedger reads, after tollgate exited, what governance recorded: a
// reservation on every forwarded request's usage record, each reservation
// settled, the budget's spend.
func readLedger(ctx context.Context, path string) ledgerCheck {
	lc := ledgerCheck{Refused: map[string]int{}, Reservations: map[string]int{}}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		lc.Err = err.Error()
		return lc
	}
	defer db.Close()
	var errs []string
	var reservedSum sql.NullInt64
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(reserved_micro_usd > 0), 0), SUM(reserved_micro_usd) FROM usage_records`).
		Scan(&lc.Rows, &lc.Reserved, &reservedSum); err != nil {
		errs = append(errs, "usage_records: "+err.Error())
	}
	if lc.Reserved > 0 {
		lc.ReservedPerReq = float64(reservedSum.Int64) / float64(lc.Reserved)
	}
	groups := []struct {
		q   string
		dst map[string]int
	}{
		{`SELECT governance, COUNT(*) FROM usage_records WHERE governance <> '' GROUP BY governance`, lc.Refused},
		// The requests that reserved directly (most are admitted from an
		// allotment and leave no row of their own); not the allotments.
		{`SELECT state, COUNT(*) FROM gov_reservations WHERE request_id NOT LIKE 'allot:%' GROUP BY state`, lc.Reservations},
	}
	for _, gq := range groups {
		rows, err := db.QueryContext(ctx, gq.q)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		for rows.Next() {
			var k string
			var n int
			if rows.Scan(&k, &n) == nil {
				gq.dst[k] = n
			}
		}
		if err := rows.Err(); err != nil {
			errs = append(errs, err.Error())
		}
		rows.Close()
	}
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(reserved), 0) FROM gov_counters`).
		Scan(&lc.SpentMicroUSD, &lc.HeldMicroUSD); err != nil {
		errs = append(errs, "gov_counters: "+err.Error())
	}
	lc.Err = strings.Join(errs, "; ")
	return lc
}

// govJudge fails S1g when governance refused anything, or did not in fact
// apply to every request: the figures would then not be governance's cost.
func (b *bench) govJudge(g *govRun) {
	fail := func(format string, a ...any) { g.failures = append(g.failures, fmt.Sprintf(format, a...)) }
	t := b.totals[govTarget]
	if t.non2xx+t.errors+t.mismatch > 0 {
		fail("%d of %d requests non-2xx, %d errors, %d bodies unlike direct's; first: %s", t.non2xx, t.requests, t.errors, t.mismatch, t.firstErr)
	}
	if got := b.fakeVia[govTarget]; got != int64(t.requests) {
		fail("the fake saw %d requests for the %d sent through %s", got, t.requests, govTarget)
	}
	if g.probeStatus < 400 || g.probeStatus > 499 || g.probeReached != 0 {
		fail("model rule not in force: a request for %s answered %d and reached the fake %d times", probeModel, g.probeStatus, g.probeReached)
	}
	lc := g.ledger
	if lc.Err != "" {
		fail("governance records unreadable: %s", lc.Err)
	} else {
		if lc.Reserved != t.requests {
			fail("%d of %d forwarded requests carry a budget reservation", lc.Reserved, t.requests)
		}
		if n := lc.Reservations["settled"]; n > t.requests || n != sumCounts(lc.Reservations) {
			fail("direct reservations by state %v, want every one settled (of %d requests; the rest came from allotments)", lc.Reservations, t.requests)
		}
		if lc.SpentMicroUSD <= 0 || lc.HeldMicroUSD != 0 {
			fail("budget counters: spent %d, still reserved %d micro-USD", lc.SpentMicroUSD, lc.HeldMicroUSD)
		}
		if n := lc.Rows - t.requests; n != 1 {
			fail("%d usage records for %d requests and one refused probe", lc.Rows, t.requests)
		}
	}
	if uc := g.usage; uc == nil {
		fail("usage records unreadable")
	} else if uc.Exact != t.requests {
		fail("%d usage records exactly equal to the fake's usage for %d admitted requests (first other: %s)", uc.Exact, t.requests, uc.FirstBad)
	}
	if g.keysAfter == 0 {
		fail("no Redis key under %s after the load: the rate limit did not go through Redis", g.prefix)
	}
	// Under these big limits the replica leases batches and admits from
	// memory: a point must still have gone to Redis, just not per request.
	for pt, v := range g.redisCmds {
		if g.ownRedis && !(v > 0) {
			fail("%s: no Redis command during the point: the rate limit was not shared", pt)
		}
	}
	for _, f := range g.failures {
		b.note("S1g FAILED: %s", f)
	}
}

// govRow is one line of the S1g table.
type govRow struct {
	label string
	key   string
	prec  int
	onOff bool // meaningful for governance off too
}

func (b *bench) govRows(point string) []govRow {
	rows := []govRow{
		{"p50 ms", "p50_ms", 3, true},
		{"p99 ms", "p99_ms", 3, true},
		{"CPU µs/req", "cpu_us_per_req", 1, true},
		{"proxy CPU % (of CPU0)", "proxy_cpu_pct", 0, true},
		{"CPU1 busy % (load, fake, Redis)", "cpu1_busy_pct", 0, true},
		{"Redis script calls/req", "redis_scripts_per_req", 2, false},
		{"Redis commands/req (scripts' own included)", "redis_cmds_per_req", 2, false},
	}
	if point == b.s1gClosed() {
		rows[0].label, rows[1].label = "latency p50 ms (closed loop)", "latency p99 ms (closed loop)"
		return append([]govRow{{"throughput req/s", "rps", 0, true}}, rows...)
	}
	return append(rows[:2:2], append([]govRow{{"achieved req/s", "rps", 0, true}}, rows[2:]...)...)
}

// govCell is one summarised S1g figure: governance off and on, their
// ratio and difference, each per repetition.
type govCell struct {
	Point  string `json:"point"`
	Metric string `json:"metric"`
	Off    spread `json:"governance_off"`
	On     spread `json:"governance_on"`
	Ratio  spread `json:"ratio_on_to_off"`
	Added  spread `json:"added_on_minus_off"`
}

func (b *bench) govCells() []govCell {
	if b.gov == nil || b.gov.skipped != "" {
		return nil
	}
	var out []govCell
	for _, pt := range []string{b.s1gClosed(), b.s1gOpen()} {
		for _, row := range b.govRows(pt) {
			off, on := make([]float64, b.cfg.Reps), make([]float64, b.cfg.Reps)
			ratio, added := make([]float64, b.cfg.Reps), make([]float64, b.cfg.Reps)
			for i := range off {
				off[i], on[i], ratio[i], added[i] = math.NaN(), math.NaN(), math.NaN(), math.NaN()
				if r := b.find("S1g", pt, "tollgate", i+1); r != nil {
					if v, ok := r.Metrics[row.key]; ok {
						off[i] = v
					}
				}
				if r := b.find("S1g", pt, govTarget, i+1); r != nil {
					if v, ok := r.Metrics[row.key]; ok {
						on[i] = v
					}
				}
				if row.onOff {
					added[i] = on[i] - off[i]
					if off[i] > 0 {
						ratio[i] = on[i] / off[i]
					}
				}
			}
			out = append(out, govCell{Point: pt, Metric: row.label, Off: summarize(off), On: summarize(on), Ratio: summarize(ratio), Added: summarize(added)})
		}
	}
	return out
}

func findGovCell(cs []govCell, point, metric string) (govCell, bool) {
	for _, c := range cs {
		if c.Point == point && c.Metric == metric {
			return c, true
		}
	}
	return govCell{}, false
}

// govVerdicts are issue 16's gate, judged on this run.
func (b *bench) govVerdicts() []verdict {
	if !b.cfg.Scenarios["S1g"] {
		return nil
	}
	cs := b.govCells()
	var vs []verdict
	judge := func(name string, ok bool, measured string, pass bool) {
		if !ok {
			vs = append(vs, verdict{Target: name, Measured: "not measured"})
			return
		}
		vs = append(vs, verdict{Target: name, Measured: measured, Pass: &pass})
	}
	c, ok := findGovCell(cs, b.s1gClosed(), "throughput req/s")
	judge("S1g throughput with governance ≥ 0.9× governance off (budget, Redis limit, model rule on every request)",
		ok && c.Ratio.N > 0, fmt.Sprintf("%s (%s against %s req/s)", fmtRatio(c.Ratio), fmtNum(c.On.Median, 0), fmtNum(c.Off.Median, 0)), c.Ratio.Median >= 0.9)
	c, ok = findGovCell(cs, b.s1gOpen(), "p50 ms")
	judge(fmt.Sprintf("S1g added p50 ≤ 0.3 ms with Redis limits (governance on − off, %s)", b.s1gOpen()),
		ok && c.Added.N > 0, fmtSpread(c.Added, 3)+" ms", c.Added.Median <= 0.3)
	name := "S1g: every request admitted through all three checks, none refused"
	if g := b.gov; g != nil && g.skipped == "" {
		judge(name, true, strings.Join(append([]string{fmt.Sprintf("%d failure(s)", len(g.failures))}, g.failures...), "; "), len(g.failures) == 0)
	} else {
		judge(name, false, "", false)
	}
	return vs
}

// govJSON is the S1g part of the JSON report.
type govJSON struct {
	Skipped      string       `json:"skipped,omitempty"`
	Redis        string       `json:"redis"`
	OwnRedis     bool         `json:"redis_started_by_bench"`
	Prefix       string       `json:"redis_prefix"`
	Policies     []string     `json:"policies"`
	Results      []govCell    `json:"results"`
	Correctness  *correctness `json:"correctness,omitempty"`
	FakeSaw      int64        `json:"fake_requests_while_driving"`
	ProbeStatus  int          `json:"model_probe_status"`
	ProbeReached int64        `json:"model_probe_reached_fake"`
	Ledger       ledgerCheck  `json:"ledger"`
	Usage        *usageCheck  `json:"usage"`
	RedisKeys    int          `json:"redis_keys_after_load"`
	KeysDeleted  int          `json:"redis_keys_deleted"`
	Failures     []string     `json:"failures,omitempty"`
}

func (b *bench) govReport() *govJSON {
	g := b.gov
	if g == nil {
		return nil
	}
	j := &govJSON{Skipped: g.skipped, Redis: g.redisURL, OwnRedis: g.ownRedis, Prefix: g.prefix, Policies: g.policies,
		Results: b.govCells(), FakeSaw: b.fakeVia[govTarget], ProbeStatus: g.probeStatus, ProbeReached: g.probeReached,
		Ledger: g.ledger, Usage: g.usage, RedisKeys: g.keysAfter, KeysDeleted: g.keysDeleted, Failures: g.failures}
	if t := b.totals[govTarget]; t != nil {
		c := correctnessOf(govTarget, t)
		j.Correctness = &c
	}
	return j
}

// govMarkdown writes the S1g section of the report.
func (b *bench) govMarkdown(p func(string, ...any), j *govJSON) {
	if j == nil {
		return
	}
	p("## S1g: governance on against off\n\n")
	if j.Skipped != "" {
		p("Skipped: %s.\n", j.Skipped)
		return
	}
	g := b.gov
	p("S1's load, and an open loop at %d req/s for the added latency, against S1's tollgate (no policy: governance checks nothing) and a second tollgate built the same way whose own SQLite database holds the three policies below, with its rate limits in Redis (%s). ", b.cfg.S1gRate, g.redisWhere())
	p("Each repetition runs the two back to back, alternating which goes first; ratio and difference are taken within the repetition. Every request of the governed instance passes model policy, one rate-limit acquisition in Redis and a budget reservation settled with its usage record; the limits are far above what a run reaches, so none may refuse.\n\n")
	for _, c := range j.Policies {
		p("- `%s`\n", c)
	}
	p("\n| Point | Metric | governance off | governance on | on ÷ off | on − off |\n|---|---|---|---|---|---|\n")
	rows := map[string]govRow{}
	for _, pt := range []string{b.s1gClosed(), b.s1gOpen()} {
		for _, r := range b.govRows(pt) {
			rows[pt+"\x00"+r.label] = r
		}
	}
	for _, c := range j.Results {
		r := rows[c.Point+"\x00"+c.Metric]
		p("| S1g %s | %s | %s | %s | %s | %s |\n", c.Point, c.Metric, fmtSpread(c.Off, r.prec), fmtSpread(c.On, r.prec), fmtRatio(c.Ratio), fmtSpread(c.Added, r.prec))
	}
	if c := j.Correctness; c != nil {
		p("\nGoverned instance: %d requests (warm-ups included), %d non-2xx, %d errors, %d bodies unlike direct's; the fake saw %d of them. ", c.Requests, c.Non2xx, c.Errors, c.Mismatch, j.FakeSaw)
	}
	p("A request for %s before the load answered %d and reached the fake %d times. ", probeModel, j.ProbeStatus, j.ProbeReached)
	lc := j.Ledger
	p("Its database after SIGTERM: %d usage records, %d carrying a reservation (%.0f micro-USD each on average), refusals %v; reservations %v; the budget spent %s USD with %d micro-USD still reserved. ",
		lc.Rows, lc.Reserved, lc.ReservedPerReq, lc.Refused, lc.Reservations, fmtMicroUSD(lc.SpentMicroUSD), lc.HeldMicroUSD)
	if uc := j.Usage; uc != nil {
		p("%d records exactly equal to the fake's usage. ", uc.Exact)
	}
	p("%d Redis keys under `%s` after the load, %d deleted after.\n", j.RedisKeys, j.Prefix, j.KeysDeleted)
	if lc.Err != "" {
		p("\nGovernance records could not all be read: `%s`\n", lc.Err)
	}
	if len(j.Failures) > 0 {
		p("\n**S1g failed:**\n\n")
		for _, f := range j.Failures {
			p("- %s\n", f)
		}
	} else {
		p("\nEvery request of the governed instance was admitted through all three checks and none was refused.\n")
	}
}

func fmtMicroUSD(v int64) string { return fmt.Sprintf("%.6f", float64(v)/1e6) }

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// sumCounts adds a by-state count.
func sumCounts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
