package proxy

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/tollgate/tollgate/governance"
)

// governanceRoutes mounts /budgets, /limits and /model-rules: the same
// governance.Store methods the CLI calls. Bodies are decoded strictly (an
// unknown field is a 400 naming it, so a misspelt setting is never
// silently dropped: governance.md N10) and every problem is reported at
// once.
func (s *Server) governanceRoutes(g *adminMux) {
	st := s.cfg.Policies
	// Before /budgets/:id, which would otherwise take "effective" as an id.
	g.Get("/budgets/effective", func(c *fiber.Ctx) error {
		sc := governance.Scope{Project: c.Query("project"), User: c.Query("user"), Workspace: c.Query("workspace"),
			TokenID: c.Query("token"), Harness: c.Query("harness")}
		ps, err := s.effectivePolicies(c.UserContext(), sc, c.Query("model"))
		if err != nil {
			return err
		}
		return c.JSON(fiber.Map{"policies": ps})
	})
	mountPolicies(s, g, "/budgets", policyAPI[governance.Budget]{
		one: "budget", many: "budgets", audit: "budget",
		decode: decodeBudgetBody, set: st.SetBudget, put: st.PutBudget, get: st.Budget, list: st.ListBudgets, del: st.DeleteBudget,
		render: func(b governance.Budget) any { return renderBudget(b) },
	})
	mountPolicies(s, g, "/limits", policyAPI[governance.Limit]{
		one: "limit", many: "limits", audit: "limit",
		decode: decodeLimitBody, set: st.SetLimit, put: st.PutLimit, get: st.Limit, list: st.ListLimits, del: st.DeleteLimit,
	})
	mountPolicies(s, g, "/model-rules", policyAPI[governance.ModelRule]{
		one: "rule", many: "rules", audit: "model_rule",
		decode: decodeRuleBody, set: st.SetRule, put: st.PutRule, get: st.Rule, list: st.ListRules, del: st.DeleteRule,
	})
}

// resultHeader names what a POST of a policy did: created, updated or
// unchanged (governance.SetResult).
const resultHeader = "X-Tollgate-Result"

// policyAPI is one kind of policy as the admin API serves it.
type policyAPI[T any] struct {
	// one and many are the answer's keys: {"budget":…}, {"budgets":[…]}.
	one, many string
	// audit is the noun of its audit log actions (budget.set, ...).
	audit string
	// decode reads a request body into a policy with the given id ("" for
	// a create), or returns every problem with it.
	decode func(c *fiber.Ctx, id string) (T, error)
	// set is POST's: create, or update the policy of the same identity in
	// place (the CLI's set), so posting one policy twice never makes two.
	set  func(context.Context, T) (T, governance.SetResult, error)
	put  func(context.Context, T) (T, error)
	get  func(context.Context, string) (T, error)
	list func(context.Context, governance.Filter) ([]T, error)
	del  func(context.Context, string) error
	// render shapes a policy for an answer; nil: as it is.
	render func(T) any
}

func mountPolicies[T any](s *Server, g *adminMux, path string, p policyAPI[T]) {
	render := p.render
	if render == nil {
		render = func(v T) any { return v }
	}
	// POST answers 201 for a policy it created and 200 for one it updated
	// (or found unchanged), with X-Tollgate-Result saying which. The body
	// keeps the shape of every other answer, {"budget":{…}}, which clients
	// decode as a map of policies.
	g.Post(path, func(c *fiber.Ctx) error {
		v, err := p.decode(c, "")
		if err != nil {
			return err
		}
		v, res, err := p.set(c.UserContext(), v)
		if err != nil {
			return err
		}
		status := fiber.StatusOK
		if res == governance.SetCreated {
			status = fiber.StatusCreated
		}
		if res != governance.SetUnchanged {
			s.refreshPolicies(c.UserContext())
		}
		s.audited(c, s.trail().PolicySet(c.UserContext(), p.audit, v, string(res)))
		c.Set(resultHeader, string(res))
		return c.Status(status).JSON(fiber.Map{p.one: render(v)})
	})
	g.Get(path, func(c *fiber.Ctx) error {
		f := governance.Filter{ScopeType: governance.ScopeType(c.Query("scope_type")), ScopeID: c.Query("scope_id")}
		if f.ScopeType != "" && !slices.Contains(governance.ScopeTypes, f.ScopeType) {
			return newError(kindBadRequest, "scope_type %q is not one of platform, project, user, workspace, token", f.ScopeType)
		}
		vs, err := p.list(c.UserContext(), f)
		if err != nil {
			return err
		}
		out := make([]any, len(vs))
		for i, v := range vs {
			out[i] = render(v)
		}
		return c.JSON(fiber.Map{p.many: out})
	})
	g.Get(path+"/:id", func(c *fiber.Ctx) error {
		v, err := p.get(c.UserContext(), c.Params("id"))
		if err != nil {
			return err
		}
		return c.JSON(fiber.Map{p.one: render(v)})
	})
	g.Put(path+"/:id", func(c *fiber.Ctx) error {
		v, err := p.decode(c, c.Params("id"))
		if err != nil {
			return err
		}
		if v, err = p.put(c.UserContext(), v); err != nil {
			return err
		}
		s.audited(c, s.trail().PolicySet(c.UserContext(), p.audit, v, "replaced"))
		s.refreshPolicies(c.UserContext())
		return c.JSON(fiber.Map{p.one: render(v)})
	})
	g.Delete(path+"/:id", func(c *fiber.Ctx) error {
		if err := p.del(c.UserContext(), c.Params("id")); err != nil {
			return err
		}
		s.audited(c, s.trail().PolicyDeleted(c.UserContext(), p.audit, c.Params("id")))
		s.refreshPolicies(c.UserContext())
		return c.JSON(fiber.Map{"deleted": c.Params("id")})
	})
}

