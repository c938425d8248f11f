//go:build cluster

// `make test-governance`: issue 16's negative controls on real processes.
// Three tollgate replicas share one PostgreSQL (budgets) and one Redis
// (rate limits); each proof prints its figures per run, and each pass
// condition is the issue's bound (governance.md §8: N1/N2, N5, N12, N16,
// N17).

package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
)

const (
	// govRuns is how often each budget race is run per mode.
	govRuns = 5
	// govRaceRequests are sent at once per run.
	govRaceRequests = 300
	// govMaxTokens bounds each race request's output: with the fake's
	// outputs below it, the ceiling is a true bound, and at about one cent
	// a request a $1.00 budget holds about a hundred at once out of 300.
	govMaxTokens = 600
	// govSettleWithin bounds the wait for every record to be stored and
	// every reservation settled once the last answer is back.
	govSettleWithin = 20 * time.Second
)

// govRaceOutputs are the output tokens each replica's fake reports: three
// sizes, from far below the ceiling to the ceiling itself.
var govRaceOutputs = []int{30, 200, govMaxTokens}

// TestGovBudgetRaceCost: N1/N2 across replicas. A $1.00 cost budget on a
// project; 300 streamed requests at once over the three replicas, with
// output sizes, stream lengths and faults drawn at random; 5 runs each in
// hard and soft mode. Final spent ≤ $1.00 (hard), ≤ $1.00 + the largest
// reservation (soft); nothing left reserved; spent equals the settlement
// rule applied to the records; one upstream call per admitted request.
func TestGovBudgetRaceCost(t *testing.T) { testGovBudgetRace(t, "cost") }

// TestGovBudgetRaceTokens: the same with a token budget of half the demand.
func TestGovBudgetRaceTokens(t *testing.T) { testGovBudgetRace(t, "tokens") }

func testGovBudgetRace(t *testing.T, metric string) {
	g := newGovCluster(t, govOpts{fakeArgs: func(i int) []string { return govFakeArgs(govRaceOutputs[i]) }})
	body := messagesBody(govMaxTokens, true)
	ceiling := g.probeCeiling(metric, body)
	limit := int64(1_000_000) // $1.00
	if metric == "tokens" {
		// Half of what the 300 requests use (about 320 tokens each): a
		// request's hold frees the moment it ends, so only a limit under
		// the demand refuses anything. Its headroom is a few ceilings,
		// so this race proves the direct reservations; the cost race
		// (about 100 ceilings) proves the allotments.
		limit = max(3*ceiling, 48_000)
	}
	t.Logf("%s budget race: ceiling %d per request (probed), limit %d, %d requests at once per run over %d replicas (fake outputs %v of max_tokens %d)",
		metric, ceiling, limit, govRaceRequests, clusterReplicas, govRaceOutputs, govMaxTokens)
	for _, mode := range []string{"hard", "soft"} {
		for run := range govRuns {
			g.budgetRace(metric, mode, run, body, ceiling, limit)
		}
	}
}

// needCeilings fails the test when the proofs' request has no priced
// ceiling: the binary under test is built from this tree, so every capped
// request would be refused as unpriced and no budget proof could run.
func needCeilings(t *testing.T, body string) {
	t.Helper()
	if c := governance.EstimateCeiling(metering.DefaultPrices(), "anthropic-messages", "anthropic", govModel, []byte(body), false); c.Tokens() == 0 || !c.Priced {
		t.Fatalf("governance.EstimateCeiling returns %+v for the proofs' request: no budget proof can run", c)
	}
}

// probeCeiling measures what one request of body reserves against a
// budget of metric: the reserved amount of a budget of its own while one
// slow stream is held, less what the replica holds ahead as an allotment
// (a fresh budget's first request reserves directly).
func (g *govCluster) probeCeiling(metric, body string) int64 {
	g.t.Helper()
	needCeilings(g.t, body)
	s := govScope{project: "probe-" + metric, user: "u", workspace: "ws-probe-" + metric}
	id := g.createPolicy(0, "budgets", map[string]any{"scope_type": "project", "scope_id": s.project, "metric": metric, "limit": 1_000_000_000, "window": "day", "mode": "soft"})
	g.waitVisible(s, id)
	tok := g.issue(s)
	done := make(chan govAnswer, 1)
	go func() {
		done <- g.send(context.Background(), 0, tok, govReq{body: body, stream: true, events: 30, gap: 100 * time.Millisecond, clientID: "probe-" + metric})
	}()
	var held int64
	testkit.Poll(5*time.Second, 20*time.Millisecond, func() bool {
		h := g.headroom(0, s, id)
		held = h.Reserved - h.Allotted
		return held > 0
	})
	a := <-done
	if held <= 0 {
		g.t.Fatalf("a held stream under a %s budget reserved nothing (answer %d %v %.200s): Admit does not reserve (governor h6 / ledger h2)", metric, a.status, a.err, a.body)
	}
	if !a.complete {
		g.t.Fatalf("the probe stream did not complete: %d %v %.300s", a.status, a.err, a.body)
	}
	h, took, ok := g.waitReleased(0, s, id, govSettleWithin)
	g.t.Logf("probe (%s): one request reserves %d; settled to spent %d, reserved %d, %v after the answer (%v)", metric, held, h.Spent, h.Reserved, took.Round(time.Millisecond), ok)
	if !ok {
		g.t.Fatalf("the probe's reservation was not settled within %v: reserved %d", govSettleWithin, h.Reserved)
	}
	return held
}

