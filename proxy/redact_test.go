package proxy

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/resolver"
)

// keyEchoes are the forms in which providers and their middleboxes quote a
// key back: each hides the literal from a byte search.
func keyEchoes(key string) map[string]string {
	jsonEscaped := strings.ReplaceAll(key, "-", `\u002d`)
	var fully strings.Builder
	for _, r := range key {
		fmt.Fprintf(&fully, `\u%04x`, r)
	}
	inner := key[strings.LastIndex(key, "-")+1:]
	if inner == key {
		inner = key[4:] // AIza
	}
	return map[string]string{
		"Plain":         key,
		"JSONEscaped":   jsonEscaped,
		"FullyEscaped":  fully.String(),
		"UpperCased":    strings.ToUpper(key),
		"WithoutPrefix": inner,
		"URLEncoded":    url.QueryEscape(strings.ReplaceAll(key, "-", "%2D")),
		"PercentDash":   strings.ReplaceAll(key, "-", "%2D"),
		"Base64":        base64.StdEncoding.EncodeToString([]byte("Bearer " + key)),
	}
}

// TestRedactCanaryInEveryForm: the redactor matched only the literal key
// and a case-sensitive key shape, so escaped, re-cased, prefix-less, URL-
// or base64-encoded echoes reached the client.
func TestRedactCanaryInEveryForm(t *testing.T) {
	for _, key := range canaries {
		s := resolver.NewSecret(key)
		for form, echo := range keyEchoes(key) {
			t.Run(key[:6]+"/"+form, func(t *testing.T) {
				body := `{"error":{"message":"Incorrect API key provided: ` + echo + `","type":"invalid_request_error"}}`
				out := string(redactErrorBody([]byte(body), s, "openai", 400))
				if leaksGram(out, key) {
					t.Fatalf("%s echo passed: %s", form, out)
				}
				if !strings.Contains(out, "invalid_request_error") {
					t.Errorf("error type lost: %s", out)
				}
			})
		}
	}
	// What names only the key format or a last-4 mask is not the key.
	for _, benign := range []string{
		`{"error":{"message":"keys start with sk-ant-api03- and end in ...cdef","type":"invalid_request_error"}}`,
		`{"error":{"message":"Incorrect API key provided: sk-proj-****cdef","type":"invalid_request_error"}}`,
		`{"error":{"message":"task-management quota exceeded","type":"rate_limit_error"}}`,
	} {
		if out := string(redactErrorBody([]byte(benign), resolver.NewSecret(canaryAnthropic), "anthropic", 429)); out != benign {
			t.Errorf("benign body changed:\n%s\n%s", benign, out)
		}
	}
}

// leaksGram reports whether a client decoding s as JSON, then as URL
// encoding or base64, finds 8 consecutive characters of key (any case)
// after its 8 first, the part no format description shares.
func leaksGram(s, key string) bool {
	var v any
	decoded := []string{s}
	if json.Unmarshal([]byte(s), &v) == nil {
		b, _ := json.Marshal(v) // re-encoded with \u escapes resolved
		decoded = append(decoded, string(b))
		var m struct {
			Error struct{ Message string } `json:"error"`
		}
		if json.Unmarshal([]byte(s), &m) == nil {
			decoded = append(decoded, m.Error.Message)
			if u, err := url.QueryUnescape(m.Error.Message); err == nil {
				decoded = append(decoded, u)
			}
			for _, w := range strings.Fields(m.Error.Message) {
				if b, err := base64.StdEncoding.DecodeString(w); err == nil {
					decoded = append(decoded, string(b))
				}
			}
		}
	}
	lk := strings.ToLower(key)
	for _, d := range decoded {
		ld := strings.ToLower(d)
		for i := 8; i+8 <= len(lk); i++ {
			if strings.Contains(ld, lk[i:i+8]) {
				return true
			}
		}
	}
	return false
}

// TestRedactEchoesThroughTollgate: a provider answering 400 with the key it
// was sent, in each form, never shows it to the client, which keeps the
// status and an envelope of its dialect.
func TestRedactEchoesThroughTollgate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echo := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if form, sse := strings.CutPrefix(r.Header.Get("X-Fake-Fault"), "sse:"); sse {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n"+
				"data: {\"error\":{\"message\":\"Incorrect API key provided: %s\",\"type\":\"invalid_request_error\"}}\n\n", keyEchoes(key)[form])
			return
		}
		form, gz := strings.CutPrefix(r.Header.Get("X-Fake-Fault"), "gzip:")
		body := []byte(fmt.Sprintf(`{"error":{"message":"Incorrect API key provided: %s","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`, keyEchoes(key)[form]))
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Id", "req "+keyEchoes(key)[form])
		if gz {
			w.Header().Set("Content-Encoding", "gzip")
			body = gzipBytes(t, body)
		}
		w.WriteHeader(http.StatusBadRequest)
		w.Write(body)
	})}
	go echo.Serve(ln)
	t.Cleanup(func() { echo.Close() })
	e := newEnv(t, envOptions{upstreamURL: "http://" + ln.Addr().String()})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	var forms []string
	for form := range keyEchoes(canaryOpenAI) {
		forms = append(forms, form)
	}
	// A compressed error answer: redacting the gzip bytes found nothing,
	// and the client, told no Content-Encoding, could still gunzip the key.
	forms = append(forms, "gzip:Plain", "gzip:UpperCased")
	for _, form := range forms {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", form, stream), func(t *testing.T) {
				resp := e.do("POST", "/openai/v1/chat/completions", tok, fmt.Sprintf(`{"model":"gpt-4o","stream":%v,"messages":[]}`, stream), "X-Fake-Fault", form)
				body := readAll(t, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				if zr, err := gzip.NewReader(bytes.NewReader(body)); err == nil {
					if plain, err := io.ReadAll(zr); err == nil && leaksGram(string(plain), canaryOpenAI) {
						t.Fatalf("the client can gunzip the key out of the body (%s)", form)
					}
				}
				checkEnvelope(t, "openai", body)
				if leaksGram(string(body), canaryOpenAI) {
					t.Errorf("the client saw the key (%s): %s", form, body)
				}
				if id := resp.Header.Get("X-Request-Id"); id == "" || leaksGram(`{"error":{"message":"`+id+`"}}`, canaryOpenAI) {
					t.Errorf("the client saw the key in a header (%s): %q", form, id)
				}
			})
		}
	}
	// An error event inside a 200 stream was never scanned.
	for _, form := range []string{"Plain", "JSONEscaped", "UpperCased", "WithoutPrefix"} {
		t.Run("sse:"+form, func(t *testing.T) {
			resp := e.do("POST", "/openai/v1/chat/completions", tok, `{"model":"gpt-4o","stream":true,"messages":[]}`, "X-Fake-Fault", "sse:"+form)
			body := string(readAll(t, resp.Body))
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"content":"hi"`) {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			for _, ev := range strings.Split(body, "\n\n") {
				if d, ok := strings.CutPrefix(ev, "data: "); ok && leaksGram(d, canaryOpenAI) {
					t.Errorf("the client saw the key in a stream event (%s): %s", form, ev)
				}
			}
			if !strings.Contains(body, "withheld") {
				t.Errorf("the error event was not replaced: %s", body)
			}
		})
	}
}
