package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/governance"
)

// PolicyStore is what the Budgets page reads and writes: the store the
// CLI's "budget set" and the admin API call (*governance.Store), so a
// budget set here is validated, and found again by its identity, as it is
// there.
type PolicyStore interface {
	ListBudgets(ctx context.Context, f governance.Filter) ([]governance.Budget, error)
	ListLimits(ctx context.Context, f governance.Filter) ([]governance.Limit, error)
	ListRules(ctx context.Context, f governance.Filter) ([]governance.ModelRule, error)
	Budget(ctx context.Context, id string) (governance.Budget, error)
	SetBudget(ctx context.Context, b governance.Budget) (governance.Budget, governance.SetResult, error)
	DeleteBudget(ctx context.Context, id string) error
	SetLimit(ctx context.Context, l governance.Limit) (governance.Limit, governance.SetResult, error)
	DeleteLimit(ctx context.Context, id string) error
	SetRule(ctx context.Context, r governance.ModelRule) (governance.ModelRule, governance.SetResult, error)
	DeleteRule(ctx context.Context, id string) error
}

// HeadroomSource gives each budget's spent, reserved and allotted amounts
// in its current window (*governance.Ledger).
type HeadroomSource interface {
	Headroom(ctx context.Context, budgets []governance.Budget) ([]governance.Headroom, error)
}

// PolicyRefresher makes this replica enforce a write before the page
// answers (*governance.Watcher), as the admin API does.
type PolicyRefresher interface {
	Refresh(ctx context.Context) error
}

// budgetRow is one budget with its state in the current window. Amounts
// are shown in the budget's unit (dollars for cost, tokens otherwise) and
// carried raw in data attributes for browser tests.
type budgetRow struct {
	ID                          string
	Scope, Model, Harness       string
	Metric, Unit                string
	Spent, Reserved, Allotted   string
	Limit, Remaining            string
	SpentRaw, ReservedRaw       int64
	AllottedRaw, LimitRaw       int64
	Percent                     string // spent ÷ limit
	Committed                   string // (spent + reserved) ÷ limit
	High                        int64  // the bar turns to a warning from here (80 %)
	Window, WindowStart, Resets string
	Mode                        string
	Over                        bool
	DeleteURL                   string
}

type limitRow struct {
	ID, Scope, Model, Harness, Mode string
	RPM, TPM, Concurrency           string
	RPMRaw                          int64
	DeleteURL                       string
}

type ruleRow struct {
	ID, Scope, Kind, Pattern, Target string
	DeleteURL                        string
}

// policyForms are the page's three set forms, as typed.
type policyForms struct {
	Budget budgetForm
	Limit  limitForm
	Rule   ruleForm
}

// budgetForm is the set form, kept as typed so a refusal shows it again.
type budgetForm struct {
	ScopeType, ScopeID, Model, Harness string
	Metric, Limit, Window, Mode        string
	// TZ is the IANA zone of a calendar window; empty is UTC.
	TZ string
}

type budgetsData struct {
	ScopeType, ScopeID string
	ScopeTypes         []governance.ScopeType
	Budgets            []budgetRow
	Limits             []limitRow
	Rules              []ruleRow
	Form               budgetForm
	LimitForm          limitForm
	RuleForm           ruleForm
}

// budgetID is the shape of the ids governance.Store gives budgets.
var budgetID = regexp.MustCompile(`^bud_[a-z2-7]{16}$`)

func (c *Console) budgetsReady() bool { return c.cfg.Policies != nil && c.cfg.Ledger != nil }

func (c *Console) unavailable(w http.ResponseWriter, r *http.Request, s session, title, nav, what string) {
	c.render(w, r, http.StatusServiceUnavailable, "message", page{Title: title, Nav: nav, SignedIn: true, CSRF: s.csrf,
		Message: what + " is not available on this replica: it was started without it."})
}

func (c *Console) budgets(w http.ResponseWriter, r *http.Request, s session) {
	q := r.URL.Query()
	f := budgetForm{ScopeType: q.Get("scope_type"), ScopeID: strings.TrimSpace(q.Get("scope_id")), Metric: string(governance.MetricCost), Window: "month"}
	p := page{}
	// A flash names only what is shaped as a budget id: a crafted link
	// cannot make the page say something else.
	switch id := q.Get("set"); {
	case budgetID.MatchString(id):
		switch governance.SetResult(q.Get("result")) {
		case governance.SetCreated:
			p.Flash = fmt.Sprintf("Budget %s created.", id)
		case governance.SetUnchanged:
			p.Flash = fmt.Sprintf("Budget %s already said this: nothing changed.", id)
		default:
			p.Flash = fmt.Sprintf("Budget %s updated in place: its spend is kept.", id)
		}
	case budgetID.MatchString(q.Get("deleted")):
		p.Flash = fmt.Sprintf("Budget %s deleted.", q.Get("deleted"))
	case limitID.MatchString(q.Get("limit")):
		p.Flash = setFlash("Rate limit", q.Get("limit"), q.Get("result"))
	case ruleID.MatchString(q.Get("rule")):
		p.Flash = setFlash("Model rule", q.Get("rule"), q.Get("result"))
	case limitID.MatchString(q.Get("deleted")):
		p.Flash = fmt.Sprintf("Rate limit %s deleted.", q.Get("deleted"))
	case ruleID.MatchString(q.Get("deleted")):
		p.Flash = fmt.Sprintf("Model rule %s deleted.", q.Get("deleted"))
	}
	c.renderPolicies(w, r, s, http.StatusOK, policyForms{Budget: f}, p)
}

