package governance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/registry"
)

// The one entry point the proxy calls (governance.md §3): model policy,
// then rate limits, then budgets, each refusing before any cost is paid.

// PolicySource serves the current policies (*Watcher).
type PolicySource interface {
	Current() *Policies
}

// Config wires a Governor.
type Config struct {
	Policies PolicySource
	// Ledger enforces budgets; nil refuses (retryably) every request a
	// budget applies to.
	Ledger *Ledger
	// Limiter enforces rate limits; nil uses an in-process limiter.
	Limiter Limiter
	// Prices bound and price reservations.
	Prices *metering.PriceTable
	// CurrentPrices, if set, is read per request instead of Prices: serve's
	// price table is hot-reloaded.
	CurrentPrices func() *metering.PriceTable
	Log           *slog.Logger
}

// budgetLedger is what the Governor needs of a *Ledger; an interface so a
// nil *Ledger is told apart from a missing one once, in New.
type budgetLedger interface {
	Reserve(ctx context.Context, requestID string, charges []Charge) (*Refusal, error)
	Release(ctx context.Context, requestID string) error
	Headroom(ctx context.Context, budgets []Budget) ([]Headroom, error)
	Allotted(charges []Charge) ([]metering.Hold, bool)
	Unhold(holds []metering.Hold)
	FinishHolds(holds []metering.Hold, rec *metering.Record)
	ReturnUnused(ctx context.Context, charges []Charge) bool
}

// Governor admits requests under every policy that applies to them.
type Governor struct {
	cfg     Config
	ledger  budgetLedger
	limiter Limiter
	log     *slog.Logger
	// memo is the current snapshot's matches (matchFor).
	memo atomic.Pointer[matchMemo]
}

