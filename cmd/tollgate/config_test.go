package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// unsetenv removes name for the rest of the test; t.Setenv restores it.
func unsetenv(t *testing.T, name string) {
	t.Setenv(name, "")
	os.Unsetenv(name)
}

// TestLostMasterKeyIsNotReplaced: with the generated data/master.key gone
// beside a database that holds credentials, serve refuses before writing a
// new key, and says what to restore.
func TestLostMasterKeyIsNotReplaced(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	delete(c.env, "TOLLGATE_MASTER_KEY")
	unsetenv(t, "TOLLGATE_MASTER_KEY")
	unsetenv(t, "TOLLGATE_MASTER_KEY_FILE")
	ctx := context.Background()
	if _, errs, code := c.run(ctx, "sk-ant-api03-lost-key-00000000000\n", "credential", "set", "--platform", "--provider", "anthropic", "--key-stdin"); code != 0 {
		t.Fatalf("credential set: %s", errs)
	}
	keyFile := filepath.Join(filepath.Dir(c.env["TOLLGATE_DB"]), "master.key")
	if err := os.Remove(keyFile); err != nil {
		t.Fatalf("the first run generated no key: %v", err)
	}
	_, errs, code := c.run(ctx, "", "serve")
	if code == 0 || !strings.Contains(errs, "holds 1 encrypted credentials") || !strings.Contains(errs, "TOLLGATE_MASTER_KEY") {
		t.Fatalf("serve beside a database whose key is lost: code %d, stderr %s", code, errs)
	}
	if _, err := os.Stat(keyFile); !os.IsNotExist(err) {
		t.Fatalf("serve wrote a new master key beside the database: %v", err)
	}
}

// TestBadSettingsAreStartupErrors: a TOLLGATE_* value that does not parse
// stops the start, naming the variable, the value and what is accepted,
// instead of quietly becoming the default.
func TestBadSettingsAreStartupErrors(t *testing.T) {
	cases := []struct{ env, value, want string }{
		{"TOLLGATE_STREAM_IDLE_TIMEOUT", "5", "did you mean 5s?"},
		{"TOLLGATE_SHUTDOWN_GRACE", "soon", "use e.g. 30s"},
		{"TOLLGATE_SHUTDOWN_GRACE", "-1s", "more than zero"},
		{"TOLLGATE_LOG_LEVEL", "verbose", "debug, info, warn or error"},
		{"TOLLGATE_ALLOW_HTTP_BASE_URL", "maybe", "1, true, yes or on"},
		{"TOLLGATE_ADDR", "8787", "host:port"},
		{"TOLLGATE_PUBLIC_URL", "ftp://x", "http(s) URL"},
		{"TOLLGATE_MAX_STALENESS", "2s", "more than 2 x the 1s poll interval"},
		{"TOLLGATE_MAX_STALENESS", "5", "did you mean 5s?"},
		{"TOLLGATE_PG_NOTIFY", "maybe", "on or off"},
		{"TOLLGATE_AUDIT_RETENTION", "90", "did you mean 90d?"},
		{"TOLLGATE_AUDIT_RETENTION", "12h", "at least"},
		{"TOLLGATE_AUDIT_RETENTION", "forever", "unset keeps entries forever"},
	}
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	// Cancelled: if serve accepted the value, it returns 0 at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range cases {
		t.Run(tc.env+"="+tc.value, func(t *testing.T) {
			c := newCLI(t, fakeURL)
			c.env[tc.env] = tc.value
			_, errs, code := c.run(ctx, "", "serve")
			if code == 0 || !strings.Contains(errs, tc.env+`="`+tc.value+`"`) || !strings.Contains(errs, tc.want) {
				t.Fatalf("code %d, stderr %s; want an error naming %s=%q and %q", code, errs, tc.env, tc.value, tc.want)
			}
		})
	}
	t.Run("a flag overrides a bad variable", func(t *testing.T) {
		c := newCLI(t, fakeURL)
		c.env["TOLLGATE_LOG_LEVEL"] = "verbose"
		if _, errs, _ := c.run(ctx, "", "serve", "--log-level", "warn"); strings.Contains(errs, "TOLLGATE_LOG_LEVEL") {
			t.Fatalf("stderr %s", errs)
		}
	})
}

// TestBooleanSpellings: the usual spellings of true turn the setting on.
func TestBooleanSpellings(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	for _, v := range []string{"1", "true", "YES", "On"} {
		c := newCLI(t, fakeURL)
		c.env["TOLLGATE_ALLOW_HTTP_BASE_URL"] = v
		c.env["TOLLGATE_ALLOW_PRIVATE_BASE_URL"] = v
		if out, errs, code := c.run(context.Background(), "sk-ant-api03-local-000000000000\n", "credential", "add", "--provider", "anthropic", "--name", "local", "--base-url", "http://127.0.0.1:9", "--key-stdin"); code != 0 {
			t.Errorf("TOLLGATE_ALLOW_HTTP_BASE_URL=%s: an http base URL is refused: %d %s %s", v, code, out, errs)
		}
	}
}

// TestSecretFlagsAreRefused: secrets on a command line show in process
// listings, so the old flags fail, say what to use, and never echo the value.
func TestSecretFlagsAreRefused(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	const secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAxMjM="
	for _, tc := range []struct{ flag, want string }{
		{"--master-key", "TOLLGATE_MASTER_KEY_FILE"},
		{"--admin-token", "TOLLGATE_ADMIN_TOKEN_FILE"},
		{"-previous-master-keys", "TOLLGATE_PREVIOUS_MASTER_KEYS"},
	} {
		c := newCLI(t, fakeURL)
		for _, args := range [][]string{{"serve", tc.flag, secret}, {"serve", tc.flag + "=" + secret}} {
			_, errs, code := c.run(ctx, "", args...)
			if code == 0 || !strings.Contains(errs, tc.want) || strings.Contains(errs, secret) {
				t.Errorf("%v: code %d, stderr %s", args, code, errs)
			}
		}
	}
}

// TestAdminTokenFromFile: the admin token comes from a file as well as the
// variable, but not from both.
func TestAdminTokenFromFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "admin.token")
	os.WriteFile(file, []byte("from-file\n"), 0o600)
	unsetenv(t, "TOLLGATE_ADMIN_TOKEN")
	t.Setenv("TOLLGATE_ADMIN_TOKEN_FILE", file)
	var o options
	o.bindServe(newFlags("serve", io.Discard))
	if tok, err := o.adminToken(); o.check() != nil || err != nil || tok != "from-file" {
		t.Fatalf("token %q, %v, %v", tok, err, o.check())
	}
	t.Setenv("TOLLGATE_ADMIN_TOKEN", "from-env")
	o = options{}
	o.bindServe(newFlags("serve", io.Discard))
	if err := o.check(); err == nil || !strings.Contains(err.Error(), "set one") {
		t.Fatalf("both set: %v", err)
	}
}

// Two processes starting at once on a fresh ./data (`make run &` and the
// README's next command) must end up with one master key, and neither may
// read the file half written.
func TestGeneratedMasterKeyHasOneWinner(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	const n = 16
	keys := make([]string, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			o := &options{DB: "sqlite:" + filepath.Join(dir, "tollgate.db")}
			<-start
			keys[i], errs[i] = o.masterKey(log, func(string) error { return nil })
		})
	}
	close(start)
	wg.Wait()
	b, err := os.ReadFile(filepath.Join(dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if keys[i] != strings.TrimSpace(string(b)) {
			t.Fatalf("caller %d got a key that is not the file's: %d different keys in use", i, len(slices.Compact(slices.Sorted(slices.Values(keys)))))
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".master.key-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
