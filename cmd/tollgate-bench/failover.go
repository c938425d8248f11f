package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

// S1f is issue 13's failover row. A second tollgate, set up like S1's,
// holds two project bindings, each naming two credentials:
//
//   - project bench-fo: credentials a, then b, both on the fake provider.
//     The first answers every request, so failover should cost nothing
//     measurable: its S1 closed loop and an open loop are compared back to
//     back with S1's tollgate (one platform credential).
//   - project bench-529: credential over, on a second fake that answers
//     every request 529 at once, then b. Every answer must be b's 200; the
//     added time to first byte (paced streams, request written → first
//     data byte) is measured twice: with credential health as shipped
//     (the circuit opens after three 529s and the requests skip over), and
//     with the breaker switched off (TOLLGATE_HEALTH_FAILURES far above any
//     run), where every request meets the 529 and the jittered wait before
//     the next candidate (25–75 ms).
//
// "Adds nothing measurable" is judged on the ratio failover ÷ single
// credential, taken per repetition (noWorse).
const (
	foTarget      = "tollgate-fo"
	fo529Target   = "tollgate-529"
	fo529NBTarget = "tollgate-529-nobreaker"
	foProject     = "bench-fo"
	fo529Project  = "bench-529"
	// foNoBreaker is a TOLLGATE_HEALTH_FAILURES no run reaches.
	foNoBreaker = "1000000000"
	// foNoise is how much worse a median ratio may be and read as no change.
	foNoise = 0.05
)

// foRun is what S1f set up and observed.
type foRun struct {
	dir                   string
	over                  *proc // the fake that answers 529
	credA, credB, over529 string
	// overVia counts, per target, the requests the 529 fake saw while
	// only that target was driven.
	overVia map[string]int64
	// beforeOpen is how many requests met the 529 with the breaker on up to
	// the end of the first warm-up (the check before any load included):
	// those before the circuit opened, and any half-open probe.
	beforeOpen int64
	rec        foRecords
	failures   []string
}

// foRecords is what the S1f database says after the run.
type foRecords struct {
	Rows         map[string]int `json:"rows_by_project"`
	ByCredential map[string]int `json:"rows_by_project_and_credential"`
	// FailedOver counts records whose attempts list a 529 of the first
	// credential followed by the second's 200.
	FailedOver    int         `json:"failed_over"`
	OtherAttempts int         `json:"other_attempt_lists"`
	Usage         *usageCheck `json:"usage"`
	Err           string      `json:"error,omitempty"`
}

func (b *bench) foClosed() string {
	return fmt.Sprintf("first answers, closed loop, %d conns", b.cfg.S1Conns)
}
func (b *bench) foOpen() string {
	return fmt.Sprintf("first answers, open loop, %d rps", b.cfg.S1fRate)
}
func (b *bench) fo529On() string {
	return fmt.Sprintf("first 529s, breaker on (defaults), %d streams/s", b.cfg.S1fRate)
}
func (b *bench) fo529Off() string {
	return fmt.Sprintf("first 529s, breaker off, %d streams/s", b.cfg.S1fRate)
}

// s1f runs the scenario. A failure of its own is recorded, fails the run
// at the end and leaves the other scenarios to run.
func (b *bench) s1f(ctx context.Context) error {
	b.fo = &foRun{overVia: map[string]int64{}}
	if err := b.s1fRun(ctx, b.fo); err != nil {
		if ctx.Err() != nil {
			return err
		}
		b.fo.failures = append(b.fo.failures, err.Error())
		b.note("S1f FAILED: %v", err)
	}
	return nil
}

