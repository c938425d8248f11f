package console

import (
	"context"
	"fmt"
	"io/fs"
	"math"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/resolver"
)

// The console's accessible basics (issue 14), checked on the HTML the real
// handlers send and on the stylesheet, without a browser: the keyboard
// half is ui-tests/console.mjs's "keyboard" step.

// a11yPage is one rendered page: what was asked, the template that
// answers it, and the answer.
type a11yPage struct {
	name, template string
	a              answer
}

// TestPagesAccessible renders every template of the console over seeded
// data (each state of the grid, budgets, limits, rules, usage, tokens, the
// audit log, refused forms with their field errors) and checks each
// page's HTML: a language, a title and one h1; a label for every field;
// header cells in every table; a name, units and a legend for every
// chart; alt text on images; names on links and buttons; and ids that
// the labels and ARIA references point at.
func TestPagesAccessible(t *testing.T) {
	pages := renderEveryPage(t)
	covered := map[string]bool{}
	for _, p := range pages {
		covered[p.template] = true
	}
	// A template added later must be rendered here too.
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		n = strings.TrimSuffix(path.Base(n), ".html")
		if n != "layout" && !covered[n] {
			t.Errorf("template %s is rendered by no page of this test: add one", n)
		}
	}
	var fields, tables, charts int
	for _, p := range pages {
		if !strings.HasPrefix(p.a.header.Get("Content-Type"), "text/html") {
			t.Errorf("%s: Content-Type %q, status %d", p.name, p.a.header.Get("Content-Type"), p.a.status)
			continue
		}
		doc, err := html.Parse(strings.NewReader(p.a.body))
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		st := auditPage(doc)
		for _, prob := range st.problems {
			t.Errorf("%s (%s): %s", p.name, p.template, prob)
		}
		fields, tables, charts = fields+st.fields, tables+st.tables, charts+st.charts
	}
	// The checks looked at something: the seeded pages have dozens of
	// fields and tables, and the Usage page two charts.
	if fields < 50 || tables < 15 || charts < 2 {
		t.Errorf("checked only %d fields, %d tables and %d charts", fields, tables, charts)
	}
}