// setFlash says what a set did to the policy what id.
func setFlash(what, id, result string) string {
	switch governance.SetResult(result) {
	case governance.SetCreated:
		return fmt.Sprintf("%s %s created.", what, id)
	case governance.SetUnchanged:
		return fmt.Sprintf("%s %s already said this: nothing changed.", what, id)
	}
	return fmt.Sprintf("%s %s updated in place.", what, id)
}

// renderBudgets renders the page with the budget form filled from f.
func (c *Console) renderBudgets(w http.ResponseWriter, r *http.Request, s session, status int, f budgetForm, p page) {
	c.renderPolicies(w, r, s, status, policyForms{Budget: f}, p)
}

// renderPolicies lists the policies of the scope in the query, with the
// set forms filled from forms; p carries a flash or an error.
func (c *Console) renderPolicies(w http.ResponseWriter, r *http.Request, s session, status int, forms policyForms, p page) {
	f := forms.Budget
	if !c.budgetsReady() {
		c.unavailable(w, r, s, "Budgets and limits", "budgets", "Governance")
		return
	}
	ctx := r.Context()
	q := r.URL.Query()
	d := budgetsData{ScopeType: q.Get("scope_type"), ScopeID: strings.TrimSpace(q.Get("scope_id")), ScopeTypes: governance.ScopeTypes, Form: f,
		LimitForm: forms.Limit, RuleForm: forms.Rule}
	if d.Form.Metric == "" {
		d.Form.Metric, d.Form.Window = string(governance.MetricCost), "month"
	}
	if d.RuleForm.Kind == "" {
		d.RuleForm.Kind = string(governance.RuleDeny)
	}
	filter := governance.Filter{ScopeType: governance.ScopeType(d.ScopeType), ScopeID: d.ScopeID}
	if filter.ScopeType != "" && !slices.Contains(governance.ScopeTypes, filter.ScopeType) {
		p.Error = fmt.Sprintf("Scope %q is not one of platform, project, user, workspace, token.", d.ScopeType)
		d.ScopeType, filter = "", governance.Filter{ScopeID: d.ScopeID}
		status = http.StatusBadRequest
	}
	budgets, err := c.cfg.Policies.ListBudgets(ctx, filter)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	hs, err := c.cfg.Ledger.Headroom(ctx, budgets)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	for _, h := range hs {
		d.Budgets = append(d.Budgets, budgetView(h))
	}
	limits, err := c.cfg.Policies.ListLimits(ctx, filter)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	for _, l := range limits {
		d.Limits = append(d.Limits, limitRow{ID: l.ID, Scope: scopeText(l.ScopeType, l.ScopeID), Model: l.Model, Harness: l.Harness, Mode: string(l.Mode),
			RPM: rate(l.RPM, "requests/min"), TPM: rate(l.TPM, "tokens/min"), Concurrency: rate(l.Concurrency, "in flight"), RPMRaw: l.RPM,
			DeleteURL: Prefix + "limits/" + url.PathEscape(l.ID) + "/delete"})
	}
	rules, err := c.cfg.Policies.ListRules(ctx, filter)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	for _, ru := range rules {
		d.Rules = append(d.Rules, ruleRow{ID: ru.ID, Scope: scopeText(ru.ScopeType, ru.ScopeID), Kind: string(ru.Kind), Pattern: ru.Pattern, Target: ru.Target,
			DeleteURL: Prefix + "rules/" + url.PathEscape(ru.ID) + "/delete"})
	}
	p.Title, p.Nav, p.SignedIn, p.CSRF, p.Data = "Budgets and limits", "budgets", true, s.csrf, d
	c.render(w, r, status, "budgets", p)
}