func (b *bench) s1fRun(ctx context.Context, f *foRun) error {
	proxyCPU, loadCPU, procs := b.cpus()
	logs := filepath.Join(b.work, "logs")
	var err error
	f.over, err = startProc(ctx, logs, "fakeprovider-529", loadCPU, procs, nil, filepath.Join(b.bin, "fakeprovider"),
		"-addr", "127.0.0.1:0", "-keys", providerKey, "-fault", "status=529")
	if err != nil {
		return err
	}
	defer f.over.stop(5 * time.Second)
	dir, env, _, err := b.setupTollgate(ctx, foTarget)
	if err != nil {
		return err
	}
	f.dir = dir
	// The 529 fake is a credential base URL on loopback over http.
	env = append(env, "TOLLGATE_ALLOW_HTTP_BASE_URL=true", "TOLLGATE_ALLOW_PRIVATE_BASE_URL=true")
	add := func(name string, args ...string) (string, error) {
		return b.cli(ctx, env, providerKey+"\n", append([]string{"credential", "add", "--provider", "openai", "--name", name, "--key-stdin"}, args...)...)
	}
	if f.credA, err = add("fo-a"); err != nil {
		return err
	}
	if f.credB, err = add("fo-b"); err != nil {
		return err
	}
	if f.over529, err = add("fo-529", "--base-url", f.over.URL); err != nil {
		return err
	}
	tokens := map[string]string{}
	for project, first := range map[string]string{foProject: f.credA, fo529Project: f.over529} {
		if _, err := b.cli(ctx, env, "", "credential", "bind", "--credential", first, "--fallback", f.credB,
			"--dialect", "openai-chat", "--project", project); err != nil {
			return err
		}
		if tokens[project], err = b.cli(ctx, env, "", "token", "issue", "--workspace", "bench", "--project", project, "--user", "bench", "--ttl", "6h"); err != nil {
			return err
		}
	}
	launch := func(extra ...string) (*proc, error) {
		return startProc(ctx, logs, fmt.Sprintf("%s-%d", foTarget, len(extra)), proxyCPU, procs, append(env[:len(env):len(env)], extra...),
			filepath.Join(b.bin, "tollgate"), "serve")
	}
	pr, err := launch()
	if err != nil {
		return err
	}
	running := pr
	defer func() {
		if running != nil {
			running.stop(stopBound)
		}
	}()
	mk := func(name, project string, p *proc) target {
		return target{name: name, proc: p, url: p.URL + "/openai/v1/chat/completions", auth: "Bearer " + tokens[project]}
	}
	fo, on := mk(foTarget, foProject, pr), mk(fo529Target, fo529Project, pr)
	for _, n := range []string{foTarget, fo529Target, fo529NBTarget} {
		b.totals[n] = &tally{}
	}
	client := newHTTPClient(2)
	for _, tg := range []target{fo, on} {
		o0 := b.overRequests(f)
		err := b.answersLikeDirect(ctx, client, tg)
		f.overVia[tg.name] += b.overRequests(f) - o0
		if err != nil {
			return fmt.Errorf("failover binding: %w", err)
		}
	}
	client.CloseIdleConnections()

	single := b.targets[2]
	rate, d, w := b.cfg.S1fRate, b.cfg.Duration, b.cfg.Warmup
	b.logf("S1f: failover binding against one credential, %s, %s and %s; then %s; %s per point, %d reps",
		b.foClosed(), b.foOpen(), b.fo529On(), b.fo529Off(), d, b.cfg.Reps)
	paced := func(tg target, d time.Duration, c *http.Client) func() *tally {
		return func() *tally { return pacedStreams(ctx, c, tg, b.stream, rate, d, b.refStream) }
	}
	for rep := 1; rep <= b.cfg.Reps; rep++ {
		for _, tg := range foOrder(rep, single, fo) {
			b.foWarm(f, tg, func() *tally { return closedLoop(ctx, tg, b.chat, b.cfg.S1Conns, w, b.refBody) })
			b.foMeasure(f, b.foClosed(), rep, tg, func() *tally { return closedLoop(ctx, tg, b.chat, b.cfg.S1Conns, d, b.refBody) })
		}
		for _, tg := range foOrder(rep, single, fo) {
			c := newHTTPClient(4096)
			b.foWarm(f, tg, func() *tally { return openLoop(ctx, c, tg, b.chat, http.Header{}, rate, w, b.refBody) })
			b.foMeasure(f, b.foOpen(), rep, tg, func() *tally { return openLoop(ctx, c, tg, b.chat, http.Header{}, rate, d, b.refBody) })
			c.CloseIdleConnections()
		}
		for _, tg := range foOrder(rep, single, on) {
			c := newHTTPClient(4096)
			b.foWarm(f, tg, paced(tg, w, c))
			if rep == 1 && tg.name == fo529Target {
				f.beforeOpen = f.overVia[fo529Target]
			}
			b.foMeasure(f, b.fo529On(), rep, tg, paced(tg, d, c))
			c.CloseIdleConnections()
		}
	}

	// The same instance again, its breaker off: every request meets the 529.
	running = nil
	b.stopCounted(pr, foTarget)
	if pr, err = launch("TOLLGATE_HEALTH_FAILURES=" + foNoBreaker); err != nil {
		return err
	}
	running = pr
	off := mk(fo529NBTarget, fo529Project, pr)
	for rep := 1; rep <= b.cfg.Reps; rep++ {
		for _, tg := range foOrder(rep, single, off) {
			c := newHTTPClient(4096)
			b.foWarm(f, tg, paced(tg, w, c))
			b.foMeasure(f, b.fo529Off(), rep, tg, paced(tg, d, c))
			c.CloseIdleConnections()
		}
	}
	running = nil
	b.stopCounted(pr, fo529NBTarget)
	f.rec = b.readFoRecords(ctx, f)
	b.foJudge(f)
	return ctx.Err()
}

