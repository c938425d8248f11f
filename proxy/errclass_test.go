package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// errClassLogged returns the err_class of the last "upstream request
// failed" log line.
func (e *testEnv) errClassLogged() string {
	e.t.Helper()
	class := ""
	for _, line := range strings.Split(e.logs.String(), "\n") {
		var v struct {
			Msg   string `json:"msg"`
			Class string `json:"err_class"`
		}
		if json.Unmarshal([]byte(line), &v) == nil && v.Msg == "upstream request failed" {
			class = v.Class
		}
	}
	return class
}

// TestTransportFailuresAreClassedByType: each way a provider can fail below
// HTTP, made by a real listener, is logged under its own class, named from
// the error's type, not its text.
func TestTransportFailuresAreClassedByType(t *testing.T) {
	// answerAfterRequest reads one request, then does what's given.
	answerAfterRequest := func(t *testing.T, then func(net.Conn)) string {
		ln := serveTCP(t, func(c net.Conn) {
			defer c.Close()
			if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
				return
			}
			then(c)
		})
		return ln.Addr().String()
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct {
		name     string
		upstream func(t *testing.T) string
		edit     func(string) string
		want     string
	}{
		{"Refused", func(*testing.T) string { return "http://" + closedAddr }, nil, "connection_refused"},
		{"Reset", func(t *testing.T) string {
			return "http://" + answerAfterRequest(t, func(c net.Conn) {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
				c.(*net.TCPConn).SetLinger(0)
			})
		}, nil, "connection_reset"},
		{"ClosedBeforeAnswer", func(t *testing.T) string {
			return "http://" + answerAfterRequest(t, func(net.Conn) {})
		}, nil, "connection_closed"},
		{"PlainHTTPWhereTLSWasExpected", func(t *testing.T) string {
			ln := serveTCP(t, func(c net.Conn) {
				defer c.Close()
				io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			})
			return "https://" + ln.Addr().String()
		}, nil, "tls"},
		{"AnswerOverTheLimit", func(*testing.T) string { return "" }, func(y string) string {
			return strings.Replace(y, "max_response_body_bytes: 67108864", "max_response_body_bytes: 200", 1)
		}, "response_too_large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{upstreamURL: tc.upstream(t), registryEdit: tc.edit})
			resp := e.do("POST", "/openai/v1/chat/completions", e.token("ws", "p", "u", ""), chatJSON)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("status %d, want 502", resp.StatusCode)
			}
			e.record(resp)
			if got := e.errClassLogged(); got != tc.want {
				t.Errorf("err_class %q, want %q", got, tc.want)
			}
		})
	}
}
