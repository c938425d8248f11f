package registry

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// yaml.v3's strict mode (KnownFields) words its errors in Go types and does
// not apply to Node.Decode, which decodes the sections item by item. Walking
// the node tree against the Go types instead reports every unknown key, at
// every depth, at its own line, with the nearest known key.

var nodeType = reflect.TypeFor[yaml.Node]()

// unknownKeys returns one problem per mapping key under n that t has no
// field for. at names n for the reader ("providers.openai"); empty is the
// top level. A yaml.Node field is left to its own decoder.
func unknownKeys(t reflect.Type, n *yaml.Node, at string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nodeType {
		return nil
	}
	var probs []string
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // a type error, reported by the decoder
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Tag == "!!merge" {
				continue
			}
			ft, ok := fields.types[k.Value]
			if !ok {
				probs = append(probs, unknownKey(at, k, fields.names))
				continue
			}
			probs = append(probs, unknownKeys(ft, v, join(at, k.Value))...)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			probs = append(probs, unknownKeys(t.Elem(), n.Content[i+1], join(at, n.Content[i].Value))...)
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		for i, c := range n.Content {
			probs = append(probs, unknownKeys(t.Elem(), c, fmt.Sprintf("%s[%d]", at, i))...)
		}
	}
	return probs
}

func join(at, key string) string {
	if at == "" {
		return key
	}
	return at + "." + key
}

func unknownKey(at string, k *yaml.Node, known []string) string {
	msg := fmt.Sprintf("line %d: unknown key %q", k.Line, k.Value)
	if at == "" {
		msg = fmt.Sprintf("line %d: unknown top-level key %q", k.Line, k.Value)
	} else {
		msg = at + ": " + msg
	}
	if s := nearest(k.Value, known); s != "" {
		return msg + fmt.Sprintf("; did you mean %q?", s)
	}
	return msg + "; known keys: " + strings.Join(known, ", ")
}

type fieldSet struct {
	names []string // in declaration order, for the reader
	types map[string]reflect.Type
}

// yamlFields lists the keys yaml.v3 decodes into struct t, inline structs
// included.
func yamlFields(t reflect.Type) fieldSet {
	fs := fieldSet{types: map[string]reflect.Type{}}
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			tag := f.Tag.Get("yaml")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			if strings.Contains(","+opts+",", ",inline,") && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			fs.names = append(fs.names, name)
			fs.types[name] = f.Type
		}
	}
	walk(t)
	return fs
}

// nearest returns the known key closest to k, or "" when none is close
// enough to be what was meant.
func nearest(k string, known []string) string {
	best, bestD := "", len(k)/3
	if bestD < 1 {
		bestD = 1
	}
	for _, c := range known {
		if d := editDistance(strings.ToLower(k), c); d <= bestD && (best == "" || d < bestD) {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the optimal-string-alignment distance: insertions,
// deletions, substitutions and swaps of neighbours each cost one, so that
// "base_url_evn" is one step from "base_url_env".
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

// parserProblems are the problems yaml.v3's parser (not its scanner)
// reports. For these it prints the zero-based line of the mark, one before
// the line meant.
var parserProblems = map[string]bool{
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"found duplicate %YAML directive":        true,
	"found duplicate %TAG directive":         true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

var syntaxLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// syntaxProblem turns a yaml.v3 syntax error into one problem with the
// line as an editor counts it.
func syntaxProblem(err error, src []byte) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	m := syntaxLineRE.FindStringSubmatch(msg)
	if m == nil || !parserProblems[m[2]] {
		return msg
	}
	lines := strings.SplitAfter(string(src), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	line, _ := strconv.Atoi(m[1])
	// A problem at the end of a file without a final newline is marked on
	// the line after its last.
	line = min(line+1, len(lines))
	// When yaml.v3 knows where the broken block began it names that line,
	// not the one that broke it ("   route:" indented one space short, two
	// lines down). The parser reads as a stream, so every prefix of the file
	// from the line that broke it on fails just as the whole file does;
	// shorter ones do not.
	line += sort.Search(len(lines)-line, func(i int) bool {
		var n yaml.Node
		err := yaml.Unmarshal([]byte(strings.Join(lines[:line+i], "")), &n)
		return err != nil && strings.TrimPrefix(err.Error(), "yaml: ") == msg
	})
	return fmt.Sprintf("line %d: %s", line, m[2])
}

var (
	unmarshalRE = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+)(?: `(.*)`)? into (.+)$")
	setTwiceRE  = regexp.MustCompile(`^line (\d+): field (\S+) already set in type .+$`)
)

// typeProblem rewrites one yaml.v3 decoding error of the value n, named
// at, in the file's terms rather than Go's, naming the key at fault.
func typeProblem(msg string, n *yaml.Node, at string) string {
	name := func(p string) string {
		if p == "" {
			return ""
		}
		return p + ": "
	}
	if m := setTwiceRE.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("%sline %s: key %q is given twice", name(at), m[1], m[2])
	}
	m := unmarshalRE.FindStringSubmatch(msg)
	if m == nil {
		return name(at) + msg
	}
	got := map[string]string{"str": "text", "int": "a number", "float": "a number", "bool": "true or false", "seq": "a list", "map": "a mapping", "null": "nothing", "timestamp": "a date"}[m[2]]
	if got == "" {
		got = "!!" + m[2]
	}
	if m[3] != "" {
		got += " " + strconv.Quote(m[3])
	}
	line, _ := strconv.Atoi(m[1])
	if p := pathAt(n, line, m[2] == "seq" || m[2] == "map", m[3], at); p != "" {
		at = p
	}
	return fmt.Sprintf("%sline %s: expected %s, got %s", name(at), m[1], goTypeWords(m[4]), got)
}

// pathAt names the value under n, itself named at, that starts on line,
// is a collection or not and, for a scalar, shows as value in yaml.v3's
// message (cut to seven characters and "..." past ten). A flow mapping
// holds several values on one line; the deepest match wins.
func pathAt(n *yaml.Node, line int, collection bool, value, at string) string {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if p := pathAt(n.Content[i+1], line, collection, value, join(at, n.Content[i].Value)); p != "" {
				return p
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if p := pathAt(c, line, collection, value, fmt.Sprintf("%s[%d]", at, i)); p != "" {
				return p
			}
		}
	}
	if n.Line != line {
		return ""
	}
	if isColl := n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode; isColl != collection {
		return ""
	}
	if cut, ok := strings.CutSuffix(value, "..."); ok && len(value) == 10 {
		if !strings.HasPrefix(n.Value, cut) {
			return ""
		}
	} else if !collection && n.Value != value {
		return ""
	}
	return at
}

// goTypeWords names a Go type as the YAML value it decodes from.
func goTypeWords(t string) string {
	t = strings.TrimLeft(t, "*")
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["), strings.Contains(t, "."):
		return "a mapping"
	case t == "bool":
		return "true or false"
	case t == "string":
		return "text"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "a whole number"
	case strings.HasPrefix(t, "float"):
		return "a number"
	}
	return "a value"
}