// New returns a Governor.
func New(cfg Config) *Governor {
	g := &Governor{cfg: cfg, limiter: cfg.Limiter, log: cfg.Log}
	if cfg.Ledger != nil {
		g.ledger = cfg.Ledger
	}
	if g.limiter == nil {
		g.limiter = NewLocalLimiter(LocalConfig{})
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	return g
}

// Request is what the Governor needs to know about a request.
type Request struct {
	RequestID string
	Scope     Scope
	// Dialect is the registry dialect name, Provider the credential's.
	Dialect, Provider string
	// Model is the model the client asked for (body, or Gemini's path).
	Model string
	Body  []byte
	// Metered is false for paths that produce no usage (count_tokens,
	// model lists): only a light RPM bucket of their own applies to them
	// (unmetered.go); budgets, TPM, concurrency and model rules do not.
	Metered bool
	// Candidates are the providers the attempt loop may send this request
	// to, the first one first, when there is more than one (failover); nil
	// means Provider alone, as sent. Budgets reserve the largest ceiling
	// over them, each at the model its model_map sends, so a failover to a
	// dearer provider cannot spend past a hard budget's reservation.
	Candidates []*registry.Provider
}

// Admission is an admitted request's hold on its policies. A nil
// *Admission (no policy applied) is valid and its methods do nothing.
type Admission struct {
	// Model is the model to send: Request.Model, or an alias's target.
	Model string
	// Reserved says a budget reservation is held under the request id; the
	// usage record settles it (metering.Record.Reserved).
	Reserved bool
	// Allotted are the holds taken from this replica's allotments instead
	// (metering.Record.Allotted); a request has these or Reserved.
	Allotted []metering.Hold
	// ReservedMicroUSD is the cost reserved (the largest over cost budgets).
	ReservedMicroUSD int64

	id     string
	ledger budgetLedger
	permit Permit
	// ended makes Finish and Release count once, whichever comes first.
	ended atomic.Bool
}

// releaseTimeout bounds the ledger call of Release. It runs on a context
// that outlives the request's: a client that left must not leave its
// reservation held until the sweeper.
const releaseTimeout = 5 * time.Second

// policies returns the current snapshot, nil when there is no source.
func (g *Governor) policies() *Policies {
	if g == nil || g.cfg.Policies == nil {
		return nil
	}
	return g.cfg.Policies.Current()
}

// match is what one policy snapshot says of requests of a scope for a
// model: the model to send, or that model policy refuses it; and the
// limits and budgets that apply to the model sent (an alias cannot dodge a
// budget on its target). Its slices are shared by every request it
// answers and never written.
type match struct {
	model   string
	refused bool
	limits  []Limit
	budgets []Budget
}

// matchKey is a request's scope and requested model.
type matchKey struct {
	sc    Scope
	model string
}

// maxMatches bounds the matches remembered per snapshot: about one per
// token and model in use. When full, the memo starts again empty.
const maxMatches = 4096

// matchMemo remembers the matches of one snapshot. A new snapshot (every
// reload, so every policy change) gets a new, empty memo, so no request
// is ever judged by policies older than the snapshot it read.
//
// Hits read an immutable map without a lock (an RWMutex's reader count is
// an atomic write to one cache line by every request on every core);
// misses go to dirty, under mu, which is published as a new read map once
// it holds a quarter as many as read does, so the copies cost amortised
// O(1) per match added.
type matchMemo struct {
	p    *Policies
	read atomic.Pointer[map[matchKey]*match]
	mu   sync.Mutex
	// dirty holds matches not yet in read.
	dirty map[matchKey]*match
}

func newMatchMemo(p *Policies) *matchMemo {
	mm := &matchMemo{p: p}
	mm.read.Store(new(map[matchKey]*match))
	return mm
}

// fewPolicies is the size of a snapshot under which matchFor first checks
// whether any policy is of sc's scopes: cheaper than a memo look-up, which
// hashes six strings, when none is.
const fewPolicies = 16

// matchFor returns p's match for sc and model: RulesFor, ResolveModel,
// LimitsFor and BudgetsFor, each a scan of every policy with a slice
// allocated, computed once per snapshot, scope and model instead of per
// request. nil means no policy applies.
func (g *Governor) matchFor(p *Policies, sc Scope, model string) *match {
	if len(p.Budgets)+len(p.Limits)+len(p.Rules) <= fewPolicies && !ofScope(p, sc) {
		return nil
	}
	mm := g.memo.Load()
	if mm == nil || mm.p != p {
		if mm != nil && mm.p.Version > p.Version {
			// A request that read an older snapshot than the memo's.
			return computeMatch(p, sc, model)
		}
		fresh := newMatchMemo(p)
		// A racing request may have installed p's memo first: use that.
		if g.memo.CompareAndSwap(mm, fresh) {
			mm = fresh
		} else if mm = g.memo.Load(); mm == nil || mm.p != p {
			return computeMatch(p, sc, model)
		}
	}
	k := matchKey{sc, model}
	read := *mm.read.Load()
	if m := read[k]; m != nil {
		return m
	}
	mm.mu.Lock()
	defer mm.mu.Unlock()
	if m := mm.dirty[k]; m != nil {
		return m
	}
	m := computeMatch(p, sc, model)
	// The key outlives the request: its strings may be views of a
	// request buffer (house rule 12).
	k = matchKey{Scope{Project: strings.Clone(sc.Project), User: strings.Clone(sc.User), Workspace: strings.Clone(sc.Workspace),
		TokenID: strings.Clone(sc.TokenID), Harness: strings.Clone(sc.Harness)}, strings.Clone(model)}
	if m.model == model {
		m.model = k.model // an alias's target is the snapshot's
	}
	read = *mm.read.Load()
	if len(read)+len(mm.dirty) >= maxMatches {
		read, mm.dirty = nil, nil
		mm.read.Store(new(map[matchKey]*match))
	}
	if mm.dirty == nil {
		mm.dirty = map[matchKey]*match{}
	}
	mm.dirty[k] = m
	if len(mm.dirty) >= max(len(read)/4, 1) {
		next := make(map[matchKey]*match, len(read)+len(mm.dirty))
		maps.Copy(next, read)
		maps.Copy(next, mm.dirty)
		mm.read.Store(&next)
		mm.dirty = nil
	}
	return m
}

// ofScope reports whether any policy of p is of one of sc's scopes (its
// model and harness aside): if none is, none applies.
func ofScope(p *Policies, sc Scope) bool {
	in := func(t ScopeType, id string) bool { return t == ScopePlatform || (id != "" && sc.id(t) == id) }
	for i := range p.Budgets {
		if in(p.Budgets[i].ScopeType, p.Budgets[i].ScopeID) {
			return true
		}
	}
	for i := range p.Limits {
		if in(p.Limits[i].ScopeType, p.Limits[i].ScopeID) {
			return true
		}
	}
	for i := range p.Rules {
		if in(p.Rules[i].ScopeType, p.Rules[i].ScopeID) {
			return true
		}
	}
	return false
}

// computeMatch is matchFor without the memo.
func computeMatch(p *Policies, sc Scope, model string) *match {
	m := &match{model: model}
	if rules := p.RulesFor(sc); len(rules) > 0 {
		target, ref := ResolveModel(rules, sc, model)
		if ref != nil {
			m.refused = true
			return m
		}
		m.model = target
	}
	m.limits = p.LimitsFor(sc, m.model)
	m.budgets = p.BudgetsFor(sc, m.model)
	return m
}

// Admit checks model policy, rate limits and budgets, in that order, and
// reserves. A refusal is returned as a *Refusal error; it has reserved and
// acquired nothing. Another error is ctx's: the caller left while waiting.
//
// A request no policy applies to returns (nil, nil) without allocating:
// with governance off that is every request.
func (g *Governor) Admit(ctx context.Context, req Request) (*Admission, error) {
	if !req.Metered {
		return nil, g.admitUnmetered(ctx, req)
	}
	p := g.policies()
	if p.Empty() {
		return nil, nil
	}
	m := g.matchFor(p, req.Scope, req.Model)
	if m == nil {
		return nil, nil
	}
	if m.refused {
		// Not kept: a refusal is built for each request it answers.
		_, ref := ResolveModel(p.RulesFor(req.Scope), req.Scope, req.Model)
		return nil, ref
	}
	model, limits, budgets := m.model, m.limits, m.budgets
	if len(limits) == 0 && len(budgets) == 0 {
		if model == req.Model {
			return nil, nil
		}
		return &Admission{Model: model}, nil
	}
	a := &Admission{Model: model, id: req.RequestID, permit: NoPermit}

	// Charges are computed before anything is held: an unpriced model
	// refused here has cost no rate-limit slot.
	charges, capped, ref := g.charges(req, model, budgets)
	if ref != nil {
		return nil, ref
	}
	if len(charges) > 0 && g.ledger == nil && capped {
		return nil, unavailable(budgets, "the budget ledger is not configured")
	}

	if len(limits) > 0 {
		permit, ref, err := g.limiter.Acquire(ctx, req.RequestID, limits, PacingTokens(req.Body))
		switch {
		case ref != nil:
			return nil, ref
		case err != nil && ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil:
			// The limiter failed in a way it did not shape: fail closed,
			// retryably.
			g.log.Warn("rate limiter failed", "request_id", req.RequestID, "err", err)
			return nil, &Refusal{Kind: RefuseUnavailable, RetryAfter: UnavailableRetryAfter,
				Message: "tollgate: cannot check this request's rate limits right now; retry shortly"}
		}
		if permit != nil {
			a.permit = permit
		}
	}

	if len(charges) > 0 && g.ledger != nil {
		if holds, ok := g.ledger.Allotted(charges); ok {
			a.Allotted, a.ledger = holds, g.ledger
			a.ReservedMicroUSD = maxCost(charges)
			return a, nil
		}
		ref, err := g.ledger.Reserve(ctx, req.RequestID, charges)
		if ref != nil && g.ledger.ReturnUnused(ctx, charges) {
			ref, err = g.ledger.Reserve(ctx, req.RequestID, charges)
		}
		switch {
		case ref != nil:
			a.permit.Release(0)
			return nil, ref
		case err != nil && ctx.Err() != nil:
			a.permit.Release(0)
			return nil, ctx.Err()
		case err != nil && capped:
			a.permit.Release(0)
			g.log.Warn("budget ledger unreachable: capped request refused", "request_id", req.RequestID, "err", err)
			return nil, unavailable(budgets, "the budget ledger cannot be reached")
		case err != nil:
			// Alert-only budgets never refuse, not even for an outage.
			g.log.Warn("budget ledger unreachable: alert-only budgets not accounted", "request_id", req.RequestID, "err", err)
		default:
			a.Reserved = true
			a.ledger = g.ledger
			a.ReservedMicroUSD = maxCost(charges)
		}
	}
	return a, nil
}

// ceilingOver bounds req over every provider it may reach: each part of
// the ceiling is the largest of the candidates' (each at the model its
// model_map sends), and one unpriced candidate leaves it unpriced (it
// could be the one that answers).
func ceilingOver(prices *metering.PriceTable, req Request, model string, fallback bool) Ceiling {
	if len(req.Candidates) == 0 {
		return EstimateCeiling(prices, req.Dialect, req.Provider, model, req.Body, fallback)
	}
	var out Ceiling
	for i, p := range req.Candidates {
		c := EstimateCeiling(prices, req.Dialect, p.Name, p.MapModel(model), req.Body, fallback)
		if i == 0 {
			out = c
			continue
		}
		out.InputTokens = max(out.InputTokens, c.InputTokens)
		out.OutputTokens = max(out.OutputTokens, c.OutputTokens)
		out.WebSearches = max(out.WebSearches, c.WebSearches)
		out.CostMicroUSD = max(out.CostMicroUSD, c.CostMicroUSD)
		out.Priced = out.Priced && c.Priced
	}
	return out
}

// maxCost is the largest cost charge: what the record shows as reserved.
func maxCost(charges []Charge) int64 {
	var m int64
	for _, c := range charges {
		if c.Budget.Metric == MetricCost {
			m = max(m, c.Amount)
		}
	}
	return m
}

// charges returns what the request reserves against each budget, and
// whether any of them can refuse (hard or soft: an outage of the ledger
// then refuses too). An unpriced model under a cost budget that refuses
// unpriced models is refused here.
func (g *Governor) charges(req Request, model string, budgets []Budget) ([]Charge, bool, *Refusal) {
	if len(budgets) == 0 {
		return nil, false, nil
	}
	prices := g.cfg.Prices
	if g.cfg.CurrentPrices != nil {
		prices = g.cfg.CurrentPrices()
	}
	ceil := ceilingOver(prices, req, model, false)
	var fallback *Ceiling
	capped := false
	charges := make([]Charge, 0, len(budgets))
	for _, b := range budgets {
		if b.Mode != ModeAlert {
			capped = true
		}
		if b.Metric == MetricTokens {
			charges = append(charges, Charge{Budget: b, Amount: ceil.Tokens()})
			continue
		}
		c := ceil
		if !c.Priced && b.Unpriced == UnpricedFallback {
			if fallback == nil {
				f := ceilingOver(prices, req, model, true)
				fallback = &f
			}
			c = *fallback
		}
		if !c.Priced {
			if b.Mode == ModeAlert {
				// Nothing to account in dollars; alerts never refuse.
				continue
			}
			return nil, capped, &Refusal{
				Kind:   RefuseBudget,
				Policy: b.policyName(),
				Limit:  b.Limit,
				Unit:   b.unit(),
				Message: fmt.Sprintf("tollgate: model %q has no price, and the cost budget of %s refuses unpriced models; use a priced model or ask an administrator to price it (or set the budget's unpriced to fallback)",
					model, b.Selector.String()),
			}
		}
		charges = append(charges, Charge{Budget: b, Amount: c.CostMicroUSD})
	}
	return charges, capped, nil
}

// unavailable is the retryable refusal of a capped request the ledger
// cannot check: failing open would let a capped scope spend unbounded.
func unavailable(budgets []Budget, why string) *Refusal {
	r := &Refusal{Kind: RefuseUnavailable, RetryAfter: UnavailableRetryAfter,
		Message: "tollgate: " + why + ", so it cannot check this request's budget; retry shortly"}
	for _, b := range budgets {
		if b.Mode != ModeAlert {
			r.Policy = b.policyName()
			break
		}
	}
	return r
}

// Release gives everything back: the request was not forwarded.
func (a *Admission) Release(ctx context.Context) {
	if a == nil || !a.ended.CompareAndSwap(false, true) {
		return
	}
	if a.permit != nil {
		a.permit.Release(0)
	}
	if len(a.Allotted) > 0 && a.ledger != nil {
		a.ledger.Unhold(a.Allotted)
	}
	if a.Reserved && a.ledger != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		// A failed release is reclaimed by the sweeper once this
		// reservation's lease runs out; nothing better can be done here.
		if err := a.ledger.Release(rctx, a.id); err != nil {
			slog.Default().Warn("budget release failed; the sweeper will reclaim it", "request_id", a.id, "err", err)
		}
	}
}

