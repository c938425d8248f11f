package metering

import (
	"math/bits"
	"strconv"
	"strings"
	"unsafe"

	"github.com/tidwall/gjson"
)

// jsonStr returns the contents of a raw JSON string, or "" for any other
// value. Strings without escapes are sliced, not copied.
func jsonStr(raw string) string {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return ""
	}
	if strings.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1]
	}
	return gjson.Parse(raw).Str
}

// jsonView views b as a string without copying. gjson reads it in place; no
// result outlives the event buffer, and values kept are copied (meterSetIdent).
func jsonView(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// meterPaths resolves a fixed set of gjson paths against one JSON object at
// a time. Each gjson.Get walks the document again, and a Gemini chunk needs
// half a dozen lookups, several microseconds per event; instead one pass over
// the members finds every path's first member, jumping over strings with
// IndexByte, and the rest of each path (a few members or an array index) is
// resolved inside that member's value. Paths using gjson syntax beyond dotted
// names go to gjson whole.
type meterPaths struct {
	heads []string    // distinct first members
	refs  []meterPath // one per added path
}

// meterDoc holds one Meter's scan of the current document for a meterPaths.
type meterDoc struct {
	doc  string
	vals []string // raw value per head, "" when absent
}

type meterPath struct {
	head int      // index into heads; -1 resolves the full path with gjson
	rest []string // members or array indexes below the head
	full string
	// needle is the quoted last member name of a nested path: a head value
	// that does not contain it cannot hold the path, and a substring search
	// is far cheaper than walking the value (Gemini's finishReason sits in
	// candidates on one chunk in many).
	needle string
}

// add registers path and returns its reference, or -1 for an empty path.
func (ps *meterPaths) add(path string) int {
	if path == "" {
		return -1
	}
	ref := meterPath{head: -1, full: path}
	// gjson syntax beyond plain dotted names (escapes, wildcards, queries,
	// modifiers) goes through gjson whole.
	if !strings.ContainsAny(path, `\*?#@|!()=<>[]{}`) {
		parts := strings.Split(path, ".")
		ref.rest = parts[1:]
		if last := parts[len(parts)-1]; len(parts) > 1 {
			if _, err := strconv.Atoi(last); err != nil {
				ref.needle = `"` + last + `"`
			}
		}
		ref.head = len(ps.heads)
		for i, h := range ps.heads {
			if h == parts[0] {
				ref.head = i
			}
		}
		if ref.head == len(ps.heads) {
			ps.heads = append(ps.heads, parts[0])
		}
	}
	ps.refs = append(ps.refs, ref)
	return len(ps.refs) - 1
}

// scan locates every head member in doc, into d.
func (ps *meterPaths) scan(d *meterDoc, doc string) {
	d.doc = doc
	jsonMembers(doc, ps.heads, d.vals)
}

// get returns the raw JSON of a reference's value in the document last
// scanned into d, or "" when absent.
func (ps *meterPaths) get(d *meterDoc, ref int) string {
	r := &ps.refs[ref]
	if r.head < 0 {
		return gjson.Get(d.doc, r.full).Raw
	}
	raw := d.vals[r.head]
	if r.needle != "" && !strings.Contains(raw, r.needle) {
		return ""
	}
	for _, name := range r.rest {
		if raw == "" {
			break
		}
		raw = jsonChild(raw, name)
	}
	return raw
}

// jsonChild returns the raw value of member name of an object, or of
// element name (a decimal index) of an array, or "".
func jsonChild(raw, name string) string {
	if raw[0] == '{' {
		var v [1]string
		jsonMembers(raw, []string{name}, v[:])
		return v[0]
	}
	n, err := strconv.Atoi(name)
	if raw[0] != '[' || err != nil || n < 0 {
		return ""
	}
	i := jsonSkipSpace(raw, 1)
	for k := 0; i < len(raw) && raw[i] != ']'; k++ {
		e := jsonValueEnd(raw, i)
		if e < 0 {
			return ""
		}
		if k == n {
			return raw[i:e]
		}
		i = jsonSkipSpace(raw, e)
		if i >= len(raw) || raw[i] != ',' {
			return ""
		}
		i = jsonSkipSpace(raw, i+1)
	}
	return ""
}

// jsonMembers sets vals[i] to the raw value of the member named heads[i] in
// the JSON object doc, or "" when absent. The first of duplicate members
// wins, as in gjson. It stops at the first malformed byte, keeping what it
// found; keys written with escapes never match (providers do not escape
// member names).
func jsonMembers(doc string, heads []string, vals []string) {
	for i := range vals {
		vals[i] = ""
	}
	i := jsonSkipSpace(doc, 0)
	if i >= len(doc) || doc[i] != '{' {
		return
	}
	i++
	left := len(heads)
	for left > 0 {
		i = jsonSkipSpace(doc, i)
		if i >= len(doc) || doc[i] != '"' {
			return
		}
		ke := jsonStringEnd(doc, i+1)
		if ke < 0 {
			return
		}
		key := doc[i+1 : ke]
		i = jsonSkipSpace(doc, ke+1)
		if i >= len(doc) || doc[i] != ':' {
			return
		}
		i = jsonSkipSpace(doc, i+1)
		ve := jsonValueEnd(doc, i)
		if ve < 0 {
			return
		}
		for h, name := range heads {
			if key == name {
				if vals[h] == "" {
					vals[h] = doc[i:ve]
					left--
				}
				break
			}
		}
		i = jsonSkipSpace(doc, ve)
		if i >= len(doc) || doc[i] != ',' {
			return
		}
		i++
	}
}

func jsonSkipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// jsonStringEnd returns the index of the quote closing a string whose
// contents start at i, or -1. It tests eight bytes at a time for '"' or '\\'
// (SWAR): strings are most of what the scan passes over.
func jsonStringEnd(s string, i int) int {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	for i+8 <= len(s) {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		q, b := w^(lo*'"'), w^(lo*'\\')
		// The lowest flagged byte is the first '"' or '\\' in the word.
		if m := ((q-lo)&^q | (b-lo)&^b) & hi; m != 0 {
			k := i + bits.TrailingZeros64(m)/8
			if s[k] == '"' {
				return k
			}
			i = k + 2
			continue
		}
		i += 8
	}
	for i < len(s) {
		switch s[i] {
		case '"':
			return i
		case '\\':
			i += 2
		default:
			i++
		}
	}
	return -1
}

// jsonStructural marks the bytes jsonValueEnd must look at inside an
// object or array; a table lookup skips the rest faster than a switch.
var jsonStructural = [256]bool{'"': true, '{': true, '[': true, '}': true, ']': true}

// jsonValueEnd returns the index just after the value starting at i, or -1
// when it is missing or unterminated.
func jsonValueEnd(s string, i int) int {
	if i >= len(s) {
		return -1
	}
	switch s[i] {
	case '"':
		e := jsonStringEnd(s, i+1)
		if e < 0 {
			return -1
		}
		return e + 1
	case '{', '[':
		depth := 0
		for i < len(s) {
			for i < len(s) && !jsonStructural[s[i]] {
				i++
			}
			if i >= len(s) {
				break
			}
			switch s[i] {
			case '"':
				e := jsonStringEnd(s, i+1)
				if e < 0 {
					return -1
				}
				i = e + 1
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	}
	j := i
	for j < len(s) {
		switch s[j] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			if j == i {
				return -1
			}
			return j
		}
		j++
	}
	return j
}