// refreshPolicies makes this replica enforce a write before its answer
// returns. The write is committed either way, so a failed reload is logged,
// not answered: the watcher's poll retries it.
func (s *Server) refreshPolicies(ctx context.Context) {
	if w := s.cfg.PolicyWatcher; w != nil {
		if err := w.Refresh(ctx); err != nil {
			s.log.Warn("policy reload after an admin write failed; the next poll retries", "err", err)
		}
	}
}

// budgetBody is what POST and PUT /budgets accept. A cost limit is given
// as limit (integer micro-USD) or limit_usd ("50.00"), not both.
type budgetBody struct {
	ScopeType governance.ScopeType `json:"scope_type"`
	ScopeID   string               `json:"scope_id"`
	Model     string               `json:"model"`
	Harness   string               `json:"harness"`
	Metric    governance.Metric    `json:"metric"`
	Limit     *int64               `json:"limit"`
	LimitUSD  *string              `json:"limit_usd"`
	Window    string               `json:"window"`
	// TZ is the IANA zone of a calendar window, as "month@Europe/Berlin"
	// in window says it; the budget is answered with the zone in window.
	TZ       string          `json:"tz"`
	Mode     governance.Mode `json:"mode"`
	Unpriced string          `json:"unpriced"`
	Alerts   []int           `json:"alert_thresholds"`
}

func decodeBudgetBody(c *fiber.Ctx, id string) (governance.Budget, error) {
	var in budgetBody
	if err := decodeJSON(c, &in); err != nil {
		return governance.Budget{}, err
	}
	b := governance.Budget{ID: id, Selector: governance.Selector{ScopeType: in.ScopeType, ScopeID: in.ScopeID, Model: in.Model, Harness: in.Harness},
		Metric: in.Metric, Mode: in.Mode, Unpriced: in.Unpriced, Alerts: in.Alerts}
	// Problems found here stand in for Validate's own message on the same
	// field, so each field is named once: a placeholder value keeps Validate
	// quiet about it.
	var probs []string
	switch {
	case in.Limit != nil && in.LimitUSD != nil:
		probs = append(probs, "set limit (micro-USD, or tokens) or limit_usd (dollars), not both")
		b.Limit = 1
	case in.LimitUSD != nil && in.Metric == governance.MetricTokens:
		probs = append(probs, "limit_usd is for cost budgets; a tokens budget's limit is a number of tokens")
		b.Limit = 1
	case in.LimitUSD != nil:
		v, err := governance.ParseUSD(*in.LimitUSD)
		if err != nil {
			probs = append(probs, "limit_usd: "+err.Error())
			v = 1
		}
		b.Limit = v
	case in.Limit != nil:
		b.Limit = *in.Limit
	default:
		probs = append(probs, "limit is required (micro-USD for cost, tokens for tokens; or limit_usd in dollars for cost)")
		b.Limit = 1
	}
	if in.Window != "" {
		w, err := governance.ParseWindow(in.Window)
		if err != nil {
			probs = append(probs, err.Error())
			w = governance.Window{Kind: governance.WindowDay}
		}
		b.Window = w
	}
	if in.TZ != "" {
		if w, err := b.Window.InZone(in.TZ); err != nil {
			probs = append(probs, "tz: "+err.Error())
		} else {
			b.Window = w
		}
	}
	if err := b.Validate(); err != nil {
		probs = append(probs, strings.TrimPrefix(err.Error(), governance.ErrInvalid.Error()+": "))
	}
	if len(probs) > 0 {
		return b, fmt.Errorf("%w: %s", governance.ErrInvalid, strings.Join(probs, "; "))
	}
	return b, nil
}

// budgetOut is a budget as answered: a cost budget carries its limit in
// dollars beside the micro-USD.
type budgetOut struct {
	governance.Budget
	LimitUSD string `json:"limit_usd,omitempty"`
}

