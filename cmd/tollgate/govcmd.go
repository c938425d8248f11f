package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/store"
)

// openPolicies opens the policy store on db: the same store, and so the
// same validation, as the admin API (serve passes it as proxy.Config.Policies).
func openPolicies(ctx context.Context, db *store.DB) (*governance.Store, error) {
	st, err := governance.OpenStore(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("policy store: %w", err)
	}
	return st, nil
}

// scopeSynopsis is the scope flags of every policy command.
const scopeSynopsis = "(--platform | --project P | --user U | --workspace W | --token T)"

// policyFlags are the flags the policy commands share.
type policyFlags struct {
	platform                         *bool
	project, user, workspace, token  *string
	model, harness, mode, id, format *string
	cost, tokens, window, unpriced   *string
	tz                               *string
	alerts, rpm, tpm, concurrency    *string
}

func bindPolicyFlags(f commandFlags) *policyFlags {
	return &policyFlags{
		platform:    f.Bool("platform", "the platform: every request"),
		project:     f.String("project", "", "a project id"),
		user:        f.String("user", "", "a user id"),
		workspace:   f.String("workspace", "", "a workspace id"),
		token:       f.String("token", "", "a token id (tok_...)"),
		model:       f.String("model", "", "only models matching this glob (claude-*)"),
		harness:     f.String("harness", "", "only this harness"),
		mode:        f.String("mode", "", "hard, soft (the default) or, for budgets, alert; kept on an update when not given"),
		id:          f.String("id", "", "update this policy rather than the one with the same selector"),
		format:      f.String("format", "table", "table or json"),
		cost:        f.String("cost", "", "cost limit in US dollars (50, 0.25)"),
		tokens:      f.String("tokens", "", "token limit: input and output tokens"),
		window:      f.String("window", "", "day, week, month (UTC unless --tz), lifetime or rolling:<duration> (rolling:5h)"),
		tz:          f.String("tz", "", "IANA time zone whose midnight a day, week or month window starts at (Europe/Berlin; default UTC)"),
		unpriced:    f.String("unpriced", "", "refuse (the default) or fallback: what a cost budget does with a model without a price"),
		alerts:      f.String("alerts", "", "alert thresholds in percent, comma separated (default 50,80,100)"),
		rpm:         f.String("rpm", "", "requests per minute"),
		tpm:         f.String("tpm", "", "tokens per minute"),
		concurrency: f.String("concurrency", "", "requests in flight at once"),
	}
}

// scope reads the scope flags: exactly one when required, else at most
// one (none: every scope).
func (p *policyFlags) scope(cmd string, required bool) (governance.ScopeType, string, error) {
	var t governance.ScopeType
	var id string
	n := 0
	if *p.platform {
		t, n = governance.ScopePlatform, n+1
	}
	for _, s := range []struct {
		t governance.ScopeType
		v string
	}{{governance.ScopeProject, *p.project}, {governance.ScopeUser, *p.user}, {governance.ScopeWorkspace, *p.workspace}, {governance.ScopeToken, *p.token}} {
		if s.v != "" {
			t, id, n = s.t, s.v, n+1
		}
	}
	if n > 1 || (required && n == 0) {
		return "", "", usageErr("%s needs exactly one of --platform, --project P, --user U, --workspace W, --token T", cmd)
	}
	return t, id, nil
}

// policyCount parses a whole-number flag; "" is not given.
func policyCount(name, v string) (int64, bool, error) {
	if v == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false, usageErr("--%s %q is not a whole number of 0 or more", name, v)
	}
	return n, true, nil
}

func (p *policyFlags) checkFormat() error {
	if *p.format != "table" && *p.format != "json" {
		return usageErr("unknown format %q: use table or json", *p.format)
	}
	return nil
}