// renderEveryPage seeds a console with governance and usage and fetches
// each of its pages, signed out and signed in, with the forms refused.
func renderEveryPage(t *testing.T) []a11yPage {
	t.Helper()
	g := newGovEnv(t)
	e := g.env
	ctx := context.Background()
	seedUsage(t, g.usage)
	seedEveryState(t, e)
	budgets := seedBudgets(g)
	if _, _, err := g.st.SetLimit(ctx, governance.Limit{Selector: governance.Selector{ScopeType: governance.ScopeProject, ScopeID: "p1", Model: "claude-*"}, RPM: 60, TPM: 100_000, Concurrency: governance.KeepRate}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := g.st.SetRule(ctx, governance.ModelRule{ScopeType: governance.ScopeProject, ScopeID: "p1", Kind: governance.RuleDeny, Pattern: "gpt-4*"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := g.st.SetRule(ctx, governance.ModelRule{ScopeType: governance.ScopePlatform, Kind: governance.RuleAlias, Pattern: "fast", Target: "claude-haiku-4-5"}); err != nil {
		t.Fatal(err)
	}

	var out []a11yPage
	b := e.browser()
	add := func(name, tmpl string, a answer) {
		if a.status >= 500 || a.status == http.StatusSeeOther {
			t.Fatalf("%s: %d %s", name, a.status, a.location)
		}
		out = append(out, a11yPage{name: name, template: tmpl, a: a})
	}
	add("signin", "signin", b.get("/ui/signin"))
	add("signin refused", "signin", b.post("/ui/signin", url.Values{"token": {"not-the-token"}}))
	add("not found", "message", b.get("/ui/nope"))
	b.signIn(testAdminToken)

	add("connections", "connections", b.get("/ui/connections?project=p1&user=u1"))
	add("connect", "connect", b.get("/ui/connections/connect?project=p1&user=u1"))
	add("connect refused", "connect", b.post("/ui/connections/connect", postConnect("project", "p1", "", "openai-chat", "", "anthropic", "n", "sk-ant-api03-a11y-0000000000000000", "")))
	add("advanced", "advanced", b.get("/ui/connections/advanced?project=p1&user=u1"))

	add("issue refused", "tokens", b.post("/ui/tokens/issue", postIssue("", "p1", "u1", "claude-code", "", "")))
	add("token issued", "token-issued", b.post("/ui/tokens/issue", postIssue("ws-a11y", "p1", "u1", "claude-code", "", "")))
	add("tokens", "tokens", b.get("/ui/tokens?state=all"))
	toks, err := e.svc.ListTokens(ctx, resolver.TokenFilter{})
	if err != nil || len(toks) == 0 {
		t.Fatalf("tokens: %d %v", len(toks), err)
	}
	add("token revoke", "token-revoke", b.get("/ui/tokens/"+toks[0].ID+"/revoke"))

	add("credentials", "credentials", b.get("/ui/credentials"))
	add("credential add refused", "credentials", b.post("/ui/credentials/add", postAdd("anthropic", "n", "sk-ant-api03-a11y-0000000000000000", "http://x.example")))
	creds, err := e.svc.ListCredentials(ctx)
	if err != nil || len(creds) == 0 {
		t.Fatalf("credentials: %d %v", len(creds), err)
	}
	add("credential delete", "credential-delete", b.get("/ui/credentials/"+creds[0].ID+"/delete"))
	add("platform key refused", "credentials", b.post("/ui/platform-keys/set", url.Values{"provider": {"anthropic"}, "key": {""}}))
	if _, err := e.svc.SetPlatformKey(ctx, "anthropic", resolver.NewSecret("sk-ant-api03-a11y-platform-000000000000")); err != nil {
		t.Fatal(err)
	}
	add("credentials with a platform key", "credentials", b.get("/ui/credentials"))
	add("platform key delete", "platform-key-delete", b.get("/ui/platform-keys/anthropic/delete"))

	add("usage", "usage", b.get("/ui/usage"))
	add("usage by user per hour", "usage", b.get("/ui/usage?from=2026-11-27&to=2026-11-30&stack_by=user&bucket=hour"))
	add("usage refused", "usage", b.get("/ui/usage?from=yesterday"))
	add("usage of an empty range", "usage", b.get("/ui/usage?from=2026-10-01&to=2026-10-02"))

	add("budgets", "budgets", b.get("/ui/budgets"))
	add("budget refused", "budgets", b.post("/ui/budgets/set", url.Values{"scope_type": {"project"}, "metric": {"cost"}, "limit": {"lots"}, "window": {"fortnight"}}))
	add("limit refused", "budgets", b.post("/ui/limits/set", url.Values{"scope_type": {"project"}, "rpm": {"many"}, "mode": {"loud"}}))
	add("rule refused", "budgets", b.post("/ui/rules/set", url.Values{"scope_type": {"user"}, "scope_id": {"u1"}, "kind": {"alias"}, "pattern": {"fa*t"}}))
	add("budget delete", "budget-delete", b.get("/ui/budgets/"+budgets[0].ID+"/delete"))
	add("limit delete gone", "message", b.post("/ui/limits/lim_aaaaaaaaaaaaaaaa/delete", nil))

	add("audit", "audit", b.get("/ui/audit"))
	add("audit filtered", "audit", b.get("/ui/audit?action=credential&actor_kind=console"))
	return out
}

// a11yState is one page's problems and what was checked.
type a11yState struct {
	problems               []string
	fields, tables, charts int
}

func (s *a11yState) fail(format string, args ...any) {
	s.problems = append(s.problems, fmt.Sprintf(format, args...))
}

func attrOf(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

func attrVal(n *html.Node, key string) string {
	v, _ := attrOf(n, key)
	return v
}

func hasClass(n *html.Node, class string) bool {
	return slices.Contains(strings.Fields(attrVal(n, "class")), class)
}

// textOf is n's text as a screen reader reads it: every text node below,
// spaces folded, an aria-hidden subtree left out.
func textOf(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && attrVal(n, "aria-hidden") == "true" {
			return
		}
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
			b.WriteByte(' ')
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return strings.Join(strings.Fields(b.String()), " ")
}

func elements(root *html.Node, keep func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && keep(n) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(root)
	return out
}

func tagged(root *html.Node, tags ...string) []*html.Node {
	return elements(root, func(n *html.Node) bool { return slices.Contains(tags, n.Data) })
}

// describe names an element in a problem: its tag and id or name.
func describe(n *html.Node) string {
	for _, k := range []string{"id", "name", "class"} {
		if v := attrVal(n, k); v != "" {
			return fmt.Sprintf("<%s %s=%q>", n.Data, k, v)
		}
	}
	return "<" + n.Data + ">"
}

// auditPage runs every check on one parsed page.
func auditPage(doc *html.Node) a11yState {
	var s a11yState
	ids := map[string]*html.Node{}
	for _, n := range elements(doc, func(n *html.Node) bool { _, ok := attrOf(n, "id"); return ok }) {
		id := attrVal(n, "id")
		if ids[id] != nil {
			s.fail("id %q is used twice: a label or ARIA reference to it is ambiguous", id)
		}
		ids[id] = n
	}
	// A reference that names no element labels or describes nothing.
	for _, n := range elements(doc, func(*html.Node) bool { return true }) {
		for _, k := range []string{"aria-labelledby", "aria-describedby"} {
			for _, ref := range strings.Fields(attrVal(n, k)) {
				if ids[ref] == nil {
					s.fail("%s %s=%q names no element", describe(n), k, ref)
				}
			}
		}
	}

	if hs := tagged(doc, "html"); len(hs) != 1 || strings.TrimSpace(attrVal(hs[0], "lang")) == "" {
		s.fail("no <html lang>")
	}
	if ts := elements(doc, func(n *html.Node) bool { return n.Data == "title" && n.Parent != nil && n.Parent.Data == "head" }); len(ts) != 1 || textOf(ts[0]) == "" {
		s.fail("no single non-empty <title> in <head>")
	}
	if h1 := tagged(doc, "h1"); len(h1) != 1 {
		s.fail("%d <h1> elements, want one", len(h1))
	} else if textOf(h1[0]) == "" {
		s.fail("the <h1> is empty")
	}

	labelled := map[string]bool{}
	for _, l := range tagged(doc, "label") {
		f := attrVal(l, "for")
		if f == "" {
			s.fail("%s has no for: say which field it labels", describe(l))
			continue
		}
		if t := ids[f]; t == nil || !slices.Contains([]string{"input", "select", "textarea", "meter", "output", "progress"}, t.Data) {
			s.fail("<label for=%q> labels no form field", f)
		}
		if textOf(l) == "" {
			s.fail("<label for=%q> is empty", f)
		}
		labelled[f] = true
	}
	for _, f := range tagged(doc, "input", "select", "textarea") {
		typ := strings.ToLower(attrVal(f, "type"))
		if f.Data == "input" && slices.Contains([]string{"hidden", "submit", "button", "reset", "image"}, typ) {
			continue
		}
		s.fields++
		id := attrVal(f, "id")
		if (id != "" && labelled[id]) || strings.TrimSpace(attrVal(f, "aria-label")) != "" || attrVal(f, "aria-labelledby") != "" {
			continue
		}
		s.fail("%s has neither a <label for> nor an aria-label", describe(f))
	}
	// A button or a link is announced by its name: an empty one is a
	// stop the keyboard reaches with nothing to say.
	for _, n := range tagged(doc, "button", "a") {
		if n.Data == "a" && attrVal(n, "href") == "" {
			continue
		}
		if textOf(n) == "" && strings.TrimSpace(attrVal(n, "aria-label")) == "" {
			s.fail("%s has no text or aria-label", describe(n))
		}
	}
	for _, tb := range tagged(doc, "table") {
		s.tables++
		if len(tagged(tb, "th")) == 0 {
			s.fail("table %s has no <th> header cells", describe(tb))
		}
	}
	for _, img := range tagged(doc, "img") {
		if _, ok := attrOf(img, "alt"); !ok {
			s.fail("%s has no alt", describe(img))
		}
	}
	for _, svg := range tagged(doc, "svg") {
		if attrVal(svg, "aria-hidden") == "true" {
			continue // a decorative swatch; the text beside it names it
		}
		name := strings.TrimSpace(attrVal(svg, "aria-label"))
		for c := svg.FirstChild; c != nil && name == ""; c = c.NextSibling {
			if c.Type == html.ElementNode && c.Data == "title" {
				name = textOf(c)
			}
		}
		if name == "" {
			s.fail("%s has neither a <title> nor an aria-label", describe(svg))
		}
		if !hasClass(svg, "chart") {
			continue
		}
		s.charts++
		if attrVal(svg, "role") != "img" {
			s.fail("chart %s has no role=img", describe(svg))
		}
		unit := ""
		for _, tx := range tagged(svg, "text") {
			if hasClass(tx, "axis-unit") {
				unit = textOf(tx)
			}
		}
		if unit == "" {
			s.fail("chart %s names no unit (a <text class=axis-unit>)", describe(svg))
		}
		// The legend is what tells the colours apart: the chart points
		// at it, so a screen reader reads it with the chart.
		var legend *html.Node
		for _, ref := range strings.Fields(attrVal(svg, "aria-describedby")) {
			if n := ids[ref]; n != nil && (n.Data == "ul" || n.Data == "ol") {
				legend = n
			}
		}
		switch {
		case legend == nil:
			s.fail("chart %s has no legend: aria-describedby names no list", describe(svg))
		case len(tagged(legend, "li")) == 0:
			s.fail("chart %s: its legend %s lists no series", describe(svg), describe(legend))
		}
	}
	return s
}

func TestAuditPageFindsEachProblem(t *testing.T) {
	good := `<!doctype html><html lang="en"><head><title>T</title></head><body><h1>H</h1>
<label for="f">F</label><input id="f"><table><tr><th>A</th></tr></table>
<svg class="chart" role="img" aria-describedby="lg"><title>Cost</title><text class="axis-unit">USD</text></svg><ul id="lg"><li>a</li></ul>
<img src="x" alt=""><a href="/x">X</a><button>B</button></body></html>`
	check := func(src string) []string {
		doc, err := html.Parse(strings.NewReader(src))
		if err != nil {
			t.Fatal(err)
		}
		return auditPage(doc).problems
	}
	if p := check(good); len(p) != 0 {
		t.Fatalf("a correct page: %q", p)
	}
	for _, tc := range []struct{ name, from, to, want string }{
		{"NoLang", `<html lang="en">`, `<html>`, "no <html lang>"},
		{"NoTitle", `<title>T</title>`, ``, "<title>"},
		{"TwoH1", `<h1>H</h1>`, `<h1>H</h1><h1>I</h1>`, "2 <h1>"},
		{"UnlabelledInput", `<label for="f">F</label>`, ``, `<input id="f"> has neither`},
		{"LabelForNothing", `<label for="f">`, `<label for="g">`, `<label for="g"> labels no form field`},
		{"TableWithoutHeaders", `<th>A</th>`, `<td>A</td>`, "no <th>"},
		{"ChartWithoutTitle", `<title>Cost</title>`, ``, "neither a <title> nor an aria-label"},
		{"ChartWithoutUnit", `<text class="axis-unit">USD</text>`, ``, "names no unit"},
		{"ChartWithoutLegend", ` aria-describedby="lg"`, ``, "has no legend"},
		{"EmptyLegend", `<li>a</li>`, ``, "lists no series"},
		{"ImageWithoutAlt", ` alt=""`, ``, "has no alt"},
		{"EmptyLink", `>X</a>`, `></a>`, "has no text"},
		{"DuplicateID", `<ul id="lg">`, `<ul id="f">`, "used twice"},
		{"DanglingReference", `aria-describedby="lg"`, `aria-describedby="lg gone"`, `"gone" names no element`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(good, tc.from) {
				t.Fatalf("%q is not in the page", tc.from)
			}
			p := check(strings.Replace(good, tc.from, tc.to, 1))
			if !slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, tc.want) }) {
				t.Errorf("problems %q lack %q", p, tc.want)
			}
		})
	}
}

