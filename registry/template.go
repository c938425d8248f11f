package registry

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// A tmpl is the part of Go's text/template language that harness env
// values and config snippets need:
//
//	{{.Field}}                                   a field's value
//	{{if C}} … {{else if C}} … {{else}} … {{end}}  branches
//	{{/* comment */}}, and the {{- and -}} trim markers
//
// where C is .Field (true when not empty), not .Field, eq .Field "a" ["b" …]
// (equal to any) or ne .Field "a". Every field is a string.
//
// Why not text/template itself: its executor calls
// reflect.Value.MethodByName with names known only at run time, so the
// linker keeps every exported method of every type in the binary. That was
// 7.7 MB of a 38 MB tollgate and 2.7 MB of its idle RSS. A template written
// in this subset renders the same under text/template
// (FuzzTemplateMatchesTextTemplate checks it), so what an admin knows of Go
// templates carries over, and anything outside the subset is refused when
// the registry loads, not when a workspace asks for its setup.
type tmpl struct{ nodes []tmplNode }

// tmplNode is one of tmplText, tmplField or *tmplIf.
type tmplNode any

type (
	tmplText  string
	tmplField string
	tmplIf    struct {
		branches []tmplBranch
		orElse   []tmplNode
	}
	tmplBranch struct {
		cond tmplCond
		body []tmplNode
	}
	// tmplCond is field alone (op ""), or op "not", "eq" or "ne" with
	// the literals to compare against.
	tmplCond struct {
		op    string
		field string
		lits  []string
	}
)

// templateFields are the fields a template may name: what Setup knows.
var templateFields = []string{"BaseURL", "Token", "KeyEnv", "Model", "Dialect"}

const tmplHelp = "harness templates support {{.Field}}, {{if C}}, {{else if C}}, {{else}}, {{end}} and {{/* comments */}}, with C one of .Field, not .Field, eq .Field \"a\" …, ne .Field \"a\""

// parseTemplate checks src against the subset and compiles it.
func parseTemplate(src string) (*tmpl, error) {
	items, err := lexTemplate(src)
	if err != nil {
		return nil, err
	}
	p := &tmplParser{items: items}
	nodes, err := p.list()
	if err != nil {
		return nil, err
	}
	if p.i < len(p.items) { // list stopped at an else or end
		return nil, p.errorf("{{%s}} without {{if}}", p.items[p.i].words[0])
	}
	return &tmpl{nodes: nodes}, nil
}

// execute renders t; every field it names was checked at parse time.
func (t *tmpl) execute(fields map[string]string) string {
	var b strings.Builder
	writeNodes(&b, t.nodes, fields)
	return b.String()
}

func writeNodes(b *strings.Builder, nodes []tmplNode, fields map[string]string) {
	for _, n := range nodes {
		switch n := n.(type) {
		case tmplText:
			b.WriteString(string(n))
		case tmplField:
			b.WriteString(fields[string(n)])
		case *tmplIf:
			body := n.orElse
			for _, br := range n.branches {
				if br.cond.holds(fields) {
					body = br.body
					break
				}
			}
			writeNodes(b, body, fields)
		}
	}
}

func (c tmplCond) holds(fields map[string]string) bool {
	v := fields[c.field]
	switch c.op {
	case "not":
		return v == ""
	case "eq":
		return slices.Contains(c.lits, v)
	case "ne":
		return v != c.lits[0]
	}
	return v != ""
}

type tmplParser struct {
	items []tmplItem
	i     int
}

func (p *tmplParser) errorf(format string, args ...any) error {
	line := 1
	if p.i < len(p.items) {
		line = p.items[p.i].line
	} else if len(p.items) > 0 {
		line = p.items[len(p.items)-1].line
	}
	return fmt.Errorf("line %d: %s", line, fmt.Sprintf(format, args...))
}