// budgetRace is one run: a fresh project, its budget, 300 requests at once.
func (g *govCluster) budgetRace(metric, mode string, run int, body string, ceiling, limit int64) {
	t := g.t
	t.Helper()
	s := govScope{project: fmt.Sprintf("race-%s-%s-%d", metric, mode, run), user: "u", workspace: fmt.Sprintf("ws-race-%s-%s-%d", metric, mode, run)}
	in := map[string]any{"scope_type": "project", "scope_id": s.project, "metric": metric, "window": "day", "mode": mode}
	if metric == "cost" {
		in["limit_usd"] = "1.00"
	} else {
		in["limit"] = limit
	}
	id := g.createPolicy(run%clusterReplicas, "budgets", in)
	g.waitVisible(s, id)
	tok := g.issue(s)
	calls0 := g.upstreamCalls()

	rng := rand.New(rand.NewPCG(uint64(run), uint64(len(metric)+len(mode))))
	reqs := make([]govReq, govRaceRequests)
	for n := range reqs {
		r := govReq{body: body, stream: true, events: 2 + rng.IntN(23), gap: 20 * time.Millisecond, clientID: fmt.Sprintf("%s-%d", s.project, n)}
		switch p := rng.IntN(100); {
		case p < 8:
			r.fault = "cut=1" // truncated: usage unknown, settled at the reservation
		case p < 13:
			r.fault = "status=500" // nothing billed: settled at 0
		}
		reqs[n] = r
	}
	answers := make([]govAnswer, len(reqs))
	release := make(chan struct{})
	var wg sync.WaitGroup
	for n := range reqs {
		wg.Go(func() {
			<-release
			answers[n] = g.send(context.Background(), n%clusterReplicas, tok, reqs[n])
		})
	}
	t0 := time.Now()
	close(release)
	wg.Wait()
	took := time.Since(t0)

	var refusedClient, noAnswer int
	statuses := map[int]int{}
	bodies := map[int]string{}
	for _, a := range answers {
		statuses[a.status]++
		if _, ok := bodies[a.status]; !ok && a.status != http.StatusOK {
			bodies[a.status] = fmt.Sprintf("r%d %.160s", a.replica, a.body)
		}
		if a.err != nil && a.status == 0 {
			noAnswer++
		}
		if a.status == http.StatusTooManyRequests && strings.Contains(a.body, "billing_error") {
			refusedClient++
		}
	}
	stored := g.waitRecords(s.project, len(reqs), govSettleWithin)
	h, settleTook, released := g.waitReleased(0, s, id, govSettleWithin)
	recs := g.records(s.project)
	calls := g.upstreamCalls() - calls0
	seen := g.seenIDs(s.project + "-")

	var admitted, refused int
	var expected, sumCost, maxRes int64
	outcomes := map[string]int{}
	kinds := map[string]int{}
	for _, r := range recs {
		if r.governance != "" {
			refused++
			kinds[r.governance]++
			continue
		}
		admitted++
		outcomes[r.outcome]++
		res := ceiling
		if metric == "cost" {
			res = r.reservedMicroUSD
			if r.cost.Valid {
				sumCost += r.cost.Int64
			}
		}
		maxRes = max(maxRes, res)
		expected += r.settlement(metric, res)
	}
	if metric == "tokens" {
		maxRes = ceiling
	}
	apiCost := g.usageCost(s.project)
	bound := limit
	if mode == "soft" {
		bound += maxRes
	}
	t.Logf("%s %s run %d: %d requests in %v: %d admitted (outcomes %v), %d refused (%d billing_error 429s at the client), statuses %v; %d upstream calls (%d client ids seen); spent %d of limit %d (bound %d; settlement rule over the records %d; usage API cost_micro_usd %s), reserved %d %v after the last answer; largest reservation %d",
		metric, mode, run, len(reqs), took.Round(time.Millisecond), admitted, outcomes, refused, refusedClient, statuses, calls, seen,
		h.Spent, limit, bound, expected, apiCost, h.Reserved, settleTook.Round(time.Millisecond), maxRes)

	if len(kinds) > 1 || len(bodies) > 0 && (statuses[http.StatusTooManyRequests] != refusedClient || len(statuses) > 3) {
		t.Logf("%s %s run %d: refusals by kind %v; first answer per status %v", metric, mode, run, kinds, bodies)
	}
	if noAnswer > 0 {
		t.Errorf("%s %s run %d: %d requests got no answer", metric, mode, run, noAnswer)
	}
	// A ledger the replica cannot reach refuses, retryably: safe for the
	// bound, but it is not the budget speaking, so it is shown with the
	// replicas' last log line (on a shared PostgreSQL, 3 replicas × 32
	// pooled connections can exhaust max_connections).
	if n := refused - kinds["budget"]; n > 0 {
		t.Logf("%s %s run %d: WARNING %d refusals were not budget refusals (%v): the ledger was unavailable (fail closed)", metric, mode, run, n, kinds)
		for i := range clusterReplicas {
			t.Logf("r%d last log line: %.400s", i, logTail(g.rep(i).logs.String(), 1))
		}
	}
	if !stored || len(recs) != len(reqs) {
		t.Errorf("%s %s run %d: %d usage records for %d requests", metric, mode, run, len(recs), len(reqs))
	}
	if !released {
		t.Errorf("%s %s run %d: %d still reserved %v after the last answer: a reservation leaked (N4)", metric, mode, run, h.Reserved, govSettleWithin)
	}
	if h.Spent > bound {
		t.Errorf("%s %s run %d: spent %d over the %s bound %d (limit %d): replicas overspent a shared budget (N1/N2)", metric, mode, run, h.Spent, mode, bound, limit)
	}
	if h.Spent != expected {
		t.Errorf("%s %s run %d: spent %d, but the settlement rule over the %d admitted records gives %d", metric, mode, run, h.Spent, admitted, expected)
	}
	if int(calls) != admitted || seen != admitted {
		t.Errorf("%s %s run %d: %d upstream calls (%d client ids) for %d admitted requests: a refused request reached the provider, or an admitted one did not", metric, mode, run, calls, seen, admitted)
	}
	if kinds["budget"] != refusedClient {
		t.Errorf("%s %s run %d: %d records refused by the budget, %d billing_error 429s at the client", metric, mode, run, kinds["budget"], refusedClient)
	}
	if refused == 0 || admitted == 0 {
		t.Errorf("%s %s run %d: %d admitted, %d refused: the run does not discriminate", metric, mode, run, admitted, refused)
	}
	if metric == "cost" && h.Spent < sumCost {
		t.Errorf("%s %s run %d: spent %d is below the priced records' cost %d", metric, mode, run, h.Spent, sumCost)
	}
}