// foOrder alternates which of the pair goes first, so a drift of the
// machine hits both.
func foOrder(rep int, a, b target) []target {
	if rep%2 == 0 {
		return []target{b, a}
	}
	return []target{a, b}
}

// stopCounted stops p with SIGTERM, which flushes tollgate's spool, and
// counts a kill after stopBound.
func (b *bench) stopCounted(p *proc, name string) {
	if !p.stop(stopBound) {
		b.uncleanStops++
		b.note("%s did not exit within %s of SIGTERM and was killed", name, stopBound)
	}
}

func (b *bench) overRequests(f *foRun) int64 { return fakeCounter(f.over.URL) }

// foWarm is an unmeasured run through tg, counting its requests that met
// the 529.
func (b *bench) foWarm(f *foRun, tg target, fn func() *tally) {
	o0 := b.overRequests(f)
	b.load(tg, fn)
	f.overVia[tg.name] += b.overRequests(f) - o0
}

// fakeCounter is the request counter of the fake provider at base.
func fakeCounter(base string) int64 {
	resp, err := http.Get(base + "/_fake/counters")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var c struct{ Requests int64 }
	if json.NewDecoder(resp.Body).Decode(&c) != nil {
		return -1
	}
	return c.Requests
}

// foMeasure is one measured S1f point, with how many of its requests met
// the 529.
func (b *bench) foMeasure(f *foRun, point string, rep int, tg target, fn func() *tally) {
	o0 := b.overRequests(f)
	r, _ := b.measure("S1f", point, rep, tg, fn)
	met := b.overRequests(f) - o0
	f.overVia[tg.name] += met
	if r.Requests > 0 {
		r.Metrics["met_529_pct"] = 100 * float64(met) / float64(r.Requests)
	}
	b.logf("  S1f %-44s %-22s rep %d: %7.0f req/s, p50 %.3f ms, p99 %.3f ms, CPU %.1f µs/req, met the 529: %d",
		point, tg.name, rep, r.Metrics["rps"], r.Metrics["p50_ms"], r.Metrics["p99_ms"], r.Metrics["cpu_us_per_req"], met)
}

// readFoRecords reads, after tollgate exited, who answered each request
// and which attempts it took.
func (b *bench) readFoRecords(ctx context.Context, f *foRun) foRecords {
	rec := foRecords{Rows: map[string]int{}, ByCredential: map[string]int{}}
	path := filepath.Join(f.dir, "tollgate.db")
	uc, err := checkUsage(ctx, path, filepath.Join(f.dir, "spool"), b.refBody, b.refStream)
	rec.Usage = uc
	var errs []string
	if err != nil {
		errs = append(errs, "usage: "+err.Error())
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		rec.Err = err.Error()
		return rec
	}
	defer db.Close()
	names := map[string]string{f.credA: "a", f.credB: "b", f.over529: "over"}
	rows, err := db.QueryContext(ctx, `SELECT project, credential_id, attempts FROM usage_records`)
	if err != nil {
		rec.Err = err.Error()
		return rec
	}
	defer rows.Close()
	for rows.Next() {
		var project, cred, attempts string
		if err := rows.Scan(&project, &cred, &attempts); err != nil {
			errs = append(errs, err.Error())
			break
		}
		rec.Rows[project]++
		rec.ByCredential[project+"/"+orDash(names[cred])]++
		if attempts == "" {
			continue
		}
		var as []struct {
			CredentialID string `json:"credential_id"`
			Status       int    `json:"status"`
		}
		if json.Unmarshal([]byte(attempts), &as) == nil && len(as) == 2 &&
			as[0].CredentialID == f.over529 && as[0].Status == 529 && as[1].CredentialID == f.credB && as[1].Status == 200 {
			rec.FailedOver++
		} else {
			rec.OtherAttempts++
		}
	}
	if err := rows.Err(); err != nil {
		errs = append(errs, err.Error())
	}
	rec.Err = strings.Join(errs, "; ")
	return rec
}

