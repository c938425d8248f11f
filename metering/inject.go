package metering

import (
	"github.com/tidwall/gjson"
)

// Byte snippets InjectIncludeUsage inserts.
const (
	injectMember  = `"stream_options":{"include_usage":true}`
	injectObject  = `{"include_usage":true}`
	injectField   = `"include_usage":true`
	injectTrue    = `true`
	injectComma   = `,`
	injectMaxGrow = len(injectComma) + len(injectMember)
)

// InjectIncludeUsage asks an OpenAI Chat upstream for the usage chunk of a
// streamed answer (wire-formats.md §7). It edits bytes in place of a
// decode/encode round trip, so every byte of the client's request other than
// the inserted or flipped field is unchanged:
//
//   - stream not true: body unchanged (OpenAI rejects stream_options then);
//   - no stream_options, or stream_options null: one is added, injected;
//   - stream_options without include_usage: the field is merged in, injected;
//   - include_usage false (or any value but true): flipped to true, injected,
//     because a client that said false must still be metered exactly, and
//     the Meter's Filter hides the chunk from it (headroomlabs-ai/headroom
//     PR #2026 left false alone and lost the usage);
//   - include_usage true: unchanged, clientAsked.
//
// A body that is not valid JSON, or whose stream_options is neither an
// object nor null, is returned unchanged: the provider will reject it with
// its own error. out aliases body when nothing changed.
func InjectIncludeUsage(body []byte) (out []byte, injected bool, clientAsked bool) {
	if !gjson.ValidBytes(body) {
		return body, false, false
	}
	s := jsonView(body)
	if gjson.Get(s, "stream").Type != gjson.True {
		return body, false, false
	}
	so := gjson.Get(s, "stream_options")
	switch {
	case !so.Exists():
		end := len(body) - 1
		for end >= 0 && injectIsSpace(body[end]) {
			end--
		}
		// end is the top-level object's '}'; insert after its last member,
		// so a pretty-printed body keeps its closing line.
		at := end - 1
		for at >= 0 && injectIsSpace(body[at]) {
			at--
		}
		if end < 0 || body[end] != '}' || at < 0 || body[at] == '{' {
			return body, false, false
		}
		return injectSplice(body, at+1, at+1, injectComma, injectMember), true, false
	case so.Type == gjson.Null:
		if !injectRawAt(body, so) {
			return body, false, false
		}
		return injectSplice(body, so.Index, so.Index+len(so.Raw), injectObject), true, false
	case so.IsObject():
		if !injectRawAt(body, so) {
			return body, false, false
		}
		iu := so.Get("include_usage")
		switch {
		case iu.Type == gjson.True:
			return body, false, true
		case iu.Exists():
			if !injectRawAt(body, iu) {
				return body, false, false
			}
			return injectSplice(body, iu.Index, iu.Index+len(iu.Raw), injectTrue), true, false
		}
		open := so.Index + 1
		inner := so.Raw[1 : len(so.Raw)-1]
		for i := 0; i < len(inner); i++ {
			if !injectIsSpace(inner[i]) {
				return injectSplice(body, open, open, injectField, injectComma), true, false
			}
		}
		return injectSplice(body, open, open, injectField), true, false
	}
	return body, false, false
}

// injectRawAt checks that r's offset points at its raw text in body, so an edit
// never lands in the wrong place (gjson reports Index 0 when unknown).
func injectRawAt(body []byte, r gjson.Result) bool {
	return r.Index > 0 && r.Index+len(r.Raw) <= len(body) && string(body[r.Index:r.Index+len(r.Raw)]) == r.Raw
}

// injectSplice returns a new slice: body[:from], the parts, then body[to:].
func injectSplice(body []byte, from, to int, parts ...string) []byte {
	out := make([]byte, 0, len(body)+injectMaxGrow)
	out = append(out, body[:from]...)
	for _, p := range parts {
		out = append(out, p...)
	}
	return append(out, body[to:]...)
}

func injectIsSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}
