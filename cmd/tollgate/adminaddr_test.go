package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// served is a `tollgate serve` running in process.
type served struct {
	out  *bufio.Reader
	logs *testkit.LogBuffer
}

// startServe runs serve with c's environment until the test ends, and
// checks then that it stopped cleanly.
func startServe(t *testing.T, c *cli) *served {
	t.Helper()
	for k, v := range c.env {
		t.Setenv(k, v)
	}
	ctx, stop := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	s := &served{out: bufio.NewReader(pr), logs: &testkit.LogBuffer{}}
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"serve"}, strings.NewReader(""), pw, s.logs); pw.Close() }()
	t.Cleanup(func() {
		stop()
		go io.Copy(io.Discard, pr)
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("serve exited %d: %s", code, s.logs)
			}
		case <-time.After(20 * time.Second):
			t.Error("serve did not shut down")
		}
	})
	return s
}

// line reads serve's next stdout line without its prefix.
func (s *served) line(t *testing.T, prefix string) string {
	t.Helper()
	l, err := s.out.ReadString('\n')
	if err != nil || !strings.HasPrefix(l, prefix) {
		t.Fatalf("serve's stdout: %q %v, want %q...; stderr %s", l, err, prefix, s.logs)
	}
	return strings.TrimSpace(strings.TrimPrefix(l, prefix))
}

func getStatus(t *testing.T, url, bearer string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServeMetricsTokenFromFile: with TOLLGATE_METRICS_TOKEN_FILE, the
// admin listener's /metrics needs that token; the proxy port has none.
func TestServeMetricsTokenFromFile(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	tokFile := filepath.Join(t.TempDir(), "metrics.token")
	if err := os.WriteFile(tokFile, []byte("scrape-me\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.env["TOLLGATE_METRICS_TOKEN_FILE"] = tokFile
	s := startServe(t, c)
	base := s.line(t, "listening on ")
	admin := s.line(t, "admin API and metrics on ")
	go io.Copy(io.Discard, s.out)
	for _, bearer := range []string{"", "adm", "scrape-mE", "scrape-me2"} {
		if code, body := getStatus(t, admin+"/metrics", bearer); code != 401 || !strings.Contains(body, "TOLLGATE_METRICS_TOKEN") {
			t.Errorf("/metrics with bearer %q: %d %s, want 401", bearer, code, body)
		}
	}
	if code, body := getStatus(t, admin+"/metrics", "scrape-me"); code != 200 || !strings.Contains(body, "# TYPE") {
		t.Errorf("/metrics with the token: %d %.300s", code, body)
	}
	if code, _ := getStatus(t, base+"/metrics", "scrape-me"); code != 404 {
		t.Errorf("proxy port /metrics with the token: %d, want 404", code)
	}
	for _, u := range []string{base, admin} {
		if code, _ := getStatus(t, u+"/readyz", ""); code != 200 {
			t.Errorf("%s/readyz: %d", u, code)
		}
	}
}

// TestServeAdminAddrSameAndOff: same keeps the single port, with a
// warning; off serves the admin API and /metrics nowhere.
func TestServeAdminAddrSameAndOff(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	t.Run("same", func(t *testing.T) {
		c := newCLI(t, fakeURL)
		c.env["TOLLGATE_ADMIN_ADDR"] = "same"
		s := startServe(t, c)
		base := s.line(t, "listening on ")
		go io.Copy(io.Discard, s.out)
		if code, body := getStatus(t, base+"/metrics", ""); code != 200 || !strings.Contains(body, "# TYPE") {
			t.Errorf("proxy port /metrics with same: %d %.300s", code, body)
		}
		if code, body := getStatus(t, base+"/admin/v1/tokens", "adm"); code != 200 {
			t.Errorf("proxy port /admin/v1/tokens with same: %d %s", code, body)
		}
		if !strings.Contains(s.logs.String(), "every workspace reaches") {
			t.Errorf("no warning for TOLLGATE_ADMIN_ADDR=same: %s", s.logs)
		}
	})
	t.Run("off", func(t *testing.T) {
		c := newCLI(t, fakeURL)
		c.env["TOLLGATE_ADMIN_ADDR"] = "off"
		s := startServe(t, c)
		base := s.line(t, "listening on ")
		go io.Copy(io.Discard, s.out)
		for _, p := range []string{"/metrics", "/admin/v1/tokens"} {
			if code, _ := getStatus(t, base+p, "adm"); code != 404 {
				t.Errorf("proxy port %s with off: %d, want 404", p, code)
			}
		}
		if code, _ := getStatus(t, base+"/healthz", ""); code != 200 {
			t.Errorf("/healthz with off: %d", code)
		}
	})
}

// TestAdminAddrMistakesAreStartupErrors: an admin address that is no
// address, the proxy's own fixed address, or a metrics token given twice
// stops the start and says what to do.
func TestAdminAddrMistakesAreStartupErrors(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tokFile := filepath.Join(t.TempDir(), "metrics.token")
	os.WriteFile(tokFile, []byte("x\n"), 0o600)
	empty := filepath.Join(t.TempDir(), "empty.token")
	os.WriteFile(empty, nil, 0o600)
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"not an address", map[string]string{"TOLLGATE_ADMIN_ADDR": "8788"}, []string{`TOLLGATE_ADMIN_ADDR="8788"`, "host:port", "off", "same"}},
		{"the proxy's address", map[string]string{"TOLLGATE_ADDR": "127.0.0.1:18787", "TOLLGATE_ADMIN_ADDR": "127.0.0.1:18787"}, []string{"both 127.0.0.1:18787", "TOLLGATE_ADMIN_ADDR=same"}},
		{"token twice", map[string]string{"TOLLGATE_METRICS_TOKEN": "x", "TOLLGATE_METRICS_TOKEN_FILE": tokFile}, []string{"both TOLLGATE_METRICS_TOKEN and a metrics token file"}},
		{"empty token file", map[string]string{"TOLLGATE_METRICS_TOKEN_FILE": empty}, []string{"metrics token file", "is empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t, fakeURL)
			for k, v := range tc.env {
				c.env[k] = v
			}
			_, errs, code := c.run(ctx, "", "serve")
			for _, w := range tc.want {
				if code == 0 || !strings.Contains(errs, w) {
					t.Errorf("code %d, stderr %s; want an error saying %q", code, errs, w)
				}
			}
		})
	}
	c := newCLI(t, fakeURL)
	if _, errs, _ := c.run(ctx, "", "serve", "--metrics-token", "x"); !strings.Contains(errs, "--metrics-token is not accepted") || strings.Contains(errs, `"x"`) {
		t.Errorf("--metrics-token: %s", errs)
	}
}