// foJudge fails S1f when a request was not answered by the candidate the
// scenario says, or the figures would not be failover's.
func (b *bench) foJudge(f *foRun) {
	fail := func(format string, a ...any) { f.failures = append(f.failures, fmt.Sprintf(format, a...)) }
	sent := map[string]int{}
	for _, n := range []string{foTarget, fo529Target, fo529NBTarget} {
		t := b.totals[n]
		sent[n] = t.requests
		if t.non2xx+t.errors+t.mismatch > 0 {
			fail("%s: %d of %d requests non-2xx, %d errors, %d bodies unlike direct's; first: %s", n, t.non2xx, t.requests, t.errors, t.mismatch, t.firstErr)
		}
		// The working fake answers each request once, whoever sent it there.
		if got := b.fakeVia[n]; got != int64(t.requests) {
			fail("%s: the fake saw %d requests for the %d sent", n, got, t.requests)
		}
	}
	if n := f.overVia[foTarget]; n != 0 {
		fail("%s: %d requests reached the 529 fake, whose credential it is not bound to", foTarget, n)
	}
	if n := f.overVia[fo529NBTarget]; n != int64(sent[fo529NBTarget]) {
		fail("%s: %d of %d requests met the 529 with the breaker off, want every one", fo529NBTarget, n, sent[fo529NBTarget])
	}
	if n := f.overVia[fo529Target]; n < 1 || n >= int64(sent[fo529Target]) {
		fail("%s: %d of %d requests met the 529 with the breaker on: the circuit did not open", fo529Target, n, sent[fo529Target])
	}
	rc := f.rec
	if rc.Err != "" {
		fail("usage records unreadable: %s", rc.Err)
		return
	}
	if got, want := rc.ByCredential[foProject+"/a"], sent[foTarget]; got != want || rc.Rows[foProject] != want {
		fail("project %s: %d of %d records answered by its first credential (%v)", foProject, got, rc.Rows[foProject], rc.ByCredential)
	}
	want529 := sent[fo529Target] + sent[fo529NBTarget]
	if got := rc.ByCredential[fo529Project+"/b"]; got != want529 || rc.Rows[fo529Project] != want529 {
		fail("project %s: %d of %d records answered by the second credential, %d requests sent", fo529Project, got, rc.Rows[fo529Project], want529)
	}
	if met := f.overVia[fo529Target] + f.overVia[fo529NBTarget]; int64(rc.FailedOver) != met || rc.OtherAttempts != 0 {
		fail("%d records list the 529 then the second credential's 200 (%d other attempt lists), %d requests met the 529", rc.FailedOver, rc.OtherAttempts, met)
	}
	if uc := rc.Usage; uc == nil || uc.Exact != uc.Rows {
		fail("usage records not all equal to the fake's usage: %+v", uc)
	}
	for _, s := range f.failures {
		b.note("S1f FAILED: %s", s)
	}
}

// foRows are the lines of the S1f table of a point, S1g's row shape:
// onOff says the figure means something for the single credential too.
func (b *bench) foRows(point string) []govRow {
	switch point {
	case b.foClosed():
		return []govRow{{"throughput req/s", "rps", 0, true}, {"latency p50 ms (closed loop)", "p50_ms", 2, true},
			{"latency p99 ms (closed loop)", "p99_ms", 2, true}, {"CPU µs/req", "cpu_us_per_req", 1, true}}
	case b.foOpen():
		return []govRow{{"p50 ms", "p50_ms", 3, true}, {"p99 ms", "p99_ms", 3, true},
			{"achieved req/s", "rps", 0, true}, {"CPU µs/req", "cpu_us_per_req", 1, true}}
	}
	return []govRow{{"TTFB p50 ms", "p50_ms", 3, true}, {"TTFB p99 ms", "p99_ms", 3, true},
		{"achieved streams/s", "rps", 0, true}, {"CPU µs/stream", "cpu_us_per_req", 1, true},
		{"requests that met the 529 %", "met_529_pct", 1, false}}
}

func (b *bench) foPoints() [][2]string {
	return [][2]string{{b.foClosed(), foTarget}, {b.foOpen(), foTarget}, {b.fo529On(), fo529Target}, {b.fo529Off(), fo529NBTarget}}
}

// foCell is one summarised S1f figure: single credential and failover
// binding, their ratio and difference, each per repetition.
type foCell struct {
	Point  string `json:"point"`
	Metric string `json:"metric"`
	Single spread `json:"single_credential"`
	Fo     spread `json:"failover_binding"`
	Ratio  spread `json:"ratio_failover_to_single"`
	Added  spread `json:"added_failover_minus_single"`
	prec   int
}