// usageCost is the project's cost_micro_usd from GET /admin/v1/usage.
func (g *govCluster) usageCost(project string) string {
	g.t.Helper()
	var rows []struct {
		Cost *int64 `json:"cost_micro_usd"`
	}
	g.admin(0, "GET", "/usage?group_by=project&project="+project, nil, &rows)
	if len(rows) != 1 || rows[0].Cost == nil {
		return fmt.Sprintf("none (%d rows)", len(rows))
	}
	return fmt.Sprint(*rows[0].Cost)
}

// TestGovKillReservations: N5. Ten streams held on r1 under a cost budget,
// r1 killed with SIGKILL: within the lease and one sweep the budget's
// reserved returns to 0 and spent takes the ten ceilings; restarted on the
// same spool, r1 replays the ten as interrupted records, which settle
// late: spent moves to their settled partial usage, once.
//
// With allotments on (the default), a short request first has r1 granted
// an allotment, so the streams take holds from it (any admitted while a
// grant is in flight reserve directly): the reclaim charges the allotment
// whole (its unused part too), and once the restarted replica, under a new
// replica id, has stored every replayed record, it corrects the allotment
// to their actuals. With allotments off, each stream's ceiling is
// corrected to its record as it is stored. Either way spent ends at the
// records' settlement exactly, nothing reserved.
func TestGovKillReservations(t *testing.T) {
	needCeilings(t, messagesBody(2000, true))
	t.Run("reservations", func(t *testing.T) { testGovKill(t, "off") })
	t.Run("allotments", func(t *testing.T) { testGovKill(t, "on") })
}

