package registry

import (
	"fmt"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
)

// Harness env values and config snippets are Go text/templates over the
// fields Setup knows, every one a string.
var templateFields = []string{"BaseURL", "Token", "KeyEnv", "Model", "Dialect"}

// parseTemplate compiles src and checks every field it names, so a typo is
// refused when the registry loads rather than when a workspace first asks
// for its setup down a branch nobody tried.
func parseTemplate(src string) (*template.Template, error) {
	// The data is a map: a field it lacks is empty, not "<no value>".
	// Fields outside templateFields are refused below.
	t, err := template.New("").Option("missingkey=zero").Parse(src)
	if err != nil {
		// "template: :3: unexpected {{end}}" names a template that has
		// no name; the caller says which harness it is.
		msg, _ := strings.CutPrefix(err.Error(), "template: :")
		return nil, fmt.Errorf("line %s", msg)
	}
	if err := checkFields(src, t.Root); err != nil {
		return nil, err
	}
	return t, nil
}

// checkFields walks the parse tree for .Field references. Variables ($x)
// and functions cannot name a field on their own, so fields are the only
// thing left to check.
func checkFields(src string, n parse.Node) error {
	line := func() int { return 1 + strings.Count(src[:min(int(n.Position()), len(src))], "\n") }
	var kids []parse.Node
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			kids = n.Nodes
		}
	case *parse.ActionNode:
		kids = []parse.Node{n.Pipe}
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				kids = append(kids, c)
			}
		}
	case *parse.CommandNode:
		kids = n.Args
	case *parse.IfNode:
		kids = branch(&n.BranchNode)
	case *parse.RangeNode:
		kids = branch(&n.BranchNode)
	case *parse.WithNode:
		kids = branch(&n.BranchNode)
	case *parse.FieldNode:
		if len(n.Ident) != 1 || !slices.Contains(templateFields, n.Ident[0]) {
			return fmt.Errorf("line %d: unknown field .%s; fields are .%s", line(), strings.Join(n.Ident, "."), strings.Join(templateFields, ", ."))
		}
	case *parse.ChainNode:
		return fmt.Errorf("line %d: %s: every field is a string, with no fields of its own", line(), n)
	case *parse.TemplateNode:
		return fmt.Errorf("line %d: {{template}}: a harness template cannot call another", line())
	}
	for _, k := range kids {
		if err := checkFields(src, k); err != nil {
			return err
		}
	}
	return nil
}

// branch lists what if, range and with hold; an absent else is a nil
// *ListNode, which checkFields passes over.
func branch(b *parse.BranchNode) []parse.Node {
	return []parse.Node{b.Pipe, b.List, b.ElseList}
}

// render executes src with data.
func render(src string, data map[string]string) (string, error) {
	t, err := parseTemplate(src)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		msg, _ := strings.CutPrefix(err.Error(), "template: :")
		return "", fmt.Errorf("line %s", msg)
	}
	return b.String(), nil
}