// list parses nodes up to the end or to an {{else…}} or {{end}}, which it
// leaves for the caller.
func (p *tmplParser) list() ([]tmplNode, error) {
	var nodes []tmplNode
	for ; p.i < len(p.items); p.i++ {
		it := p.items[p.i]
		switch {
		case !it.action:
			nodes = append(nodes, tmplText(it.text))
		case it.words == nil: // a comment
		case it.words[0] == "else" || it.words[0] == "end":
			return nodes, nil
		case it.words[0] == "if":
			n, err := p.ifNode()
			if err != nil {
				return nil, err
			}
			nodes = append(nodes, n)
		default:
			f, err := p.field(it.words[0])
			if err != nil {
				return nil, err
			}
			if len(it.words) > 1 {
				return nil, p.errorf("unexpected %s after .%s; %s", it.words[1], f, tmplHelp)
			}
			nodes = append(nodes, tmplField(f))
		}
	}
	return nodes, nil
}

// ifNode parses from the {{if}} at p.i through its {{end}}, leaving p.i on
// the {{end}}.
func (p *tmplParser) ifNode() (*tmplIf, error) {
	n := &tmplIf{}
	cond, line := p.items[p.i].words[1:], p.items[p.i].line
	unclosed := func() error { return fmt.Errorf("line %d: {{if}} without {{end}}", line) }
	for {
		c, err := p.cond(cond)
		if err != nil {
			return nil, err
		}
		p.i++
		body, err := p.list()
		if err != nil {
			return nil, err
		}
		n.branches = append(n.branches, tmplBranch{cond: c, body: body})
		if p.i == len(p.items) {
			return nil, unclosed()
		}
		w := p.items[p.i].words
		switch {
		case w[0] == "end" && len(w) == 1:
			return n, nil
		case w[0] == "else" && len(w) > 1 && w[1] == "if":
			cond = w[2:]
			continue
		case w[0] == "else" && len(w) == 1:
		default:
			return nil, p.errorf("unexpected %s after %s; %s", w[1], w[0], tmplHelp)
		}
		p.i++
		if n.orElse, err = p.list(); err != nil {
			return nil, err
		}
		if p.i == len(p.items) {
			return nil, unclosed()
		}
		if w := p.items[p.i].words; w[0] != "end" || len(w) > 1 {
			return nil, p.errorf("{{%s}} after {{else}}: only {{end}} may follow it", strings.Join(w, " "))
		}
		return n, nil
	}
}

func (p *tmplParser) cond(words []string) (tmplCond, error) {
	if len(words) == 0 {
		return tmplCond{}, p.errorf("{{if}} needs a condition; %s", tmplHelp)
	}
	op, args := "", words
	switch words[0] {
	case "not", "eq", "ne":
		op, args = words[0], words[1:]
	}
	if len(args) == 0 {
		return tmplCond{}, p.errorf("%s needs a .Field; %s", op, tmplHelp)
	}
	f, err := p.field(args[0])
	if err != nil {
		return tmplCond{}, err
	}
	c := tmplCond{op: op, field: f}
	for _, a := range args[1:] {
		lit, err := unquote(a)
		if err != nil || op == "" || op == "not" {
			return tmplCond{}, p.errorf("unexpected %s in condition; %s", a, tmplHelp)
		}
		c.lits = append(c.lits, lit)
	}
	switch {
	case op == "eq" && len(c.lits) == 0:
		return tmplCond{}, p.errorf("eq needs a .Field and at least one quoted string")
	case op == "ne" && len(c.lits) != 1:
		return tmplCond{}, p.errorf("ne needs a .Field and exactly one quoted string")
	}
	return c, nil
}

// field checks a .Field word and returns its name.
func (p *tmplParser) field(w string) (string, error) {
	name, ok := strings.CutPrefix(w, ".")
	if !ok {
		return "", p.errorf("unexpected %s; %s", w, tmplHelp)
	}
	if !slices.Contains(templateFields, name) {
		return "", p.errorf("unknown field %s; fields are .%s", w, strings.Join(templateFields, ", ."))
	}
	return name, nil
}

func unquote(w string) (string, error) {
	if w == "" || w[0] != '"' && w[0] != '`' {
		return "", fmt.Errorf("not a string")
	}
	return strconv.Unquote(w)
}