// budgetView renders h in the budget's unit: the same figures Headroom
// gives, formatted as the CLI formats them (governance.FormatUSD).
func budgetView(h governance.Headroom) budgetRow {
	b := h.Budget
	amount := func(v int64) string {
		if b.Metric == governance.MetricCost {
			return governance.FormatUSD(v)
		}
		return tokens(v)
	}
	row := budgetRow{ID: b.ID, Scope: scopeText(b.ScopeType, b.ScopeID), Model: b.Model, Harness: b.Harness, Metric: string(b.Metric), Unit: "tokens",
		Spent: amount(h.Spent), Reserved: amount(h.Reserved), Allotted: amount(h.Allotted), Limit: amount(h.Limit), Remaining: amount(max(0, h.Limit-h.Spent-h.Reserved)),
		SpentRaw: h.Spent, ReservedRaw: h.Reserved, AllottedRaw: h.Allotted, LimitRaw: h.Limit,
		Percent: percent(h.Spent, h.Limit), Committed: percent(h.Spent+h.Reserved, h.Limit), High: h.Limit * 8 / 10,
		Window: b.Window.String(), WindowStart: h.WindowStart.UTC().Format("2006-01-02 15:04"), Mode: string(b.Mode), Over: h.Spent >= h.Limit,
		DeleteURL: Prefix + "budgets/" + url.PathEscape(b.ID) + "/delete"}
	if b.Metric == governance.MetricCost {
		row.Unit = "USD"
	}
	switch {
	case b.Window.Kind == governance.WindowLifetime:
		row.Resets = "never (lifetime)"
		row.WindowStart = "—"
	case b.Window.Kind == governance.WindowRolling:
		// Headroom has no reset for a rolling window: spend leaves it
		// bucket by bucket, continuously.
		row.Resets = "continuously (the last " + strings.TrimPrefix(b.Window.String(), "rolling:") + ")"
	case !h.ResetAt.IsZero():
		row.Resets = h.ResetAt.UTC().Format("2006-01-02 15:04")
		if local := b.Window.LocalText(h.ResetAt); local != "" {
			row.Resets += " (" + local + ")"
		}
	}
	return row
}

// percent is part ÷ whole in whole percent, rounded down so a budget
// shows 100 % only once it is spent.
func percent(part, whole int64) string {
	if whole <= 0 {
		return "—"
	}
	return strconv.FormatInt(part*100/whole, 10) + "%"
}

func rate(v int64, unit string) string {
	if v == 0 {
		return "—"
	}
	return grouped(v) + " " + unit
}

func tokens(v int64) string { return grouped(v) + " tokens" }

// grouped writes v with thousands separators: 2,000,000 reads at a glance
// where 2000000 must be counted.
func grouped(v int64) string {
	if v < 0 {
		return "-" + grouped(-v)
	}
	if v < 1000 {
		return strconv.FormatInt(v, 10)
	}
	return grouped(v/1000) + "," + fmt.Sprintf("%03d", v%1000)
}

func scopeText(t governance.ScopeType, id string) string {
	return strings.TrimSpace(string(t) + " " + id)
}

// budgetSet creates or updates a budget through governance.Store.SetBudget,
// as "tollgate budget set" does: the budget of the same scope, model,
// harness, metric and window is updated in place, keeping its id and so
// its spend. The write is recorded in the audit log with the session as
// the actor (post puts it in the request's context).
func (c *Console) budgetSet(w http.ResponseWriter, r *http.Request, s session) {
	if !c.budgetsReady() {
		c.unavailable(w, r, s, "Budgets and limits", "budgets", "Setting a budget")
		return
	}
	pf := r.PostForm
	f := budgetForm{ScopeType: pf.Get("scope_type"), ScopeID: strings.TrimSpace(pf.Get("scope_id")), Model: strings.TrimSpace(pf.Get("model")),
		Harness: strings.TrimSpace(pf.Get("harness")), Metric: pf.Get("metric"), Limit: strings.TrimSpace(pf.Get("limit")),
		Window: strings.TrimSpace(pf.Get("window")), TZ: strings.TrimSpace(pf.Get("tz")), Mode: pf.Get("mode")}
	b, probs := f.budget()
	if len(probs) > 0 {
		c.renderBudgets(w, r, s, http.StatusUnprocessableEntity, f, page{Error: strings.Join(probs, "; ")})
		return
	}
	ctx := r.Context()
	b, res, err := c.cfg.Policies.SetBudget(ctx, b)
	if err != nil {
		if errors.Is(err, governance.ErrInvalid) {
			c.renderBudgets(w, r, s, http.StatusUnprocessableEntity, f, page{Error: err.Error()})
			return
		}
		c.fail(w, r, s, err)
		return
	}
	c.audited(r, c.cfg.Audit.PolicySet(ctx, "budget", b, string(res)))
	c.reloadPolicies(ctx, res != governance.SetUnchanged)
	c.log.Info("console budget set", "session", s.fingerprint(), "budget_id", b.ID, "result", res)
	http.Redirect(w, r, Prefix+"budgets?"+url.Values{"set": {b.ID}, "result": {string(res)}}.Encode(), http.StatusSeeOther)
}