func testGovKill(t *testing.T, allotments string) {
	g := newGovCluster(t, govOpts{fakeArgs: func(int) []string { return govFakeArgs(100) }, env: []string{"TOLLGATE_BUDGET_ALLOTMENTS=" + allotments}})
	s := govScope{project: "kill", user: "u", workspace: "ws-kill"}
	id := g.createPolicy(0, "budgets", map[string]any{"scope_type": "project", "scope_id": s.project, "metric": "cost", "limit_usd": "100", "window": "day", "mode": "soft"})
	g.waitVisible(s, id)
	tok := g.issue(s)
	const victim, held = 1, 10
	body := messagesBody(2000, true)
	var warm string
	if allotments == "on" {
		// One short request first, so r1 holds an allotment when the
		// streams arrive and they take holds from it: without it they all
		// reserve directly while the grant is in flight.
		a := g.send(context.Background(), victim, tok, govReq{body: body, stream: true, events: 3, clientID: "kill-warm"})
		if a.status != 200 || !a.complete {
			t.Fatalf("warm-up request: status %d, complete %v (%v)", a.status, a.complete, a.err)
		}
		warm = a.reqID
		if !testkit.Poll(5*time.Second, 20*time.Millisecond, func() bool {
			return g.headroom(0, s, id).Allotted > 0 && len(g.records(s.project)) == 1
		}) {
			t.Fatalf("no allotment on r%d, or the warm-up's record not stored, within 5 s", victim)
		}
	}
	var wg sync.WaitGroup
	answers := make([]govAnswer, held)
	for n := range held {
		wg.Go(func() {
			answers[n] = g.send(context.Background(), victim, tok, govReq{body: body, stream: true, events: 200, gap: 100 * time.Millisecond, clientID: fmt.Sprintf("kill-%d", n)})
		})
	}
	var before govHeadroom
	if !testkit.Poll(10*time.Second, 20*time.Millisecond, func() bool {
		before = g.headroom(0, s, id)
		return g.fakes[victim].counters().StreamsActive >= held && before.Reserved > 0
	}) {
		t.Fatalf("%d streams not held on r%d within 10 s: the fake has %d open, the budget reserves %d", held, victim, g.fakes[victim].counters().StreamsActive, before.Reserved)
	}
	// The reservations may still be arriving: read again once they are all in.
	testkit.Poll(2*time.Second, 20*time.Millisecond, func() bool {
		before = g.headroom(0, s, id)
		return before.Reserved%held == 0 && before.Reserved >= int64(held)
	})
	g.rep(victim).kill9()
	killed := time.Now()
	bound := govLease + 2*govHeartbeat + time.Second
	var after govHeadroom
	var reclaimedAt time.Duration = -1
	var samples []string
	reclaimed := testkit.Poll(bound+5*time.Second, 50*time.Millisecond, func() bool {
		after = g.headroom(0, s, id)
		if len(samples) < 3 || after.Reserved == 0 {
			samples = append(samples, fmt.Sprintf("%v: spent %d reserved %d", time.Since(killed).Round(10*time.Millisecond), after.Spent, after.Reserved))
		}
		return after.Reserved == 0
	})
	if reclaimed {
		reclaimedAt = time.Since(killed)
	}
	wg.Wait()
	var cutAtClient int
	for _, a := range answers {
		if !a.complete {
			cutAtClient++
		}
	}
	t.Logf("kill -9 of r%d holding %d streams (%d cut at the client): before, spent %d reserved %d (%d of it allotted ahead); reserved back to 0 %s after the kill (lease %v, heartbeat %v, bound %v); then spent %d (samples %v)",
		victim, held, cutAtClient, before.Spent, before.Reserved, before.Allotted, orNever(reclaimedAt), govLease, govHeartbeat, bound, after.Spent, samples)
	if !reclaimed || reclaimedAt > bound {
		t.Errorf("the killed replica's reservations were released %s after the kill, want within the lease + one sweep (%v): reserved %d", orNever(reclaimedAt), bound, after.Reserved)
	}
	if want := before.Spent + before.Reserved; after.Spent != want {
		t.Errorf("after the reclaim spent is %d, want %d (%d before + the %d held ceilings): a crashed replica's streams are charged at their ceiling", after.Spent, want, before.Spent, before.Reserved)
	}

	// Restarted on its spool, r1 replays the ten started requests.
	g.start(victim)
	var recs []govRecord
	replayed := testkit.Poll(govSettleWithin, 100*time.Millisecond, func() bool {
		recs = slices.DeleteFunc(g.records(s.project), func(r govRecord) bool { return r.id == warm })
		return len(recs) >= held
	})
	outcomes := map[string]int{}
	ids := map[string]int{}
	// The replayed records settle late: spent moves from each ceiling to
	// what the record says was used (its metered partial usage, or the
	// ceiling when it has none), once.
	settled := before.Spent
	for _, r := range recs {
		outcomes[r.outcome]++
		ids[r.id]++
		settled += r.settlement("cost", r.reservedMicroUSD)
	}
	restarted := time.Now()
	var final govHeadroom
	var correctedAt time.Duration = -1
	if testkit.Poll(govSettleWithin, 100*time.Millisecond, func() bool {
		final = g.headroom(0, s, id)
		return final.Spent == settled && final.Reserved == 0
	}) {
		correctedAt = time.Since(restarted)
	}
	time.Sleep(time.Second) // a late double settlement would land by now
	final = g.headroom(0, s, id)
	t.Logf("restart of r%d on its spool: %d records (outcomes %v, %d distinct ids); spent %d reserved %d (the settlement rule over the replayed records: %d, reached %s after the records)",
		victim, len(recs), outcomes, len(ids), final.Spent, final.Reserved, settled, orNever(correctedAt))
	if !replayed || len(recs) != held || len(ids) != held {
		t.Errorf("%d records for the %d streams the kill cut (%d distinct), want one each after the spool replay", len(recs), held, len(ids))
	}
	if outcomes["interrupted"] != held {
		t.Errorf("outcomes %v, want %d interrupted", outcomes, held)
	}
	if final.Spent != settled || final.Spent > after.Spent || final.Reserved != 0 {
		t.Errorf("after the replay spent %d reserved %d, want %d (the replayed records' settlement, at most the %d reclaimed) and nothing reserved: a replayed record charged twice or not at all", final.Spent, final.Reserved, settled, after.Spent)
	}
}