// policyCommand parses a policy command's flags and runs do with the store.
func policyCommand(ctx context.Context, group string, args []string, stdout, stderr io.Writer,
	do func(st *governance.Store, sub string, p *policyFlags, pos []string, a cliAudit) error) error {
	sub, err := subcommand(group, args, stdout)
	if err != nil {
		return err
	}
	var o options
	fs := newFlags(group+" "+sub, stderr)
	o.bind(fs)
	p := bindPolicyFlags(newCommandFlags(fs))
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	if err := p.checkFormat(); err != nil {
		return err
	}
	return withDeps(ctx, &o, stderr, func(d *deps) error {
		st, err := openPolicies(ctx, d.db)
		if err != nil {
			return err
		}
		a, err := openCLIAudit(ctx, d, stderr)
		if err != nil {
			return err
		}
		return do(st, sub, p, pos, a)
	})
}

func onePolicyID(cmd string, pos []string) (string, error) {
	if len(pos) != 1 {
		return "", usageErr("%s needs one policy id", cmd)
	}
	return pos[0], nil
}

func writePolicyJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdBudget(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return policyCommand(ctx, "budget", args, stdout, stderr, func(st *governance.Store, sub string, p *policyFlags, pos []string, a cliAudit) error {
		switch sub {
		case "set":
			return budgetSet(ctx, st, p, pos, stdout, a)
		case "list":
			t, id, err := p.scope("budget list", false)
			if err != nil {
				return err
			}
			bs, err := st.ListBudgets(ctx, governance.Filter{ScopeType: t, ScopeID: id})
			if err != nil {
				return err
			}
			return writeBudgets(stdout, *p.format, bs)
		case "show":
			id, err := onePolicyID("budget show", pos)
			if err != nil {
				return err
			}
			b, err := st.Budget(ctx, id)
			if err != nil {
				return err
			}
			return writeBudgets(stdout, *p.format, []governance.Budget{b})
		case "delete":
			id, err := onePolicyID("budget delete", pos)
			if err != nil {
				return err
			}
			if err := st.DeleteBudget(ctx, id); err != nil {
				return err
			}
			a.policyDeleted("budget", id)
			fmt.Fprintf(stdout, "deleted %s\n", id)
			return nil
		}
		return usageErr("unknown budget subcommand %q", sub)
	})
}

// budgetSet creates the budget the flags describe, or updates the one with
// the same scope, model, harness, metric and window (or --id), keeping its
// id and so its spend (governance.Store.SetBudget, the same as the admin
// API's POST). Flags not given keep an updated budget's values.
func budgetSet(ctx context.Context, st *governance.Store, p *policyFlags, pos []string, stdout io.Writer, a cliAudit) error {
	if len(pos) != 0 {
		return usageErr("budget set takes no arguments, only flags (got %q)", pos[0])
	}
	// Every flag at fault is named at once.
	var probs []string
	t, sid, err := p.scope("budget set", true)
	if err != nil {
		probs = append(probs, err.Error())
	}
	b := governance.Budget{Selector: governance.Selector{ScopeType: t, ScopeID: sid, Model: *p.model, Harness: *p.harness}}
	switch {
	case (*p.cost == "") == (*p.tokens == ""):
		probs = append(probs, "budget set needs one of --cost USD or --tokens N")
	case *p.cost != "":
		if b.Limit, err = governance.ParseUSD(*p.cost); err != nil {
			probs = append(probs, "--cost: "+err.Error())
		}
		b.Metric = governance.MetricCost
	default:
		if b.Limit, _, err = policyCount("tokens", *p.tokens); err != nil {
			probs = append(probs, err.Error())
		}
		b.Metric = governance.MetricTokens
	}
	if *p.window == "" {
		probs = append(probs, "budget set needs --window (day, week, month, lifetime or rolling:<duration>)")
	} else if b.Window, err = governance.ParseWindow(*p.window); err != nil {
		probs = append(probs, "--window: "+err.Error())
	}
	if *p.tz != "" {
		if w, err := b.Window.InZone(*p.tz); err != nil {
			probs = append(probs, "--tz: "+err.Error())
		} else {
			b.Window = w
		}
	}
	if *p.alerts != "" {
		b.Alerts = []int{}
		for _, a := range splitList(*p.alerts) {
			v, err := strconv.Atoi(a)
			if err != nil {
				probs = append(probs, fmt.Sprintf("--alerts %q is not a comma list of percentages such as 50,80,100", *p.alerts))
				break
			}
			b.Alerts = append(b.Alerts, v)
		}
	}
	if len(probs) > 0 {
		return usageErr("%s", strings.Join(probs, "; "))
	}
	b.Mode, b.Unpriced, b.ID = governance.Mode(*p.mode), *p.unpriced, *p.id
	b, res, err := st.SetBudget(ctx, b)
	if err != nil {
		if *p.id != "" && errors.Is(err, governance.ErrNotFound) {
			return fmt.Errorf("--id: %w", err)
		}
		return err
	}
	a.policySet("budget", b, res)
	fmt.Fprintf(stdout, "%s %s: %s\n", res, b.ID, describeBudget(b))
	return nil
}