// budget reads the form as the CLI reads its flags: a cost limit in
// dollars (governance.ParseUSD), a token limit as a whole number, the
// window as governance.ParseWindow reads it. Every problem is named.
func (f budgetForm) budget() (governance.Budget, []string) {
	b := governance.Budget{Selector: governance.Selector{ScopeType: governance.ScopeType(f.ScopeType), ScopeID: f.ScopeID, Model: f.Model, Harness: f.Harness},
		Metric: governance.Metric(f.Metric), Mode: governance.Mode(f.Mode)}
	if b.ScopeType == governance.ScopePlatform && b.ScopeID != "" {
		b.ScopeID = "" // the form's scope id field is left over from another scope
	}
	var probs []string
	var err error
	switch b.Metric {
	case governance.MetricCost:
		if b.Limit, err = governance.ParseUSD(f.Limit); err != nil {
			probs = append(probs, "limit: "+err.Error())
		}
	case governance.MetricTokens:
		if b.Limit, err = strconv.ParseInt(strings.ReplaceAll(f.Limit, "_", ""), 10, 64); err != nil || b.Limit <= 0 {
			probs = append(probs, fmt.Sprintf("limit: %q is not a whole number of tokens above 0", f.Limit))
		}
	default:
		probs = append(probs, "metric: choose cost (USD) or tokens")
	}
	if b.Window, err = governance.ParseWindow(f.Window); err != nil {
		probs = append(probs, err.Error())
	}
	if f.TZ != "" {
		if w, err := b.Window.InZone(f.TZ); err != nil {
			probs = append(probs, "time zone: "+err.Error())
		} else {
			b.Window = w
		}
	}
	if len(probs) == 0 {
		if err := b.Validate(); err != nil {
			probs = append(probs, err.Error())
		}
	}
	return b, probs
}

// budgetDeletePage asks to confirm a deletion, showing the budget's
// state: a budget set again later gets a new id and starts from zero.
func (c *Console) budgetDeletePage(w http.ResponseWriter, r *http.Request, s session) {
	if !c.budgetsReady() {
		c.unavailable(w, r, s, "Budgets and limits", "budgets", "Governance")
		return
	}
	b, err := c.cfg.Policies.Budget(r.Context(), r.PathValue("id"))
	if err != nil {
		c.budgetGone(w, r, s, r.PathValue("id"), err)
		return
	}
	hs, err := c.cfg.Ledger.Headroom(r.Context(), []governance.Budget{b})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, http.StatusOK, "budget-delete", page{Title: "Delete budget", Nav: "budgets", SignedIn: true, CSRF: s.csrf, Data: budgetView(hs[0])})
}

// budgetGone answers a budget that is not there (422, as a refused write)
// or the store's failure.
func (c *Console) budgetGone(w http.ResponseWriter, r *http.Request, s session, id string, err error) {
	if errors.Is(err, governance.ErrNotFound) {
		c.render(w, r, http.StatusUnprocessableEntity, "message", page{Title: "Not changed", Nav: "budgets", SignedIn: true, CSRF: s.csrf,
			Message: fmt.Sprintf("There is no budget %q: it may have been deleted already.", id)})
		return
	}
	c.fail(w, r, s, err)
}

// budgetDelete deletes a budget, as "tollgate budget delete" does; its
// counters stay in the ledger.
func (c *Console) budgetDelete(w http.ResponseWriter, r *http.Request, s session) {
	if !c.budgetsReady() {
		c.unavailable(w, r, s, "Budgets and limits", "budgets", "Deleting a budget")
		return
	}
	id := r.PathValue("id")
	ctx := r.Context()
	if err := c.cfg.Policies.DeleteBudget(ctx, id); err != nil {
		c.budgetGone(w, r, s, id, err)
		return
	}
	c.audited(r, c.cfg.Audit.PolicyDeleted(ctx, "budget", id))
	c.reloadPolicies(ctx, true)
	c.log.Info("console budget delete", "session", s.fingerprint(), "budget_id", id)
	http.Redirect(w, r, Prefix+"budgets?"+url.Values{"deleted": {id}}.Encode(), http.StatusSeeOther)
}

// reloadPolicies makes this replica enforce a policy write that changed
// something before the page answers, as the admin API does. The write has
// committed either way, so a failed reload is logged, not answered: the
// watcher's poll retries it.
func (c *Console) reloadPolicies(ctx context.Context, changed bool) {
	if !changed || c.cfg.PolicyWatcher == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.cfg.PolicyWatcher.Refresh(rctx); err != nil {
		c.log.Warn("policy reload after a console write failed; the next poll retries", "err", err)
	}
}