// TestGovFirstContact: N12. A new workspace with a budget of exactly one
// ceiling; its first 8 requests arrive at once over the three replicas:
// exactly 1 is admitted, in hard and in soft mode, 5 times each.
func TestGovFirstContact(t *testing.T) {
	g := newGovCluster(t, govOpts{fakeArgs: func(int) []string { return govFakeArgs(100) }})
	body := messagesBody(1000, true)
	ceiling := g.probeCeiling("cost", body)
	const first = 8
	for _, mode := range []string{"hard", "soft"} {
		var counts []int
		for trial := range govRuns {
			s := govScope{project: "first", user: "u", workspace: fmt.Sprintf("ws-first-%s-%d", mode, trial)}
			id := g.createPolicy(trial%clusterReplicas, "budgets", map[string]any{"scope_type": "workspace", "scope_id": s.workspace, "metric": "cost", "limit": ceiling, "window": "day", "mode": mode})
			g.waitVisible(s, id)
			tok := g.issue(s)
			calls0 := g.upstreamCalls()
			release := make(chan struct{})
			answers := make([]govAnswer, first)
			var wg sync.WaitGroup
			for n := range first {
				wg.Go(func() {
					<-release
					answers[n] = g.send(context.Background(), n%clusterReplicas, tok, govReq{body: body, stream: true, events: 30, gap: 50 * time.Millisecond})
				})
			}
			close(release)
			wg.Wait()
			ok := 0
			statuses := map[int]int{}
			for _, a := range answers {
				statuses[a.status]++
				if a.status == http.StatusOK {
					ok++
				}
			}
			h, _, released := g.waitReleased(0, s, id, govSettleWithin)
			calls := g.upstreamCalls() - calls0
			counts = append(counts, ok)
			t.Logf("first contact %s trial %d: budget %d (one ceiling); %d simultaneous first requests: statuses %v, %d upstream calls; spent %d reserved %d", mode, trial, ceiling, first, statuses, calls, h.Spent, h.Reserved)
			if ok != 1 || calls != 1 {
				t.Errorf("first contact %s trial %d: %d admitted, %d upstream calls, want exactly 1 (N12)", mode, trial, ok, calls)
			}
			if !released || h.Spent > ceiling {
				t.Errorf("first contact %s trial %d: spent %d reserved %d, want ≤ %d and 0", mode, trial, h.Spent, h.Reserved, ceiling)
			}
		}
		t.Logf("first contact %s: admitted per trial %v", mode, counts)
	}
}

// rateWindow is how long the rate proofs count after the limit first
// refused.
const rateWindow = 60 * time.Second