func budgetLimit(b governance.Budget) string {
	if b.Metric == governance.MetricCost {
		return governance.FormatUSD(b.Limit)
	}
	return strconv.FormatInt(b.Limit, 10) + " tokens"
}

func describeBudget(b governance.Budget) string {
	return fmt.Sprintf("%s, %s per %s, %s", b.Selector, budgetLimit(b), b.Window, b.Mode)
}

func policyScope(t governance.ScopeType, id string) string {
	return strings.TrimSpace(string(t) + " " + id)
}

func intsText(v []int) string {
	if len(v) == 0 {
		return "-"
	}
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func writeBudgets(w io.Writer, format string, bs []governance.Budget) error {
	if format == "json" {
		return writePolicyJSON(w, nonNilPolicies(bs))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSCOPE\tMODEL\tHARNESS\tLIMIT\tWINDOW\tMODE\tALERTS %\tUNPRICED")
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, policyScope(b.ScopeType, b.ScopeID), dash(b.Model), dash(b.Harness),
			budgetLimit(b), b.Window, b.Mode, intsText(b.Alerts), dash(b.Unpriced))
	}
	return tw.Flush()
}

func nonNilPolicies[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func cmdLimit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return policyCommand(ctx, "limit", args, stdout, stderr, func(st *governance.Store, sub string, p *policyFlags, pos []string, a cliAudit) error {
		switch sub {
		case "set":
			return limitSet(ctx, st, p, pos, stdout, a)
		case "list":
			t, id, err := p.scope("limit list", false)
			if err != nil {
				return err
			}
			ls, err := st.ListLimits(ctx, governance.Filter{ScopeType: t, ScopeID: id})
			if err != nil {
				return err
			}
			return writeLimits(stdout, *p.format, ls)
		case "show":
			id, err := onePolicyID("limit show", pos)
			if err != nil {
				return err
			}
			l, err := st.Limit(ctx, id)
			if err != nil {
				return err
			}
			return writeLimits(stdout, *p.format, []governance.Limit{l})
		case "delete":
			id, err := onePolicyID("limit delete", pos)
			if err != nil {
				return err
			}
			if err := st.DeleteLimit(ctx, id); err != nil {
				return err
			}
			a.policyDeleted("limit", id)
			fmt.Fprintf(stdout, "deleted %s\n", id)
			return nil
		}
		return usageErr("unknown limit subcommand %q", sub)
	})
}