// Contrast (WCAG 2.2 AA): 4.5:1 for text (1.4.3), 3:1 for the focus
// outline and field borders (1.4.11).
const (
	minTextContrast    = 4.5
	minNonTextContrast = 3.0
)

// cssRule is one rule of the stylesheet, its custom properties resolved.
type cssRule struct {
	selector string
	decl     map[string]string
}

var (
	cssComment = regexp.MustCompile(`(?s)/\*.*?\*/`)
	cssVar     = regexp.MustCompile(`var\((--[a-z0-9-]+)\)`)
	hexColour  = regexp.MustCompile(`#(?:[0-9a-fA-F]{6}|[0-9a-fA-F]{3})\b`)
)

// parseCSS reads console.css, which is flat rules (no @media, no
// nesting), resolving var(--x) from :root.
func parseCSS(t *testing.T, src string) []cssRule {
	t.Helper()
	src = cssComment.ReplaceAllString(src, "")
	if strings.Contains(src, "@") {
		t.Fatal("console.css has an at-rule: parseCSS reads flat rules only, teach it")
	}
	var rules []cssRule
	vars := map[string]string{}
	for _, chunk := range strings.Split(src, "}") {
		sel, body, ok := strings.Cut(chunk, "{")
		if !ok {
			if strings.TrimSpace(chunk) != "" {
				t.Fatalf("console.css: cannot read %q", chunk)
			}
			continue
		}
		r := cssRule{selector: strings.Join(strings.Fields(sel), " "), decl: map[string]string{}}
		for _, d := range strings.Split(body, ";") {
			k, v, ok := strings.Cut(d, ":")
			if !ok {
				continue
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if strings.HasPrefix(k, "--") {
				vars[k] = v
			}
			r.decl[k] = v
		}
		rules = append(rules, r)
	}
	for _, r := range rules {
		for k, v := range r.decl {
			r.decl[k] = cssVar.ReplaceAllStringFunc(v, func(m string) string {
				name := cssVar.FindStringSubmatch(m)[1]
				if vars[name] == "" {
					t.Errorf("console.css: %s { %s: %s } uses undefined %s", r.selector, k, v, name)
				}
				return vars[name]
			})
		}
	}
	return rules
}

// colourIn is the hex colour a declaration's value holds ("" for none).
func colourIn(v string) string {
	c := hexColour.FindString(v)
	if len(c) == 4 {
		c = "#" + strings.Repeat(c[1:2], 2) + strings.Repeat(c[2:3], 2) + strings.Repeat(c[3:4], 2)
	}
	return strings.ToLower(c)
}

// luminance is a #rrggbb colour's relative luminance (WCAG 2.2).
func luminance(hex string) float64 {
	lin := func(s string) float64 {
		v, _ := strconv.ParseUint(s, 16, 8)
		c := float64(v) / 255
		if c <= 0.04045 {
			return c / 12.92
		}
		return math.Pow((c+0.055)/1.055, 2.4)
	}
	return 0.2126*lin(hex[1:3]) + 0.7152*lin(hex[3:5]) + 0.0722*lin(hex[5:7])
}

// contrastRatio is the WCAG contrast ratio of two #rrggbb colours.
func contrastRatio(a, b string) float64 {
	la, lb := luminance(a), luminance(b)
	return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)
}

