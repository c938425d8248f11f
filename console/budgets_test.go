package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/governance"
)

// cellText is the text of the element with id in body ("" if absent), with
// tags stripped.
func cellText(body, id string) string {
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>(.*?)</t[dh]>`).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return strings.TrimSpace(regexp.MustCompile(`<[^>]+>`).ReplaceAllString(m[1], " "))
}

// rowTag is the opening tag of the row with id, "" if absent.
func rowTag(body, id string) string {
	return regexp.MustCompile(`<tr id="` + regexp.QuoteMeta(id) + `"[^>]*>`).FindString(body)
}

// seedBudgets stores budgets of every kind the page must render (a cost
// month, a token rolling window, a cost lifetime with sub-cent amounts, a
// token day narrowed to a model), and spend in and out of their windows:
// settled, held, and 6 h ago (outside the rolling window, inside the
// others).
func seedBudgets(g *govEnv) []governance.Budget {
	roll, err := governance.ParseWindow("rolling:5h")
	if err != nil {
		g.t.Fatal(err)
	}
	month := g.setBudget(governance.Budget{Selector: governance.Selector{ScopeType: governance.ScopeProject, ScopeID: "acme"},
		Metric: governance.MetricCost, Limit: 50_000_000, Window: governance.Window{Kind: governance.WindowMonth}, Mode: governance.ModeHard})
	rolling := g.setBudget(governance.Budget{Selector: governance.Selector{ScopeType: governance.ScopeUser, ScopeID: "u1"},
		Metric: governance.MetricTokens, Limit: 100_000, Window: roll})
	life := g.setBudget(governance.Budget{Selector: governance.Selector{ScopeType: governance.ScopePlatform},
		Metric: governance.MetricCost, Limit: 250_000, Window: governance.Window{Kind: governance.WindowLifetime}, Mode: governance.ModeAlert})
	day := g.setBudget(governance.Budget{Selector: governance.Selector{ScopeType: governance.ScopeWorkspace, ScopeID: "ws-1", Model: "claude-*"},
		Metric: governance.MetricTokens, Limit: 2_000_000, Window: governance.Window{Kind: governance.WindowDay}})
	all := []governance.Budget{month, rolling, life, day}
	charges := func(amount int64) []governance.Charge {
		return []governance.Charge{{Budget: month, Amount: amount}, {Budget: rolling, Amount: amount / 100}, {Budget: life, Amount: amount / 20}, {Budget: day, Amount: amount / 100}}
	}
	g.clock.add(-6 * time.Hour) // 03:00
	g.spend("r-early", charges(400_000), new(int64(333_333)), 1000, 200)
	g.clock.add(6 * time.Hour) // 09:00
	g.spend("r-settled", charges(2_000_000), new(int64(1_234_567)), 1500, 300)
	g.spend("r-held", charges(700_000), nil, 0, 0)
	return all
}

// TestBudgetsPageShowsHeadroom: each seeded budget's row shows exactly the
// figures Ledger.Headroom gives (dollars through FormatUSD for cost,
// tokens otherwise), its bar, mode, scope and reset; limits and model
// rules are listed with their units; the scope filter narrows all three.
func TestBudgetsPageShowsHeadroom(t *testing.T) {
	forEachGovEngine(t, func(t *testing.T, g *govEnv) {
		ctx := context.Background()
		budgets := seedBudgets(g)
		lim, _, err := g.st.SetLimit(ctx, governance.Limit{Selector: governance.Selector{ScopeType: governance.ScopeWorkspace, ScopeID: "ws-42"}, RPM: 60, TPM: 40_000})
		if err != nil {
			t.Fatal(err)
		}
		deny, _, err := g.st.SetRule(ctx, governance.ModelRule{ScopeType: governance.ScopeProject, ScopeID: "acme", Kind: governance.RuleDeny, Pattern: "gpt-4*"})
		if err != nil {
			t.Fatal(err)
		}
		alias, _, err := g.st.SetRule(ctx, governance.ModelRule{ScopeType: governance.ScopePlatform, Kind: governance.RuleAlias, Pattern: "fast", Target: "claude-haiku-5-5"})
		if err != nil {
			t.Fatal(err)
		}
		hs := g.headroom(budgets...)
		// The seed means something: the rolling window left the early
		// spend out, the others kept it, and one request is still held.
		if hs[0].Spent != 333_333+1_234_567 || hs[0].Reserved != 700_000 || hs[1].Spent != 1800 || hs[1].Reserved != 7000 {
			t.Fatalf("seeded headroom: %+v / %+v", hs[0], hs[1])
		}

		b := g.browser()
		b.signIn(testAdminToken)
		a := b.get("/ui/budgets")
		if a.status != http.StatusOK || !strings.Contains(a.body, `id="nav-budgets" href="/ui/budgets" aria-current="page"`) {
			t.Fatalf("budgets page: %d\n%s", a.status, a.body)
		}
		for _, h := range hs {
			id := "budget-" + slug(h.Budget.ID)
			amount := func(v int64) string {
				if h.Budget.Metric == governance.MetricCost {
					return governance.FormatUSD(v)
				}
				return tokens(v)
			}
			tag := rowTag(a.body, id)
			for _, want := range []string{
				fmt.Sprintf(`data-spent="%d"`, h.Spent), fmt.Sprintf(`data-reserved="%d"`, h.Reserved),
				fmt.Sprintf(`data-allotted="%d"`, h.Allotted), fmt.Sprintf(`data-limit="%d"`, h.Limit),
				`data-mode="` + string(h.Budget.Mode) + `"`, `data-metric="` + string(h.Budget.Metric) + `"`,
			} {
				if !strings.Contains(tag, want) {
					t.Errorf("%s: row %q lacks %s", h.Budget.ID, tag, want)
				}
			}
			if got := cellText(a.body, id+"-spent"); got != amount(h.Spent) {
				t.Errorf("%s spent: %q, want %q", h.Budget.ID, got, amount(h.Spent))
			}
			if got := cellText(a.body, id+"-reserved"); got != amount(h.Reserved) {
				t.Errorf("%s reserved: %q, want %q", h.Budget.ID, got, amount(h.Reserved))
			}
			if got := cellText(a.body, id+"-limit"); got != amount(h.Limit) {
				t.Errorf("%s limit: %q, want %q", h.Budget.ID, got, amount(h.Limit))
			}
			bar := fmt.Sprintf(`<meter id="%s-bar" min="0" max="%d" value="%d"`, id, h.Limit, h.Spent)
			if !strings.Contains(a.body, bar) {
				t.Errorf("%s: no bar %s", h.Budget.ID, bar)
			}
		}
		month, rolling, life, day := budgets[0], budgets[1], budgets[2], budgets[3]
		for id, want := range map[string]string{
			month.ID: "2027-01-01 00:00", day.ID: "2026-12-02 00:00",
			life.ID: "never (lifetime)", rolling.ID: "continuously (the last 5h)",
		} {
			if got := cellText(a.body, "budget-"+slug(id)+"-reset"); got != want {
				t.Errorf("%s resets %q, want %q", id, got, want)
			}
		}
		// Sub-cent amounts keep their micro-dollars, not "$0.04"; a budget
		// past its limit says so.
		if got := cellText(a.body, "budget-"+slug(life.ID)+"-reserved"); got != "$0.035" {
			t.Errorf("lifetime reserved %q, want $0.035", got)
		}
		if got := cellText(a.body, "budget-"+slug(day.ID)+"-limit"); got != "2,000,000 tokens" {
			t.Errorf("day limit %q, want 2,000,000 tokens", got)
		}
		if !strings.Contains(a.body, "limit reached") {
			t.Error("the lifetime budget, spent past its limit, does not say so")
		}
		for _, want := range []string{"project acme", "user u1", "workspace ws-1", "model <code>claude-*</code>", "rolling:5h", ">hard<", ">alert<", ">soft<"} {
			if !strings.Contains(a.body, want) {
				t.Errorf("budgets page lacks %q", want)
			}
		}
		if tag := rowTag(a.body, "limit-"+slug(lim.ID)); tag == "" || !strings.Contains(a.body, "60 requests/min") || !strings.Contains(a.body, "40,000 tokens/min") {
			t.Errorf("limit %s not listed with its units", lim.ID)
		}
		for _, r := range []governance.ModelRule{deny, alias} {
			if !strings.Contains(rowTag(a.body, "rule-"+slug(r.ID)), `data-kind="`+string(r.Kind)+`"`) {
				t.Errorf("rule %s not listed", r.ID)
			}
		}
		if !strings.Contains(a.body, "<code>claude-haiku-5-5</code>") {
			t.Error("the alias's target is not shown")
		}

		// Filter by scope: project acme has the month budget and the deny rule only.
		a = b.get("/ui/budgets?scope_type=project&scope_id=acme")
		if a.status != http.StatusOK || rowTag(a.body, "budget-"+slug(month.ID)) == "" || rowTag(a.body, "rule-"+slug(deny.ID)) == "" {
			t.Fatalf("filtered: %d, the project's policies missing", a.status)
		}
		for _, id := range []string{"budget-" + slug(rolling.ID), "budget-" + slug(life.ID), "limit-" + slug(lim.ID), "rule-" + slug(alias.ID)} {
			if rowTag(a.body, id) != "" {
				t.Errorf("filtered to project acme, %s still shown", id)
			}
		}
		if !strings.Contains(a.body, `<option value="project" selected>`) || !strings.Contains(a.body, `id="budgets-scope-id" name="scope_id" value="acme"`) {
			t.Error("the filter form does not show the filter")
		}
		if a := b.get("/ui/budgets?scope_type=galaxy"); a.status != http.StatusBadRequest || !strings.Contains(a.body, `id="form-error"`) {
			t.Errorf("unknown scope type: %d", a.status)
		}
	})
}

// TestBudgetSetAndDeleteFromThePage: the set form updates the budget of
// the same identity in place (its spend kept), says unchanged when it is,
// refuses a bad limit naming it, and deletes; each write makes one audit
// entry through the admin API's hook, with the session as the actor and
// its address as the source, and reloads this replica's policies. A form
// without the CSRF token changes and records nothing.
func TestBudgetSetAndDeleteFromThePage(t *testing.T) {
	forEachGovEngine(t, func(t *testing.T, g *govEnv) {
		budgets := seedBudgets(g)
		month := budgets[0]
		before := g.headroom(month)[0]
		b := g.browser()
		b.signIn(testAdminToken)
		b.get("/ui/budgets")
		fp := hashID(b.cookie().Value)[:12]
		set := url.Values{"scope_type": {"project"}, "scope_id": {"acme"}, "metric": {"cost"}, "limit": {"75.50"}, "window": {"month"}, "mode": {""}}
		a := b.post("/ui/budgets/set", set)
		if a.status != http.StatusSeeOther || a.location != "/ui/budgets?result=updated&set="+month.ID {
			t.Fatalf("set: %d %q\n%s", a.status, a.location, a.body)
		}
		after := g.headroom(g.listBudget(month.ID))[0]
		if after.Limit != 75_500_000 || after.Spent != before.Spent || after.Budget.Mode != governance.ModeHard {
			t.Fatalf("after set: %+v, want limit 75.50, spend %d kept, mode hard kept", after, before.Spent)
		}
		if p := b.get(a.location); !strings.Contains(p.body, "updated in place: its spend is kept") || cellText(p.body, "budget-"+slug(month.ID)+"-limit") != "$75.50" {
			t.Errorf("after set the page does not show the new limit")
		}
		es := g.entries()
		if len(es) != 1 {
			t.Fatalf("%d entries after one set", len(es))
		}
		e := es[0]
		if e.Action != "budget.set" || e.Target != month.ID || e.Actor != (audit.Actor{Kind: audit.KindConsole, ID: fp}) || e.Source != "127.0.0.1" ||
			e.Change["result"] != "updated" || e.Change["limit"] != float64(75_500_000) || e.Change["scope_id"] != "acme" {
			t.Errorf("entry: %+v", e)
		}
		if len(g.w.Current().Budgets) != len(budgets) {
			t.Errorf("this replica's policies were not reloaded: %d budgets", len(g.w.Current().Budgets))
		}
		if a := b.post("/ui/budgets/set", set); a.location != "/ui/budgets?result=unchanged&set="+month.ID {
			t.Errorf("set again: %q", a.location)
		}
		if es := g.entries(); len(es) != 2 || es[0].Change["result"] != "unchanged" {
			t.Errorf("set again: entries %+v", es)
		}

		// Refused: a bad limit and window, all named; a new budget's form kept.
		bad := url.Values{"scope_type": {"user"}, "scope_id": {"u9"}, "metric": {"tokens"}, "limit": {"lots"}, "window": {"fortnight"}}
		a = b.post("/ui/budgets/set", bad)
		if a.status != http.StatusUnprocessableEntity || !strings.Contains(cellText(a.body, "form-error")+a.body, "lots") || !strings.Contains(a.body, "fortnight") ||
			!strings.Contains(a.body, `id="budget-scope-id" name="scope_id" value="u9"`) {
			t.Errorf("bad budget: %d\n%s", a.status, a.body)
		}
		if a := b.post("/ui/budgets/set", url.Values{"scope_type": {"project"}, "metric": {"cost"}, "limit": {"5"}, "window": {"day"}}); a.status != http.StatusUnprocessableEntity {
			t.Errorf("a project budget without a project: %d", a.status)
		}
		// Without the CSRF token, and from another site.
		if a := b.post("/ui/budgets/set", url.Values{"csrf": {""}, "scope_type": {"platform"}, "metric": {"cost"}, "limit": {"5"}, "window": {"day"}}); a.status != http.StatusForbidden {
			t.Errorf("no CSRF token: %d", a.status)
		}
		del := "/ui/budgets/" + month.ID + "/delete"
		if a := b.post(del, nil, "Origin", "https://evil.example"); a.status != http.StatusForbidden {
			t.Errorf("cross-site delete: %d", a.status)
		}
		if es := g.entries(); len(es) != 2 {
			t.Fatalf("refused forms recorded: %+v", es[0])
		}
		if n := len(g.listBudgets()); n != len(budgets) {
			t.Fatalf("refused forms wrote: %d budgets", n)
		}

		// The row links to a confirm page showing what is deleted; only its
		// form deletes.
		list := b.get("/ui/budgets")
		if !strings.Contains(list.body, `<a id="budget-`+slug(month.ID)+`-delete" href="`+del+`"`) {
			t.Fatalf("no delete link to %s", del)
		}
		confirm := b.get(del)
		if confirm.status != http.StatusOK || !strings.Contains(confirm.body, `<form id="budget-delete-form" method="post" action="`+del+`"`) ||
			!strings.Contains(cellText(confirm.body, "budget-delete-spent"), governance.FormatUSD(after.Spent)) {
			t.Fatalf("confirm page: %d\n%s", confirm.status, confirm.body)
		}
		if n := len(g.listBudgets()); n != len(budgets) {
			t.Fatal("the confirm page deleted")
		}
		a = b.post(del, nil)
		if a.status != http.StatusSeeOther || a.location != "/ui/budgets?deleted="+month.ID {
			t.Fatalf("delete: %d %q", a.status, a.location)
		}
		if p := b.get("/ui/budgets?set=" + url.QueryEscape("your account is locked, call +1 555") + "&deleted=x"); strings.Contains(p.body, `id="flash"`) {
			t.Error("a crafted link puts its text in the flash")
		}
		if p := b.get("/ui/budgets"); rowTag(p.body, "budget-"+slug(month.ID)) != "" {
			t.Error("the deleted budget is still listed")
		}
		if es := g.entries(); len(es) != 3 || es[0].Action != "budget.delete" || es[0].Target != month.ID || es[0].Actor.Kind != audit.KindConsole {
			t.Errorf("delete entry: %+v", es[0])
		}
		if len(g.w.Current().Budgets) != len(budgets)-1 {
			t.Error("the delete was not reloaded")
		}
		if a := b.post(del, nil); a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, `id="message"`) {
			t.Errorf("delete again: %d", a.status)
		}
		if es := g.entries(); len(es) != 3 {
			t.Error("a refused delete was recorded")
		}
		if a := b.get(del); a.status != http.StatusUnprocessableEntity {
			t.Errorf("confirm page of a deleted budget: %d", a.status)
		}
	})
}

// TestBudgetsWithoutGovernance: a console built without the governance
// pieces says so instead of failing, and takes no write.
func TestBudgetsWithoutGovernance(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(testAdminToken)
	if a := b.get("/ui/budgets"); a.status != http.StatusServiceUnavailable || !strings.Contains(a.body, `id="message"`) {
		t.Errorf("budgets without governance: %d", a.status)
	}
	if a := b.post("/ui/budgets/set", url.Values{"scope_type": {"platform"}}); a.status != http.StatusServiceUnavailable {
		t.Errorf("set without governance: %d", a.status)
	}
}

func (g *govEnv) listBudgets() []governance.Budget {
	g.t.Helper()
	bs, err := g.st.ListBudgets(context.Background(), governance.Filter{})
	if err != nil {
		g.t.Fatal(err)
	}
	return bs
}

func (g *govEnv) listBudget(id string) governance.Budget {
	g.t.Helper()
	b, err := g.st.Budget(context.Background(), id)
	if err != nil {
		g.t.Fatal(err)
	}
	return b
}

func TestGrouped(t *testing.T) {
	for v, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 100_000: "100,000", 1_234_567: "1,234,567", -12_345: "-12,345"} {
		if got := grouped(v); got != want {
			t.Errorf("grouped(%d) = %q, want %q", v, got, want)
		}
	}
}

// TestLimitAndRuleSetAndDeleteFromThePage: the Budgets page sets a rate
// limit and a model rule through the store (audited, reloaded on this
// replica), shows every problem beside its field, refuses a post without
// the CSRF token, and deletes both.
func TestLimitAndRuleSetAndDeleteFromThePage(t *testing.T) {
	forEachGovEngine(t, func(t *testing.T, g *govEnv) {
		ctx := context.Background()
		b := g.browser()
		b.signIn(testAdminToken)
		b.get("/ui/budgets")
		a := b.post("/ui/limits/set", url.Values{"scope_type": {"workspace"}, "scope_id": {"ws-42"}, "rpm": {"1"}})
		if a.status != http.StatusSeeOther || !strings.Contains(a.location, "result=created") {
			t.Fatalf("limit set: %d %q\n%s", a.status, a.location, a.body)
		}
		ls, err := g.st.ListLimits(ctx, governance.Filter{})
		if err != nil || len(ls) != 1 || ls[0].RPM != 1 || ls[0].ScopeID != "ws-42" {
			t.Fatalf("limits: %+v %v", ls, err)
		}
		if len(g.w.Current().Limits) != 1 {
			t.Error("the limit was not reloaded on this replica")
		}
		// An update with only tpm keeps rpm, as the API's POST does.
		if a := b.post("/ui/limits/set", url.Values{"scope_type": {"workspace"}, "scope_id": {"ws-42"}, "tpm": {"500"}}); !strings.Contains(a.location, "result=updated") {
			t.Errorf("limit update: %q", a.location)
		}
		if l, _ := g.st.Limit(ctx, ls[0].ID); l.RPM != 1 || l.TPM != 500 {
			t.Errorf("after update: %+v", l)
		}
		if es := g.entries(); len(es) != 2 || es[0].Action != "limit.set" || es[0].Target != ls[0].ID || es[0].Actor.Kind != audit.KindConsole {
			t.Errorf("limit entries: %+v", es)
		}
		// Every problem at once, each beside its field.
		a = b.post("/ui/limits/set", url.Values{"scope_type": {"project"}, "rpm": {"many"}, "mode": {"loud"}})
		if a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, `id="limit-rpm-error"`) || !strings.Contains(a.body, `id="limit-scope-id-error"`) ||
			!strings.Contains(a.body, `id="limit-mode-error"`) {
			t.Errorf("bad limit: %d\n%s", a.status, a.body)
		}
		a = b.post("/ui/rules/set", url.Values{"scope_type": {"user"}, "scope_id": {"u1"}, "kind": {"alias"}, "pattern": {"fa*t"}})
		if a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, `id="rule-scope-type-error"`) || !strings.Contains(a.body, `id="rule-pattern-error"`) ||
			!strings.Contains(a.body, `id="rule-target-error"`) {
			t.Errorf("bad rule: %d\n%s", a.status, a.body)
		}
		if a := b.post("/ui/rules/set", url.Values{"csrf": {""}, "scope_type": {"platform"}, "kind": {"deny"}, "pattern": {"gpt-*"}}); a.status != http.StatusForbidden {
			t.Errorf("rule without CSRF: %d", a.status)
		}
		if a := b.post("/ui/limits/set", url.Values{"csrf": {""}, "scope_type": {"platform"}, "rpm": {"5"}}); a.status != http.StatusForbidden {
			t.Errorf("limit without CSRF: %d", a.status)
		}
		if es := g.entries(); len(es) != 2 {
			t.Errorf("refused forms recorded: %d entries", len(es))
		}
		a = b.post("/ui/rules/set", url.Values{"scope_type": {"platform"}, "scope_id": {"left-over"}, "kind": {"deny"}, "pattern": {"gpt-4*"}})
		if a.status != http.StatusSeeOther {
			t.Fatalf("rule set: %d\n%s", a.status, a.body)
		}
		rs, _ := g.st.ListRules(ctx, governance.Filter{})
		if len(rs) != 1 || rs[0].Kind != governance.RuleDeny || rs[0].ScopeID != "" || len(g.w.Current().Rules) != 1 {
			t.Fatalf("rules: %+v", rs)
		}
		page := b.get(a.location)
		if !strings.Contains(page.body, "Model rule "+rs[0].ID+" created.") || rowTag(page.body, "rule-"+slug(rs[0].ID)) == "" {
			t.Errorf("the page does not show the new rule")
		}
		for _, del := range []string{"/ui/limits/" + ls[0].ID + "/delete", "/ui/rules/" + rs[0].ID + "/delete"} {
			if a := b.post(del, nil, "Origin", "https://evil.example"); a.status != http.StatusForbidden {
				t.Errorf("cross-site %s: %d", del, a.status)
			}
			if a := b.post(del, nil); a.status != http.StatusSeeOther {
				t.Errorf("%s: %d", del, a.status)
			}
			if a := b.post(del, nil); a.status != http.StatusUnprocessableEntity {
				t.Errorf("%s again: %d", del, a.status)
			}
		}
		if es := g.entries(); len(es) != 5 || es[0].Action != "model_rule.delete" || es[1].Action != "limit.delete" {
			t.Errorf("delete entries: %+v", es)
		}
		if cur := g.w.Current(); len(cur.Limits) != 0 || len(cur.Rules) != 0 {
			t.Error("the deletes were not reloaded")
		}
	})
}

// TestBudgetFormTimeZone: the form's time zone field sets a calendar
// window's zone (validated by the server, not the browser), the row shows
// the window with its zone and the reset at local midnight beside the UTC
// time, and a zone the window cannot have is refused naming the field and
// the value, the form kept.
func TestBudgetFormTimeZone(t *testing.T) {
	g := newGovEnv(t)
	b := g.browser()
	b.signIn(testAdminToken)
	page := b.get("/ui/budgets")
	if !strings.Contains(page.body, `<label for="budget-tz">`) || !strings.Contains(page.body, `<input id="budget-tz" name="tz" value=""`) {
		t.Fatalf("the budget form has no labelled time zone field")
	}
	set := url.Values{"scope_type": {"project"}, "scope_id": {"acme"}, "metric": {"cost"}, "limit": {"50"}, "window": {"month"}, "tz": {"Europe/Berlin"}}
	a := b.post("/ui/budgets/set", set)
	if a.status != http.StatusSeeOther {
		t.Fatalf("set: %d\n%s", a.status, a.body)
	}
	bs := g.listBudgets()
	if len(bs) != 1 || bs[0].Window.String() != "month@Europe/Berlin" {
		t.Fatalf("stored: %+v", bs)
	}
	p := b.get(a.location)
	id := "budget-" + slug(bs[0].ID)
	// The clock is 1 December 09:00 UTC: the Berlin month ends at
	// 23:00 UTC on 31 December, local midnight.
	if got := cellText(p.body, id+"-reset"); got != "2026-12-31 23:00 (2027-01-01 00:00 Europe/Berlin)" {
		t.Errorf("reset cell %q", got)
	}
	if !strings.Contains(p.body, "month@Europe/Berlin<span class=\"sub when\">from 2026-11-30 23:00 UTC") {
		t.Errorf("the window cell does not show the zone and the local month's start")
	}
	for _, tc := range []struct{ window, tz, want string }{
		{"month", "Mars/Olympus_Mons", `time zone: unknown time zone &#34;Mars/Olympus_Mons&#34;`},
		{"rolling:5h", "Europe/Berlin", `time zone: time zone &#34;Europe/Berlin&#34; applies to day, week and month windows only`},
		{"month@Asia/Tokyo", "Europe/Berlin", "differs from the window&#39;s own, Asia/Tokyo"},
	} {
		bad := url.Values{"scope_type": {"project"}, "scope_id": {"other"}, "metric": {"cost"}, "limit": {"5"}, "window": {tc.window}, "tz": {tc.tz}}
		a := b.post("/ui/budgets/set", bad)
		if a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, tc.want) || !strings.Contains(a.body, `id="budget-tz" name="tz" value="`+tc.tz+`"`) {
			t.Errorf("%s in %s: %d, want 422 saying %q with the field kept", tc.window, tc.tz, a.status, tc.want)
		}
	}
	if n := len(g.listBudgets()); n != 1 {
		t.Errorf("refused forms wrote: %d budgets", n)
	}
}