func (b *bench) foCells() []foCell {
	if b.fo == nil {
		return nil
	}
	var out []foCell
	for _, pt := range b.foPoints() {
		for _, row := range b.foRows(pt[0]) {
			c := foCell{Point: pt[0], Metric: row.label, prec: row.prec}
			c.Single, c.Fo, c.Ratio, c.Added = b.pairFigures("S1f", pt[0], "tollgate", pt[1], row.key, row.onOff)
			out = append(out, c)
		}
	}
	return out
}

// pairFigures summarises key for targets a and bt over the repetitions of
// a point, with bt ÷ a and bt − a taken within each repetition; without
// pair only bt's figure means anything.
func (b *bench) pairFigures(scenario, point, a, bt, key string, pair bool) (sa, sb, ratio, added spread) {
	n := b.cfg.Reps
	va, vb, vr, vd := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
	get := func(target string, rep int) float64 {
		if r := b.find(scenario, point, target, rep); r != nil {
			if v, ok := r.Metrics[key]; ok {
				return v
			}
		}
		return math.NaN()
	}
	for i := range n {
		va[i], vb[i], vr[i], vd[i] = math.NaN(), get(bt, i+1), math.NaN(), math.NaN()
		if !pair {
			continue
		}
		va[i] = get(a, i+1)
		vd[i] = vb[i] - va[i]
		if va[i] > 0 {
			vr[i] = vb[i] / va[i]
		}
	}
	return summarize(va), summarize(vb), summarize(vr), summarize(vd)
}

func findFoCell(cs []foCell, point, metric string) (foCell, bool) {
	for _, c := range cs {
		if c.Point == point && c.Metric == metric && c.Ratio.N > 0 {
			return c, true
		}
	}
	return foCell{}, false
}

// noWorse judges "adds nothing measurable" on a ratio failover ÷ one
// credential over the repetitions: it holds when the ratio's min–max
// reaches 1.0 from the worse side, or its median is at most foNoise worse.
// Better is not a cost of failover, so it is not held against it.
func noWorse(s spread, higherIsBetter bool) bool {
	if higherIsBetter {
		return s.Max >= 1 || s.Median >= 1-foNoise
	}
	return s.Min <= 1 || s.Median <= 1+foNoise
}

// foVerdicts are issue 13's benchmark rows, judged on this run.
func (b *bench) foVerdicts() []verdict {
	if !b.cfg.Scenarios["S1f"] {
		return nil
	}
	cs := b.foCells()
	var vs []verdict
	judge := func(name string, ok bool, measured string, pass *bool) {
		if !ok {
			vs = append(vs, verdict{Target: name, Measured: "not measured"})
			return
		}
		vs = append(vs, verdict{Target: name, Measured: measured, Pass: pass})
	}
	yes := func(v bool) *bool { return &v }
	noise := fmt.Sprintf("(failover ÷ one credential: its min–max reaches 1.0, or its median is at most %.0f %% worse)", 100*foNoise)
	c, ok := findFoCell(cs, b.foClosed(), "throughput req/s")
	judge("S1f failover binding, first answers: throughput no worse than one credential "+noise, ok,
		fmt.Sprintf("%s (%s against %s req/s)", fmtRatio(c.Ratio), fmtNum(c.Fo.Median, 0), fmtNum(c.Single.Median, 0)), yes(noWorse(c.Ratio, true)))
	c, ok = findFoCell(cs, b.foClosed(), "CPU µs/req")
	judge("S1f failover binding, first answers: CPU per request no worse "+noise, ok,
		fmt.Sprintf("%s (%s against %s µs)", fmtRatio(c.Ratio), fmtNum(c.Fo.Median, 1), fmtNum(c.Single.Median, 1)), yes(noWorse(c.Ratio, false)))
	c, ok = findFoCell(cs, b.foOpen(), "p50 ms")
	judge(fmt.Sprintf("S1f failover binding, first answers: p50 at %d req/s no worse %s", b.cfg.S1fRate, noise), ok,
		fmt.Sprintf("%s (added %s ms)", fmtRatio(c.Ratio), fmtSpread(c.Added, 3)), yes(noWorse(c.Ratio, false)))
	for _, pt := range []string{b.fo529Off(), b.fo529On()} {
		p50, ok := findFoCell(cs, pt, "TTFB p50 ms")
		p99, _ := findFoCell(cs, pt, "TTFB p99 ms")
		judge("S1f added TTFB, "+pt+" (reported, no target)", ok,
			fmt.Sprintf("added p50 %s ms, p99 %s ms", fmtSpread(p50.Added, 3), fmtSpread(p99.Added, 3)), nil)
	}
	on, ok1 := findFoCell(cs, b.fo529On(), "TTFB p50 ms")
	off, ok2 := findFoCell(cs, b.fo529Off(), "TTFB p50 ms")
	judge("S1f the circuit opens: added TTFB p50 with the breaker on below half the breaker-off one", ok1 && ok2,
		fmt.Sprintf("%s against %s ms", fmtNum(on.Added.Median, 3), fmtNum(off.Added.Median, 3)), yes(on.Added.Median < off.Added.Median/2))
	name := "S1f: every request answered 200 by the credential the scenario says (client, fake counters, usage records)"
	if f := b.fo; f != nil {
		judge(name, true, strings.Join(append([]string{fmt.Sprintf("%d failure(s)", len(f.failures))}, f.failures...), "; "), yes(len(f.failures) == 0))
	} else {
		judge(name, false, "", nil)
	}
	return vs
}