// cssPair is a foreground drawn on a background, and the ratio it needs.
type cssPair struct {
	what, fg, bg string
	min          float64
}

// contrastPairs finds in the stylesheet the colours that are drawn on one
// another:
//   - a rule's text colour (color, or fill for SVG text, which has a
//     font-size) on its own background, or, when it sets none, on every
//     surface: the page and each background set without a text colour
//     (the header, table heads, the flash and error notes);
//   - a button's background set without a colour, under the text colour
//     buttons get (white);
//   - the focus outline and field borders on every surface.
func contrastPairs(t *testing.T, rules []cssRule) []cssPair {
	t.Helper()
	var surfaces, buttonBGs []cssRule
	buttonFG := ""
	isButton := func(sel string) bool { return regexp.MustCompile(`(^|[ ,.])button\b`).MatchString(sel) }
	for _, r := range rules {
		bg, fg := colourIn(r.decl["background"]+" "+r.decl["background-color"]), colourIn(r.decl["color"])
		switch {
		case isButton(r.selector) && fg != "":
			buttonFG = fg
		case bg != "" && fg == "" && isButton(r.selector):
			buttonBGs = append(buttonBGs, r)
		case bg != "" && fg == "":
			surfaces = append(surfaces, r)
		}
		if r.selector == "body" {
			surfaces = append(surfaces, r)
		}
	}
	if buttonFG == "" || len(surfaces) < 2 {
		t.Fatalf("console.css: no button text colour (%q) or fewer than two surfaces (%d)", buttonFG, len(surfaces))
	}
	bgOf := func(r cssRule) string { return colourIn(r.decl["background"] + " " + r.decl["background-color"]) }
	var out []cssPair
	onSurfaces := func(what, fg string, min float64) {
		for _, s := range surfaces {
			out = append(out, cssPair{what + " on " + s.selector, fg, bgOf(s), min})
		}
	}
	for _, r := range rules {
		fg := colourIn(r.decl["color"])
		if fg == "" && r.decl["font-size"] != "" {
			fg = colourIn(r.decl["fill"])
		}
		if fg != "" {
			if bg := bgOf(r); bg != "" {
				out = append(out, cssPair{r.selector, fg, bg, minTextContrast})
			} else {
				onSurfaces(r.selector, fg, minTextContrast)
			}
		}
		if c := colourIn(r.decl["outline"]); c != "" {
			onSurfaces(r.selector+" outline", c, minNonTextContrast)
		}
		if c := colourIn(r.decl["border"]); c != "" && regexp.MustCompile(`\b(input|select|textarea)\b`).MatchString(r.selector) {
			onSurfaces(r.selector+" border", c, minNonTextContrast)
		}
	}
	for _, r := range buttonBGs {
		out = append(out, cssPair{r.selector + " (button text)", buttonFG, bgOf(r), minTextContrast})
	}
	return out
}

