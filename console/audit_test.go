package console

import (
	"context"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/resolver"
)

var auditRowID = regexp.MustCompile(`<tr id="audit-(aud_[a-z0-9]+)"`)

// auditIDs are the entry ids of an audit page's rows, in order.
func auditIDs(body string) []string {
	var ids []string
	for _, m := range auditRowID.FindAllStringSubmatch(body, -1) {
		ids = append(ids, m[1])
	}
	return ids
}

func entryIDs(es []audit.Entry) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}

var nextLink = regexp.MustCompile(`<a id="audit-next" href="([^"]+)"`)

// TestAuditPageListsFiltersAndPages: writes through the admin API (a
// real server on 127.0.0.1), the CLI's hook (audit.Trail with the
// CLI's actor, as cmd/tollgate's openTrail sets it) and the console's own
// budget form all show, newest first, with actor, source, action, target
// and change; each filter narrows to what the log's Query answers for it;
// pages follow the cursor to the end without a gap or a repeat; a bad
// filter is refused by name; the canary key a write handled is never shown.
func TestAuditPageListsFiltersAndPages(t *testing.T) {
	forEachGovEngine(t, func(t *testing.T, g *govEnv) {
		ctx := context.Background()
		const canary = "sk-ant-api03-CANARY-audit-4e5f6a7b8c9d0e1f"
		api := g.adminAPI()
		if code, body := g.admin(api, "POST", "/budgets", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"50","window":"month"}`); code != http.StatusCreated {
			t.Fatalf("admin API budget: %d %s", code, body)
		}
		code, body := g.admin(api, "POST", "/credentials", `{"name":"acme-claude","provider":"anthropic","key":"`+canary+`"}`)
		if code >= 300 {
			t.Fatalf("admin API credential: %d %s", code, body)
		}
		cli := audit.WithActor(ctx, audit.Actor{Kind: audit.KindCLI, ID: "alice"}, audit.SourceCLI)
		for i := range 5 {
			k := resolver.BindingKey{Tier: resolver.TierUser, ScopeID: "u" + string(rune('1'+i)), Dialect: "anthropic-messages"}
			if err := g.trail.BindingChanged(cli, "deactivate", k); err != nil {
				t.Fatal(err)
			}
		}
		if err := g.trail.TokenRevoked(cli, "tok_cli1"); err != nil {
			t.Fatal(err)
		}
		// Two entries of last month, for the time filter.
		for _, at := range []time.Time{time.Date(2026, 11, 3, 8, 0, 0, 0, time.UTC), time.Date(2026, 11, 20, 17, 30, 0, 0, time.UTC)} {
			if err := g.log.Append(cli, audit.Entry{At: at, Actor: audit.Actor{Kind: audit.KindCLI, ID: "bob"}, Source: audit.SourceCLI, Action: "token.issue", Target: "tok_old"}); err != nil {
				t.Fatal(err)
			}
		}
		b := g.browser()
		b.signIn(testAdminToken)
		b.get("/ui/budgets")
		if a := b.post("/ui/budgets/set", url.Values{"scope_type": {"user"}, "scope_id": {"u1"}, "metric": {"tokens"}, "limit": {"100000"}, "window": {"day"}}); a.status != http.StatusSeeOther {
			t.Fatalf("console budget set: %d", a.status)
		}
		all := g.entries()
		if len(all) != 11 {
			t.Fatalf("%d entries, want 11", len(all))
		}

		a := b.get("/ui/audit")
		if a.status != http.StatusOK || !strings.Contains(a.body, `id="nav-audit" href="/ui/audit" aria-current="page"`) || !strings.Contains(a.body, `id="audit-filter-form"`) {
			t.Fatalf("audit page: %d", a.status)
		}
		if got := auditIDs(a.body); !slices.Equal(got, entryIDs(all)) {
			t.Fatalf("audit page rows %v, want the log's, newest first %v", got, entryIDs(all))
		}
		if strings.Contains(a.body, `id="audit-next"`) {
			t.Error("a next link under a page holding everything")
		}
		byAction := map[string]audit.Entry{}
		for _, e := range all {
			byAction[e.Action] = e
		}
		apiEntry, con := byAction["credential.create"], all[0]
		if apiEntry.Actor != (audit.Actor{Kind: audit.KindAPI, ID: audit.Fingerprint(testAdminToken)}) || apiEntry.Source != "127.0.0.1" {
			t.Fatalf("the admin API's entry: %+v", apiEntry)
		}
		if con.Action != "budget.set" || con.Actor.Kind != audit.KindConsole || con.Actor.ID != hashID(b.cookie().Value)[:12] {
			t.Fatalf("the console's entry: %+v", con)
		}
		row := rowTag(a.body, "audit-"+apiEntry.ID)
		for _, want := range []string{`data-action="credential.create"`, `data-actor-kind="api"`, `data-actor="` + apiEntry.Actor.ID + `"`, `data-target="` + apiEntry.Target + `"`} {
			if !strings.Contains(row, want) {
				t.Errorf("the admin API's row %q lacks %s", row, want)
			}
		}
		for _, want := range []string{"<span class=\"name\">name</span>: <code>acme-claude</code>", "<span class=\"name\">provider</span>: <code>anthropic</code>",
			"<code>alice</code>", ">cli<", "<code>user:u3/anthropic-messages</code>", "<span class=\"name\">result</span>: <code>created</code>",
			"<span class=\"name\">limit</span>: <code>100000</code>", html.EscapeString("2026-11-20 17:30:00")} {
			if !strings.Contains(a.body, want) {
				t.Errorf("audit page lacks %s", want)
			}
		}

		// Each filter shows exactly what Query answers for it.
		for _, q := range []string{
			"actor_kind=cli", "actor_kind=api", "actor_kind=console", "actor=alice", "action=budget", "action=binding.deactivate",
			"target=" + url.QueryEscape("user:u2/anthropic-messages"), "from=2026-11-01&to=2026-11-30", "to=2026-11-10", "from=2026-12-01",
			"actor_kind=cli&action=token", "actor=nobody",
		} {
			vals := map[string]string{}
			pq, _ := url.ParseQuery(q)
			for k := range pq {
				vals[k] = pq.Get(k)
			}
			f, err := audit.ParseFilter(vals)
			if err != nil {
				t.Fatal(err)
			}
			want, err := g.log.Query(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			a := b.get("/ui/audit?" + q)
			if got := auditIDs(a.body); a.status != http.StatusOK || !slices.Equal(got, entryIDs(want.Entries)) {
				t.Errorf("?%s: %d rows %v, want %v", q, a.status, got, entryIDs(want.Entries))
			}
			for k := range pq {
				if !strings.Contains(a.body, `name="`+k+`" value="`+html.EscapeString(pq.Get(k))+`"`) && !strings.Contains(a.body, `<option value="`+pq.Get(k)+`" selected>`) {
					t.Errorf("?%s: the form does not show %s", q, k)
				}
			}
		}
		if n := len(auditIDs(b.get("/ui/audit?from=2026-11-01&to=2026-11-30").body)); n != 2 {
			t.Errorf("November: %d rows, want the 2 entries of last month", n)
		}

		// Paging: three at a time, following the next link, covers the log
		// once, in order, keeping the filter.
		var paged []string
		next := "/ui/audit?limit=3"
		for pages := 0; next != ""; pages++ {
			if pages > 5 {
				t.Fatal("paging does not end")
			}
			a := b.get(next)
			ids := auditIDs(a.body)
			if a.status != http.StatusOK || len(ids) == 0 || len(ids) > 3 {
				t.Fatalf("%s: %d, %d rows", next, a.status, len(ids))
			}
			if pages > 0 && !strings.Contains(a.body, `id="audit-first"`) {
				t.Errorf("%s: no link back to the newest entries", next)
			}
			paged = append(paged, ids...)
			next = ""
			if m := nextLink.FindStringSubmatch(a.body); m != nil {
				next = html.UnescapeString(m[1])
				if !strings.Contains(next, "limit=3") || !strings.Contains(next, "cursor=") {
					t.Fatalf("next link %q drops the page size or the cursor", next)
				}
			}
		}
		if !slices.Equal(paged, entryIDs(all)) {
			t.Errorf("paged %v, want %v", paged, entryIDs(all))
		}
		a = b.get("/ui/audit?actor_kind=cli&limit=2")
		m := nextLink.FindStringSubmatch(a.body)
		if m == nil || !strings.Contains(html.UnescapeString(m[1]), "actor_kind=cli") {
			t.Fatal("the next link drops the filter")
		}
		for _, id := range auditIDs(b.get(html.UnescapeString(m[1])).body) {
			if i := slices.Index(entryIDs(all), id); i < 0 || all[i].Actor.Kind != audit.KindCLI {
				t.Errorf("the second page of cli entries shows %s", id)
			}
		}

		// Refused filters, by name, with the form kept.
		for q, want := range map[string]string{"actor_kind=robot": "actor_kind", "from=yesterday": "from", "cursor=nope": "cursor", "from=2026-12-02&to=2026-12-01": "from must be before to"} {
			a := b.get("/ui/audit?" + q)
			if a.status != http.StatusBadRequest || !strings.Contains(cellText(a.body, "form-error")+a.body, want) || !strings.Contains(a.body, `id="audit-filter-form"`) {
				t.Errorf("?%s: %d, want 400 naming %s", q, a.status, want)
			}
		}

		// The key the admin API's write handled is on no page.
		for _, p := range []string{"/ui/audit", "/ui/audit?action=credential", "/ui/audit?target=" + apiEntry.Target, "/ui/budgets"} {
			if a := b.get(p); leaks(a.body, canary) {
				t.Errorf("%s shows the canary key", p)
			}
		}
	})
}