func renderBudget(b governance.Budget) budgetOut {
	out := budgetOut{Budget: b}
	if b.Metric == governance.MetricCost {
		out.LimitUSD = usdText(b.Limit)
	}
	return out
}

// usdText renders micro-USD exactly, with at least two decimals: 50000000
// is "50.00", 1234567 is "1.234567" (FormatUSD rounds to cents).
func usdText(micro int64) string {
	sign := ""
	if micro < 0 {
		sign, micro = "-", -micro
	}
	s := strings.TrimRight(fmt.Sprintf("%06d", micro%1_000_000), "0")
	for len(s) < 2 {
		s += "0"
	}
	return fmt.Sprintf("%s%d.%s", sign, micro/1_000_000, s)
}

// decodeLimitBody reads a limit. For a POST (id ""), a rate left out is
// governance.KeepRate, so posting {"tpm": 1000} to a scope that has an RPM
// limit changes its TPM alone, as "limit set --tpm 1000" does; a PUT
// replaces the limit, and a rate left out is none.
func decodeLimitBody(c *fiber.Ctx, id string) (governance.Limit, error) {
	var in struct {
		ScopeType   governance.ScopeType `json:"scope_type"`
		ScopeID     string               `json:"scope_id"`
		Model       string               `json:"model"`
		Harness     string               `json:"harness"`
		RPM         *int64               `json:"rpm"`
		TPM         *int64               `json:"tpm"`
		Concurrency *int64               `json:"concurrency"`
		Mode        governance.Mode      `json:"mode"`
	}
	if err := decodeJSON(c, &in); err != nil {
		return governance.Limit{}, err
	}
	l := governance.Limit{ID: id, Selector: governance.Selector{ScopeType: in.ScopeType, ScopeID: in.ScopeID, Model: in.Model, Harness: in.Harness},
		Mode: in.Mode}
	rate := func(v *int64) int64 {
		if v != nil {
			return *v
		}
		return 0
	}
	l.RPM, l.TPM, l.Concurrency = rate(in.RPM), rate(in.TPM), rate(in.Concurrency)
	// Validated as given (a rate left out counts as none), before a left-out
	// rate becomes KeepRate, which Validate would call negative.
	if err := l.Validate(); err != nil {
		return l, err
	}
	if id == "" {
		for _, r := range []struct {
			in  *int64
			out *int64
		}{{in.RPM, &l.RPM}, {in.TPM, &l.TPM}, {in.Concurrency, &l.Concurrency}} {
			if r.in == nil {
				*r.out = governance.KeepRate
			}
		}
	}
	return l, nil
}

func decodeRuleBody(c *fiber.Ctx, id string) (governance.ModelRule, error) {
	var in struct {
		ScopeType governance.ScopeType `json:"scope_type"`
		ScopeID   string               `json:"scope_id"`
		Kind      governance.RuleKind  `json:"kind"`
		Pattern   string               `json:"pattern"`
		Target    string               `json:"target"`
	}
	if err := decodeJSON(c, &in); err != nil {
		return governance.ModelRule{}, err
	}
	r := governance.ModelRule{ID: id, ScopeType: in.ScopeType, ScopeID: in.ScopeID, Kind: in.Kind, Pattern: in.Pattern, Target: in.Target}
	return r, r.Validate()
}

// policyStateOut is a governance.PolicyState as answered, its budget
// rendered like the /budgets answers.
type policyStateOut struct {
	Kind     string                `json:"kind"`
	Budget   *budgetOut            `json:"budget,omitempty"`
	Limit    *governance.Limit     `json:"limit,omitempty"`
	Rule     *governance.ModelRule `json:"rule,omitempty"`
	Headroom *governance.Headroom  `json:"headroom,omitempty"`
}

// effectivePolicies lists the policies in force for sc: the Governor's
// view, with each budget's headroom; without a Governor, the matching
// policies of this replica's snapshot (or the store's), without headroom.
func (s *Server) effectivePolicies(ctx context.Context, sc governance.Scope, model string) ([]policyStateOut, error) {
	var states []governance.PolicyState
	switch {
	case s.cfg.Governor != nil:
		var err error
		if states, err = s.cfg.Governor.Effective(ctx, sc, model); err != nil {
			return nil, err
		}
	case s.cfg.PolicyWatcher != nil:
		states = s.cfg.PolicyWatcher.Current().InForce(sc, model)
	case s.cfg.Policies != nil:
		p, err := s.cfg.Policies.Load(ctx)
		if err != nil {
			return nil, err
		}
		states = p.InForce(sc, model)
	}
	out := make([]policyStateOut, len(states))
	for i, st := range states {
		out[i] = policyStateOut{Kind: st.Kind, Limit: st.Limit, Rule: st.Rule, Headroom: st.Headroom}
		if st.Budget != nil {
			b := renderBudget(*st.Budget)
			out[i].Budget = &b
		}
	}
	return out, nil
}