// TestGovRateRedis: N16 across replicas. RPM 60 and TPM limits on two
// workspaces, three replicas sharing Redis, no waiting inside tollgate;
// 10 requests a second each, spread over the replicas, until a minute
// past the first refusal. In every 60 s window from then, admitted
// requests are within ±2 of 60 and admitted tokens within one request's
// tokens of the TPM.
func TestGovRateRedis(t *testing.T) {
	redisURL := govRedis(t)
	prefix := redisPrefix(t, redisURL)
	const output = 100
	g := newGovCluster(t, govOpts{
		env:      []string{"TOLLGATE_REDIS_URL=" + redisURL, "TOLLGATE_REDIS_PREFIX=" + prefix, "TOLLGATE_RATE_MAX_WAIT=0"},
		fakeArgs: func(int) []string { return govFakeArgs(output) },
	})
	perRequest := int64(govFakeInput + output)
	const rpm = 60
	tpm := 60 * perRequest
	rpmScope := govScope{project: "rate", user: "u", workspace: "ws-rpm"}
	tpmScope := govScope{project: "rate", user: "u", workspace: "ws-tpm"}
	rpmID := g.createPolicy(0, "limits", map[string]any{"scope_type": "workspace", "scope_id": rpmScope.workspace, "rpm": rpm})
	tpmID := g.createPolicy(1, "limits", map[string]any{"scope_type": "workspace", "scope_id": tpmScope.workspace, "tpm": tpm})
	g.waitVisible(rpmScope, rpmID)
	g.waitVisible(tpmScope, tpmID)
	for i := range clusterReplicas {
		code, body := g.readyz(i, true)
		t.Logf("r%d /readyz: %d %s", i, code, body)
	}
	var wg sync.WaitGroup
	var rpmRun, tpmRun rateRun
	rpmTok, tpmTok := g.issue(rpmScope), g.issue(tpmScope)
	wg.Go(func() { rpmRun = g.driveRate(rpmTok, "rpm", 10, 80*time.Second) })
	wg.Go(func() { tpmRun = g.driveRate(tpmTok, "tpm", 10, 80*time.Second) })
	wg.Wait()

	lo, hi := rpmRun.windowCounts(rateWindow)
	t.Logf("RPM %d through Redis: %d requests over %v, statuses %v; first refusal %v in; admitted in the first 60 s %d (burst included); in each 60 s window after the first refusal %d..%d",
		rpm, len(rpmRun.answers), rpmRun.span.Round(time.Second), rpmRun.statuses(), rpmRun.first429.Round(time.Millisecond), rpmRun.fromStart(rateWindow), lo, hi)
	rpmRun.check(t, "rpm")
	if lo < rpm-2 || hi > rpm+2 {
		t.Errorf("RPM %d across 3 replicas through Redis admitted %d..%d requests per 60 s window after the first refusal, want within ±2 of %d (N16, N2)", rpm, lo, hi, rpm)
	}
	tlo, thi := tpmRun.windowCounts(rateWindow)
	t.Logf("TPM %d (%d tokens a request) through Redis: %d requests, statuses %v; first refusal %v in; admitted tokens per 60 s window after it %d..%d",
		tpm, perRequest, len(tpmRun.answers), tpmRun.statuses(), tpmRun.first429.Round(time.Millisecond), int64(tlo)*perRequest, int64(thi)*perRequest)
	tpmRun.check(t, "tpm")
	if int64(tlo)*perRequest < tpm-perRequest || int64(thi)*perRequest > tpm+perRequest {
		t.Errorf("TPM %d admitted %d..%d tokens per 60 s window after the first refusal, want within one request (%d tokens) of it", tpm, int64(tlo)*perRequest, int64(thi)*perRequest, perRequest)
	}
	for _, r := range []struct {
		name string
		run  rateRun
	}{{"rpm", rpmRun}, {"tpm", tpmRun}} {
		if seen := g.seenIDs(r.name + "-"); seen != r.run.admitted() {
			t.Errorf("%s: %d requests reached the provider, %d were admitted", r.name, seen, r.run.admitted())
		}
	}
}