// TestStylesheetContrast checks every colour pair contrastPairs finds in
// console.css against WCAG AA.
func TestStylesheetContrast(t *testing.T) {
	if r := contrastRatio("#777777", "#ffffff"); math.Abs(r-4.48) > 0.01 {
		t.Fatalf("contrast of #777 on white is %.3f, want 4.48", r)
	}
	if r := contrastRatio("#000000", "#ffffff"); math.Abs(r-21) > 1e-9 {
		t.Fatalf("contrast of black on white is %.3f, want 21", r)
	}
	css, err := fs.ReadFile(staticFS, "static/console.css")
	if err != nil {
		t.Fatal(err)
	}
	pairs := contrastPairs(t, parseCSS(t, string(css)))
	// Body text, links, a badge and buttons are among them.
	for _, want := range []string{"body", "a on body", ".badge-project", "button, .button", "button.danger (button text)", ":focus-visible outline on body"} {
		if !slices.ContainsFunc(pairs, func(p cssPair) bool { return p.what == want }) {
			t.Errorf("no pair %q checked", want)
		}
	}
	for _, p := range pairs {
		if r := contrastRatio(p.fg, p.bg); r < p.min {
			t.Errorf("%s: %s on %s is %.2f:1, want at least %.1f:1", p.what, p.fg, p.bg, r, p.min)
		}
	}
	t.Logf("%d colour pairs checked", len(pairs))
}