// tmplItem is a lexed piece of a template: text, or an action's words
// (none for a comment), with the line it starts on for errors.
type tmplItem struct {
	text   string
	words  []string
	action bool
	line   int
}

const tmplSpace = " \t\r\n"

// lexTemplate splits src into text and actions, applying the trim markers.
func lexTemplate(src string) ([]tmplItem, error) {
	var items []tmplItem
	line, trimNext := 1, false
	for {
		i := strings.Index(src, "{{")
		text := src
		if i >= 0 {
			text = src[:i]
		}
		if trimNext {
			text = strings.TrimLeft(text, tmplSpace)
		}
		if i < 0 {
			if text != "" {
				items = append(items, tmplItem{text: text, line: line})
			}
			return items, nil
		}
		rest := src[i+2:]
		if len(rest) >= 2 && rest[0] == '-' && isSpace(rest[1]) {
			text = strings.TrimRight(text, tmplSpace)
			rest = rest[2:]
		}
		if text != "" {
			items = append(items, tmplItem{text: text, line: line})
		}
		line += strings.Count(src[:i], "\n")
		words, n, trim, err := lexAction(rest)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		items = append(items, tmplItem{words: words, action: true, line: line})
		line += strings.Count(rest[:n], "\n")
		src, trimNext = rest[n:], trim
	}
}

// lexAction reads one action after its {{ (and left trim marker) up to and
// including its closing }}: its words, the bytes read, and whether it ended
// with the right trim marker.
func lexAction(s string) (words []string, n int, trim bool, err error) {
	if strings.HasPrefix(s, "/*") {
		end := strings.Index(s[2:], "*/") // after the /*, so /*/ is not closed
		if end < 0 {
			return nil, 0, false, fmt.Errorf("unclosed comment")
		}
		end += 2
		n, trim, ok := closing(s, end+2)
		if !ok && end+3 <= len(s) && isSpace(s[end+2]) {
			n, trim, ok = closing(s, end+3)
			ok = ok && trim
		}
		if !ok {
			return nil, 0, false, fmt.Errorf("comment ends before closing delimiter")
		}
		return nil, n, trim, nil
	}
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if n, trim, ok := closing(s, i); ok {
			if len(words) == 0 {
				return nil, 0, false, fmt.Errorf("empty action; %s", tmplHelp)
			}
			return words, n, trim, nil
		}
		if i >= len(s) {
			return nil, 0, false, fmt.Errorf("unclosed action")
		}
		start := i
		switch s[i] {
		case '"':
			for i++; i < len(s) && s[i] != '"' && s[i] != '\n'; i++ {
				if s[i] == '\\' && i+1 < len(s) && s[i+1] != '\n' {
					i++
				}
			}
			if i >= len(s) || s[i] != '"' {
				return nil, 0, false, fmt.Errorf("unterminated quoted string")
			}
			i++
		case '`':
			end := strings.IndexByte(s[i+1:], '`')
			if end < 0 {
				return nil, 0, false, fmt.Errorf("unterminated raw quoted string")
			}
			i += end + 2
		default:
			for i < len(s) && !isSpace(s[i]) && !strings.HasPrefix(s[i:], "}}") {
				i++
			}
		}
		words = append(words, s[start:i])
		// Words are separated by white space, as text/template wants:
		// `.Model"m"` or `"a""b"` are errors there, so they are here.
		if _, _, ok := closing(s, i); !ok && i < len(s) && !isSpace(s[i]) {
			return nil, 0, false, fmt.Errorf("unexpected %q right after %s: separate words with a space", s[i], s[start:i])
		}
	}
}

func isSpace(c byte) bool { return strings.IndexByte(tmplSpace, c) >= 0 }

// closing reports whether s[i:] closes an action: "}}", or the right trim
// marker "-}}" after white space.
func closing(s string, i int) (n int, trim, ok bool) {
	switch {
	case strings.HasPrefix(s[i:], "}}"):
		return i + 2, false, true
	case strings.HasPrefix(s[i:], "-}}") && i > 0 && isSpace(s[i-1]):
		return i + 3, true, true
	}
	return 0, false, false
}