// foJSON is the S1f part of the JSON report.
type foJSON struct {
	Results    []foCell         `json:"results"`
	OverVia    map[string]int64 `json:"requests_that_met_the_529"`
	BeforeOpen int64            `json:"met_the_529_before_the_circuit_opened"`
	Records    foRecords        `json:"records"`
	Failures   []string         `json:"failures,omitempty"`
}

func (b *bench) foReport() *foJSON {
	if b.fo == nil {
		return nil
	}
	return &foJSON{Results: b.foCells(), OverVia: b.fo.overVia, BeforeOpen: b.fo.beforeOpen, Records: b.fo.rec, Failures: b.fo.failures}
}

// foMarkdown writes the S1f section of the report.
func (b *bench) foMarkdown(p func(string, ...any), j *foJSON) {
	if j == nil {
		return
	}
	p("\n## S1f: failover binding against one credential\n\n")
	p("A second tollgate, set up like S1's, with two project bindings of two credentials each: `%s` names a then b, both on the fake provider (the first answers); `%s` names a credential on a second fake that answers every request 529 at once, then b. ", foProject, fo529Project)
	p("Each point runs back to back with S1's tollgate (one platform credential), alternating which goes first; ratio and difference are taken within the repetition. ")
	p("The 529 points are paced streams (TTFB: request written → first `data:` byte), first with credential health as shipped (three failures open the circuit for 5 s, doubling), then on the same instance restarted with `TOLLGATE_HEALTH_FAILURES=%s` (breaker off: every request meets the 529, then tollgate's jittered 25–75 ms wait before the next candidate). ", foNoBreaker)
	p("\"No worse\" (nothing measurable added): the ratio's min–max over the repetitions reaches 1.0 from the worse side, or its median is at most %.0f %% worse; better is not held against failover.\n\n", 100*foNoise)
	p("| Point | Metric | one credential | failover binding | failover ÷ one | failover − one |\n|---|---|---|---|---|---|\n")
	for _, c := range j.Results {
		p("| S1f %s | %s | %s | %s | %s | %s |\n", c.Point, c.Metric, fmtSpread(c.Single, c.prec), fmtSpread(c.Fo, c.prec), fmtRatio(c.Ratio), fmtSpread(c.Added, c.prec))
	}
	p("\nRequests that met the 529 fake (warm-ups included): %v; with the breaker on, %d up to the end of the first warm-up (the check before the load included: the requests before the circuit opened). ", j.OverVia, j.BeforeOpen)
	rc := j.Records
	p("Usage records after SIGTERM: %v by project, %v by project and answering credential; %d list the 529 then b's 200, %d other attempt lists. ", rc.Rows, rc.ByCredential, rc.FailedOver, rc.OtherAttempts)
	if uc := rc.Usage; uc != nil {
		p("%d of %d records exactly equal to the fake's usage.\n", uc.Exact, uc.Rows)
	}
	if rc.Err != "" {
		p("\nRecords could not all be read: `%s`\n", rc.Err)
	}
	verdict := "Every request was answered 200 by the credential the scenario says."
	if len(j.Failures) > 0 {
		verdict = "**S1f failed:** " + strings.Join(j.Failures, "; ")
	}
	p("\n%s\n", verdict)
}