// limitSet creates the rate limit the flags describe, or updates the one
// with the same scope, model and harness (or --id); a rate not given keeps
// an updated limit's value (--tpm 0 removes one).
func limitSet(ctx context.Context, st *governance.Store, p *policyFlags, pos []string, stdout io.Writer, a cliAudit) error {
	if len(pos) != 0 {
		return usageErr("limit set takes no arguments, only flags (got %q)", pos[0])
	}
	t, sid, err := p.scope("limit set", true)
	if err != nil {
		return err
	}
	l := governance.Limit{ID: *p.id, Selector: governance.Selector{ScopeType: t, ScopeID: sid, Model: *p.model, Harness: *p.harness},
		Mode: governance.Mode(*p.mode), RPM: governance.KeepRate, TPM: governance.KeepRate, Concurrency: governance.KeepRate}
	given := 0
	for _, r := range []struct {
		name, v string
		dst     *int64
	}{{"rpm", *p.rpm, &l.RPM}, {"tpm", *p.tpm, &l.TPM}, {"concurrency", *p.concurrency, &l.Concurrency}} {
		n, ok, err := policyCount(r.name, r.v)
		if err != nil {
			return err
		}
		if ok {
			*r.dst, given = n, given+1
		}
	}
	if given == 0 {
		return usageErr("limit set needs at least one of --rpm N, --tpm N, --concurrency N")
	}
	l, res, err := st.SetLimit(ctx, l)
	if err != nil {
		if *p.id != "" && errors.Is(err, governance.ErrNotFound) {
			return fmt.Errorf("--id: %w", err)
		}
		return err
	}
	a.policySet("limit", l, res)
	fmt.Fprintf(stdout, "%s %s: %s, %s\n", res, l.ID, l.Selector, describeRates(l))
	return nil
}

func describeRates(l governance.Limit) string {
	var parts []string
	for _, r := range []struct {
		name string
		v    int64
	}{{"rpm", l.RPM}, {"tpm", l.TPM}, {"concurrency", l.Concurrency}} {
		if r.v > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r.name, r.v))
		}
	}
	return strings.Join(parts, ", ") + ", " + string(l.Mode)
}

func rateText(v int64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatInt(v, 10)
}

func writeLimits(w io.Writer, format string, ls []governance.Limit) error {
	if format == "json" {
		return writePolicyJSON(w, nonNilPolicies(ls))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSCOPE\tMODEL\tHARNESS\tRPM\tTPM\tCONCURRENCY\tMODE")
	for _, l := range ls {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.ID, policyScope(l.ScopeType, l.ScopeID), dash(l.Model), dash(l.Harness),
			rateText(l.RPM), rateText(l.TPM), rateText(l.Concurrency), l.Mode)
	}
	return tw.Flush()
}

func cmdModels(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return policyCommand(ctx, "models", args, stdout, stderr, func(st *governance.Store, sub string, p *policyFlags, pos []string, a cliAudit) error {
		switch sub {
		case "allow", "deny", "alias":
			return ruleSet(ctx, st, governance.RuleKind(sub), p, pos, stdout, a)
		case "list":
			t, id, err := p.scope("models list", false)
			if err != nil {
				return err
			}
			rs, err := st.ListRules(ctx, governance.Filter{ScopeType: t, ScopeID: id})
			if err != nil {
				return err
			}
			if *p.format == "json" {
				return writePolicyJSON(stdout, nonNilPolicies(rs))
			}
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSCOPE\tKIND\tPATTERN\tTARGET")
			for _, r := range rs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, policyScope(r.ScopeType, r.ScopeID), r.Kind, r.Pattern, dash(r.Target))
			}
			return tw.Flush()
		case "delete":
			id, err := onePolicyID("models delete", pos)
			if err != nil {
				return err
			}
			if err := st.DeleteRule(ctx, id); err != nil {
				return err
			}
			a.policyDeleted("model_rule", id)
			fmt.Fprintf(stdout, "deleted %s\n", id)
			return nil
		}
		return usageErr("unknown models subcommand %q", sub)
	})
}

// ruleSet adds an allow or deny rule unless the scope has it already, or
// sets an alias, replacing the target of the scope's alias of that name
// (governance.Store.SetRule).
func ruleSet(ctx context.Context, st *governance.Store, kind governance.RuleKind, p *policyFlags, pos []string, stdout io.Writer, a cliAudit) error {
	cmd := "models " + string(kind)
	want := 1
	if kind == governance.RuleAlias {
		want = 2
	}
	if len(pos) != want {
		if want == 2 {
			return usageErr("models alias needs NAME and TARGET: a request for NAME is sent as TARGET")
		}
		return usageErr("%s needs one model PATTERN (a glob such as 'claude-sonnet-*'; quote it)", cmd)
	}
	t, sid, err := p.scope(cmd, true)
	if err != nil {
		return err
	}
	r := governance.ModelRule{ScopeType: t, ScopeID: sid, Kind: kind, Pattern: pos[0]}
	if kind == governance.RuleAlias {
		r.Target = pos[1]
	}
	r, res, err := st.SetRule(ctx, r)
	if err != nil {
		return err
	}
	a.policySet("model_rule", r, res)
	desc := fmt.Sprintf("%s %s %s", policyScope(t, sid), r.Kind, r.Pattern)
	if r.Target != "" {
		desc += " -> " + r.Target
	}
	fmt.Fprintf(stdout, "%s %s: %s\n", res, r.ID, desc)
	return nil
}