// Finish ends an admitted request once its record is final: it frees the
// concurrency slot, corrects TPM to the record's tokens and frees its
// allotment holds. The budget settles with the record in the ledger's
// transaction, not here.
func (a *Admission) Finish(rec *metering.Record) {
	if a == nil || !a.ended.CompareAndSwap(false, true) {
		return
	}
	if len(a.Allotted) > 0 && a.ledger != nil {
		a.ledger.FinishHolds(a.Allotted, rec)
	}
	if a.permit == nil {
		return
	}
	// TPM is corrected by the settlement rule's token count: the usage,
	// 0 when nothing can have been billed, else unknown (-1: the paced
	// estimate stands).
	tokens := int64(-1)
	if rec != nil {
		if _, t, _, ok := actuals(rec); ok {
			tokens = t
		}
	}
	a.permit.Release(tokens)
}

// PolicyState is one policy in force for a scope, with its headroom.
type PolicyState struct {
	Kind     string     `json:"kind"` // budget, limit, model_rule
	Budget   *Budget    `json:"budget,omitempty"`
	Limit    *Limit     `json:"limit,omitempty"`
	Rule     *ModelRule `json:"rule,omitempty"`
	Headroom *Headroom  `json:"headroom,omitempty"`
}

// ErrNoLedger is Effective's error for budgets it cannot show headroom of.
var ErrNoLedger = errors.New("governance: budgets are configured but no budget ledger is")