// TestGovRedisDown: N17. Redis unreachable (TOLLGATE_REDIS_URL points at
// a closed loopback port). A soft RPM 60 falls back to each replica's own
// limiter at 60/3; a hard RPM 60 refuses every request with the retryable
// shape and calls nothing upstream.
func TestGovRedisDown(t *testing.T) {
	g := newGovCluster(t, govOpts{
		env:      []string{"TOLLGATE_REDIS_URL=redis://" + closedPort(t) + "/0", "TOLLGATE_REDIS_PREFIX=tgtest:down:", "TOLLGATE_RATE_MAX_WAIT=0"},
		fakeArgs: func(int) []string { return govFakeArgs(100) },
	})
	const rpm = 60
	soft := govScope{project: "down", user: "u", workspace: "ws-soft"}
	hard := govScope{project: "down", user: "u", workspace: "ws-hard"}
	softID := g.createPolicy(0, "limits", map[string]any{"scope_type": "workspace", "scope_id": soft.workspace, "rpm": rpm, "mode": "soft"})
	hardID := g.createPolicy(0, "limits", map[string]any{"scope_type": "workspace", "scope_id": hard.workspace, "rpm": rpm, "mode": "hard"})
	g.waitVisible(soft, softID)
	g.waitVisible(hard, hardID)
	for i := range clusterReplicas {
		code, body := g.readyz(i, true)
		t.Logf("r%d /readyz with Redis down: %d %s", i, code, body)
	}

	hardTok := g.issue(hard)
	var hardAnswers []govAnswer
	for n := range 9 {
		hardAnswers = append(hardAnswers, g.send(context.Background(), n%clusterReplicas, hardTok, govReq{body: messagesBody(100, false), clientID: fmt.Sprintf("hard-%d", n)}))
	}
	var hardRefused, noRetryAfter int
	for _, a := range hardAnswers {
		if a.status == http.StatusTooManyRequests {
			hardRefused++
			if a.retryAfter == "" {
				noRetryAfter++
			}
		}
	}
	hardSeen := g.seenIDs("hard-")
	t.Logf("hard RPM %d with Redis down: %d requests, statuses %v, %d without Retry-After, %d reached the provider; first body %.200s",
		rpm, len(hardAnswers), statusesOf(hardAnswers), noRetryAfter, hardSeen, hardAnswers[0].body)
	if hardRefused != len(hardAnswers) || noRetryAfter > 0 || hardSeen > 0 {
		t.Errorf("a hard limit with Redis down must refuse every request retryably (429 + Retry-After) with no upstream call: statuses %v, %d without Retry-After, %d upstream", statusesOf(hardAnswers), noRetryAfter, hardSeen)
	}

	run := g.driveRate(g.issue(soft), "soft", 10, 45*time.Second)
	const window = 30 * time.Second
	share := float64(rpm) / clusterReplicas * window.Minutes()
	var total int
	for i := range clusterReplicas {
		r := run.replica(i)
		lo, hi := r.windowCounts(window)
		total += lo
		t.Logf("soft RPM %d with Redis down, r%d: %d requests, statuses %v, first refusal %v in; admitted per %v window after it %d..%d (a third of the limit: %.0f)",
			rpm, i, len(r.answers), r.statuses(), r.first429.Round(time.Millisecond), window, lo, hi, share)
		if r.first429 < 0 || float64(lo) < share-2 || float64(hi) > share+2 {
			t.Errorf("soft RPM %d with Redis down: r%d admitted %d..%d per %v, want the local fallback's limit/3 (%.0f ± 2)", rpm, i, lo, hi, window, share)
		}
	}
	t.Logf("soft RPM %d with Redis down: the three replicas together admitted at least %d per %v (the limit: %.0f)", rpm, total, window, float64(rpm)*window.Minutes())
}

// rateRun is what a steady load against a rate limit got.
type rateRun struct {
	answers []govAnswer
	start   time.Time
	span    time.Duration
	// first429 is when the first refused request was sent, after start;
	// negative if none was.
	first429 time.Duration
}

// driveRate sends perSecond requests a second with tok, round robin over
// the replicas, each in its own goroutine, until a minute and two seconds
// past the first refusal or for at most limit.
func (g *govCluster) driveRate(tok, name string, perSecond int, limit time.Duration) rateRun {
	run := rateRun{start: time.Now(), first429: -1}
	var mu sync.Mutex
	var firstRefused atomic.Int64 // ns after start, 0 none
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(perSecond))
	defer tick.Stop()
	body := messagesBody(100, false)
	for n := 0; ; n++ {
		elapsed := time.Since(run.start)
		if f := firstRefused.Load(); elapsed > limit || (f > 0 && elapsed > time.Duration(f)+rateWindow+2*time.Second) {
			break
		}
		wg.Go(func() {
			a := g.send(context.Background(), n%clusterReplicas, tok, govReq{body: body, clientID: fmt.Sprintf("%s-%d", name, n)})
			if a.status == http.StatusTooManyRequests {
				firstRefused.CompareAndSwap(0, int64(a.sent.Sub(run.start)))
			}
			mu.Lock()
			run.answers = append(run.answers, a)
			mu.Unlock()
		})
		<-tick.C
	}
	wg.Wait()
	run.span = time.Since(run.start)
	slices.SortFunc(run.answers, func(a, b govAnswer) int { return a.sent.Compare(b.sent) })
	for _, a := range run.answers {
		if a.status == http.StatusTooManyRequests {
			run.first429 = a.sent.Sub(run.start)
			break
		}
	}
	return run
}