// resolvePolicies lists the policies in force for a project and user, with
// each budget's headroom when the ledger can tell it.
func resolvePolicies(ctx context.Context, d *deps, project, user string) ([]governance.PolicyState, error) {
	st, err := openPolicies(ctx, d.db)
	if err != nil {
		return nil, err
	}
	p, err := st.Load(ctx)
	if err != nil {
		return nil, err
	}
	states := p.InForce(governance.Scope{Project: project, User: user}, "")
	var budgets []governance.Budget
	for _, s := range states {
		if s.Budget != nil {
			budgets = append(budgets, *s.Budget)
		}
	}
	if len(budgets) == 0 {
		return states, nil
	}
	l, err := governance.OpenLedger(ctx, d.db, governance.LedgerConfig{Log: d.log})
	if err != nil {
		return nil, err
	}
	hs, err := l.Headroom(ctx, budgets)
	if err != nil {
		return nil, err
	}
	for i := range hs {
		for j := range states {
			if states[j].Budget != nil && states[j].Budget.ID == hs[i].Budget.ID {
				states[j].Headroom = &hs[i]
			}
		}
	}
	return states, nil
}

func writePolicyStates(w io.Writer, states []governance.PolicyState) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POLICY\tID\tSCOPE\tAPPLIES TO\tRULE\tSPENT\tRESERVED\tRESETS")
	for _, s := range states {
		switch {
		case s.Rule != nil:
			r := s.Rule
			rule := string(r.Kind) + " " + r.Pattern
			if r.Target != "" {
				rule += " -> " + r.Target
			}
			fmt.Fprintf(tw, "model rule\t%s\t%s\t-\t%s\t-\t-\t-\n", r.ID, policyScope(r.ScopeType, r.ScopeID), rule)
		case s.Limit != nil:
			l := s.Limit
			fmt.Fprintf(tw, "rate limit\t%s\t%s\t%s\t%s\t-\t-\t-\n", l.ID, policyScope(l.ScopeType, l.ScopeID), appliesTo(l.Selector), describeRates(*l))
		case s.Budget != nil:
			b := s.Budget
			spent, reserved, resets := "-", "-", "-"
			if h := s.Headroom; h != nil {
				spent, reserved = budgetAmount(*b, h.Spent), budgetAmount(*b, h.Reserved)
				if !h.ResetAt.IsZero() {
					resets = fmtTime(h.ResetAt)
					if local := b.Window.LocalText(h.ResetAt); local != "" {
						resets += " (" + local + ")"
					}
				}
			}
			fmt.Fprintf(tw, "budget\t%s\t%s\t%s\t%s per %s, %s\t%s\t%s\t%s\n", b.ID, policyScope(b.ScopeType, b.ScopeID), appliesTo(b.Selector),
				budgetLimit(*b), b.Window, b.Mode, spent, reserved, resets)
		}
	}
	return tw.Flush()
}

func budgetAmount(b governance.Budget, v int64) string {
	if b.Metric == governance.MetricCost {
		return governance.FormatUSD(v)
	}
	return strconv.FormatInt(v, 10)
}

func appliesTo(s governance.Selector) string {
	var parts []string
	if s.Model != "" {
		parts = append(parts, "model "+s.Model)
	}
	if s.Harness != "" {
		parts = append(parts, "harness "+s.Harness)
	}
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, ", ")
}
