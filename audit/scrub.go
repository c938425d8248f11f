package audit

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"regexp"
	"strings"
)

// Redacted replaces a value an entry must not hold.
const Redacted = "[redacted]"

// minSecretLen is the shortest secret searched for: a shorter one would
// match ordinary words and ids, and no key or token is that short.
const minSecretLen = 8

// secretField says a change field's name is a secret's (key, secret, token,
// password, authorization and *_key, *_secret, *_token, *_password): its
// value is redacted whatever it holds.
func secretField(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "key", "secret", "token", "password", "authorization", "apikey", "bearer":
		return true
	}
	for _, suf := range []string{"_key", "_secret", "_token", "_password", "-key", "-token"} {
		if strings.HasSuffix(n, suf) {
			return true
		}
	}
	return false
}

// secretShaped matches what reads as a key or token even when the caller
// did not name it: tollgate workspace tokens, sk-… keys (OpenAI,
// Anthropic) and Google API keys, long enough not to be a label.
var secretShaped = regexp.MustCompile(`(?i)(tgw_|sk-|AIza)[A-Za-z0-9_\-]{16,}`)

// forms are the spellings of a secret an entry is searched for: as is,
// URL-escaped, hex and base64 (standard and URL, padded or not).
func forms(secrets []string) []string {
	var out []string
	for _, s := range secrets {
		if len(s) < minSecretLen {
			continue
		}
		b := []byte(s)
		h := hex.EncodeToString(b)
		out = append(out, s, url.QueryEscape(s), url.PathEscape(s), h, strings.ToUpper(h),
			base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
			base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b))
	}
	return out
}

func scrubEntry(e Entry, secrets []string) Entry {
	f := forms(secrets)
	e.Actor.ID = scrubString(e.Actor.ID, f)
	e.Source = scrubString(e.Source, f)
	e.Target = scrubString(e.Target, f)
	if e.Change != nil {
		e.Change = scrubValue(e.Change, f).(map[string]any)
	}
	return e
}

// scrubValue returns a copy of v, a change or a part of one, with every
// secret-named field and every string holding a secret redacted. Values of
// types other than maps, slices and scalars are kept only as their JSON
// would be, so nothing unscanned reaches the table.
func scrubValue(v any, f []string) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			if secretField(k) && val != nil && val != "" {
				out[scrubString(k, f)] = Redacted
				continue
			}
			out[scrubString(k, f)] = scrubValue(val, f)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, val := range x {
			out[i] = scrubValue(val, f)
		}
		return out
	case []string:
		out := make([]any, len(x))
		for i, val := range x {
			out[i] = scrubString(val, f)
		}
		return out
	case string:
		return scrubString(x, f)
	case nil, bool, int, int64, float64:
		return x
	}
	return scrubValue(normalise(v), f)
}

func scrubString(s string, f []string) string {
	for _, sec := range f {
		if strings.Contains(s, sec) {
			return Redacted
		}
	}
	if secretShaped.MatchString(s) {
		return Redacted
	}
	return s
}