// Effective lists the policies in force for sc (and model, when not empty)
// with each budget's headroom: the resolution view, computed by the same
// matching as enforcement. With no model, policies narrowed to a model are
// listed too: they apply to some of the scope's requests.
func (g *Governor) Effective(ctx context.Context, sc Scope, model string) ([]PolicyState, error) {
	p := g.policies()
	if p.Empty() {
		return nil, nil
	}
	matches := func(s Selector) bool {
		if model == "" {
			s.Model = ""
		}
		return s.Matches(sc, model)
	}
	var out []PolicyState
	var budgets []Budget
	for _, b := range p.Budgets {
		if matches(b.Selector) {
			budgets = append(budgets, b)
		}
	}
	if len(budgets) > 0 {
		if g.ledger == nil {
			return nil, ErrNoLedger
		}
		hs, err := g.ledger.Headroom(ctx, budgets)
		if err != nil {
			return nil, err
		}
		for i := range hs {
			out = append(out, PolicyState{Kind: "budget", Budget: &hs[i].Budget, Headroom: &hs[i]})
		}
	}
	for _, l := range p.Limits {
		if matches(l.Selector) {
			out = append(out, PolicyState{Kind: "limit", Limit: &l})
		}
	}
	for _, r := range p.RulesFor(sc) {
		out = append(out, PolicyState{Kind: "model_rule", Rule: &r})
	}
	return out, nil
}

// Rate-limit states, for /readyz and metrics.
const (
	RateLimitsShared        = "shared"
	RateLimitsLocalFallback = "local-fallback"
	RateLimitsLocal         = "local"
)

// RateLimits says where rate limits are counted now: in Redis (shared), in
// this process because Redis is unreachable (local-fallback: limit / live
// replicas), or in this process by configuration (local).
func (g *Governor) RateLimits() string {
	if g == nil {
		return ""
	}
	if r, ok := g.limiter.(*RedisLimiter); ok {
		if r.Healthy() {
			return RateLimitsShared
		}
		return RateLimitsLocalFallback
	}
	return RateLimitsLocal
}