// replica is the part of the run sent to replica i, its own first refusal.
func (r rateRun) replica(i int) rateRun {
	out := rateRun{start: r.start, span: r.span, first429: -1}
	for _, a := range r.answers {
		if a.replica != i {
			continue
		}
		out.answers = append(out.answers, a)
		if a.status == http.StatusTooManyRequests && out.first429 < 0 {
			out.first429 = a.sent.Sub(r.start)
		}
	}
	return out
}

// windowCounts are the fewest and most requests admitted in a window of
// length w starting at the first refusal or any later whole second, as
// long as the run covers the window.
func (r rateRun) windowCounts(w time.Duration) (lo, hi int) {
	if r.first429 < 0 {
		return 0, 0
	}
	lo = -1
	last := r.answers[len(r.answers)-1].sent.Sub(r.start)
	for from := r.first429; from+w <= last; from += time.Second {
		n := 0
		for _, a := range r.answers {
			if at := a.sent.Sub(r.start); at >= from && at < from+w && a.status/100 == 2 {
				n++
			}
		}
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	return max(lo, 0), hi
}

// fromStart counts the requests admitted in the first w.
func (r rateRun) fromStart(w time.Duration) int {
	n := 0
	for _, a := range r.answers {
		if a.sent.Sub(r.start) < w && a.status/100 == 2 {
			n++
		}
	}
	return n
}

func (r rateRun) admitted() int { return statusesOf(r.answers)[http.StatusOK] }

func (r rateRun) statuses() map[int]int { return statusesOf(r.answers) }

// check fails the test for answers other than 200 and tollgate's own 429
// with Retry-After, and for a run in which the limit never refused.
func (r rateRun) check(t *testing.T, name string) {
	t.Helper()
	var odd, noRetryAfter int
	for _, a := range r.answers {
		switch {
		case a.status == http.StatusOK:
		case a.status == http.StatusTooManyRequests:
			if a.retryAfter == "" {
				noRetryAfter++
			}
		default:
			odd++
		}
	}
	if r.first429 < 0 {
		t.Errorf("%s: the limit never refused in %v: the run proves nothing (statuses %v)", name, r.span, r.statuses())
	}
	if odd > 0 || noRetryAfter > 0 {
		t.Errorf("%s: statuses %v, %d 429s without Retry-After: want only 200 and 429 with Retry-After", name, r.statuses(), noRetryAfter)
	}
}

func statusesOf(as []govAnswer) map[int]int {
	m := map[int]int{}
	for _, a := range as {
		m[a.status]++
	}
	return m
}

// TestGovHarness checks the harness the proofs stand on, with no policy:
// each replica's fake reports its own output size, and the X-Fake-*
// headers reach the provider through the registry's forward_headers (else
// the races' fault mix would silently be all successes).
func TestGovHarness(t *testing.T) {
	g := newGovCluster(t, govOpts{fakeArgs: func(i int) []string { return govFakeArgs(govRaceOutputs[i]) }})
	s := govScope{project: "harness", user: "u", workspace: "ws-harness"}
	tok := g.issue(s)
	body := messagesBody(govMaxTokens, true)
	var got []string
	for i := range clusterReplicas {
		ok := g.send(context.Background(), i, tok, govReq{body: body, stream: true, events: 3, clientID: fmt.Sprintf("harness-ok-%d", i)})
		failed := g.send(context.Background(), i, tok, govReq{body: body, stream: true, fault: "status=500", clientID: fmt.Sprintf("harness-500-%d", i)})
		cut := g.send(context.Background(), i, tok, govReq{body: body, stream: true, events: 5, fault: "cut=1", clientID: fmt.Sprintf("harness-cut-%d", i)})
		got = append(got, fmt.Sprintf("r%d: %d complete=%v, %d, %d complete=%v", i, ok.status, ok.complete, failed.status, cut.status, cut.complete))
		if !ok.complete || failed.status != http.StatusInternalServerError || cut.complete {
			t.Errorf("r%d: plain stream %d (complete %v), status=500 fault %d, cut=1 fault complete %v: the X-Fake-* headers do not reach the fake", i, ok.status, ok.complete, failed.status, cut.complete)
		}
	}
	if !g.waitRecords(s.project, 3*clusterReplicas, govSettleWithin) {
		t.Fatalf("the harness requests were not all recorded")
	}
	outputs := map[int64]string{}
	for _, r := range g.records(s.project) {
		if r.outcome == "ok" {
			outputs[r.tokens-govFakeInput] = r.id
		}
	}
	t.Logf("harness: %v; outputs of the complete streams %v", got, slices.Sorted(maps.Keys(outputs)))
	for _, o := range govRaceOutputs {
		if _, ok := outputs[int64(o)]; !ok {
			t.Errorf("no complete stream reported %d output tokens: each replica's fake should report its own (%v)", o, govRaceOutputs)
		}
	}
}
