package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
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
