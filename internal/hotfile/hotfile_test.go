package hotfile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// number is the value under test: a file holding one integer.
type number struct{ n int }

// parser counts its calls, so tests see when the file was read again.
type parser struct{ calls atomic.Int32 }

func (p *parser) parse(path string) (*number, error) {
	p.calls.Add(1)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("not a number: %w", err)
	}
	return &number{n}, nil
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// replace swaps in a new file at path at once, so a poll never sees it
// half written.
func replace(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	write(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// load writes content to a fresh file and loads it.
func load(t *testing.T, content string) (v *Value[number], path string, p *parser, logs *testkit.LogBuffer) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "value.txt")
	write(t, path, content)
	p, logs = new(parser), new(testkit.LogBuffer)
	v, err := Load("number", path, p.parse, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return v, path, p, logs
}

// watch runs v.Watch until the test ends, and waits for it to return.
func watch(t *testing.T, v *Value[number], interval time.Duration, signals <-chan os.Signal) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.Watch(ctx, interval, signals); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestLoadServesTheFile(t *testing.T) {
	v, _, p, _ := load(t, "7\n")
	if v.Current().n != 7 {
		t.Fatalf("Current = %d, want 7", v.Current().n)
	}
	if v.Current() != v.Current() {
		t.Error("Current must hand out the same value until a reload")
	}
	if p.calls.Load() != 1 {
		t.Errorf("Load parsed %d times, want once", p.calls.Load())
	}
}

func TestLoadRefusesABadOrMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "value.txt")
	p := new(parser)
	if v, err := Load("number", path, p.parse, slog.New(slog.DiscardHandler)); err == nil || !errors.Is(err, os.ErrNotExist) || v != nil {
		t.Fatalf("missing file: %v, %v", v, err)
	}
	write(t, path, "seven")
	if v, err := Load("number", path, p.parse, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "not a number") || v != nil {
		t.Fatalf("bad file: %v, %v", v, err)
	}
}

// TestReloadKeepsTheLastGoodValue: a bad edit is refused, logged and
// returned; the value already served stays; a good edit is taken, and a
// value handed out before it does not change.
func TestReloadKeepsTheLastGoodValue(t *testing.T) {
	v, path, _, logs := load(t, "1")
	good := v.Current()

	write(t, path, "one")
	if err := v.Reload(); err == nil || !strings.Contains(err.Error(), "not a number") {
		t.Fatalf("Reload of a bad file: %v", err)
	}
	if v.Current() != good {
		t.Fatal("a bad file replaced the value")
	}
	if l := logs.String(); !strings.Contains(l, "number reload refused") || !strings.Contains(l, path) || !strings.Contains(l, "level=ERROR") {
		t.Errorf("refusal not logged as an error naming the file:\n%s", l)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := v.Reload(); !errors.Is(err, os.ErrNotExist) || v.Current() != good {
		t.Fatalf("Reload of a deleted file: %v, value %d", err, v.Current().n)
	}

	write(t, path, "2")
	if err := v.Reload(); err != nil {
		t.Fatal(err)
	}
	if v.Current().n != 2 {
		t.Fatalf("Current = %d after a good edit, want 2", v.Current().n)
	}
	if good.n != 1 {
		t.Error("a value already handed out changed under its holder")
	}
	if !strings.Contains(logs.String(), "number reloaded") {
		t.Errorf("reload not logged:\n%s", logs.String())
	}
}

func TestStaticServesItsValueAndNeverReloads(t *testing.T) {
	n := &number{3}
	v := Static(n)
	if err := v.Reload(); err != nil || v.Current() != n {
		t.Fatalf("Static: Reload %v, Current %v", err, v.Current())
	}
}

// TestWatchPicksUpAChange: a change of size, or of modification time alone,
// is seen by polling.
func TestWatchPicksUpAChange(t *testing.T) {
	v, path, _, _ := load(t, "1")
	watch(t, v, 5*time.Millisecond, nil)

	write(t, path, "22")
	testkit.Eventually(t, 2*time.Second, "a change of size", func() bool { return v.Current().n == 22 })

	// Same size; only the modification time tells.
	write(t, path, "33")
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "a change of modification time", func() bool { return v.Current().n == 33 })
}

// TestWatchReadsAnUnchangedFileOnce: polling costs a stat, not a parse.
func TestWatchReadsAnUnchangedFileOnce(t *testing.T) {
	v, _, p, _ := load(t, "1")
	watch(t, v, time.Millisecond, nil)
	time.Sleep(50 * time.Millisecond)
	if n := p.calls.Load(); n != 1 {
		t.Errorf("an unchanged file was parsed %d times, want once (at Load)", n)
	}
}

// TestWatchRefusesABadEditOnce: a bad edit is tried once, not on every
// tick, and the old value serves until the file is fixed.
func TestWatchRefusesABadEditOnce(t *testing.T) {
	v, path, p, logs := load(t, "1")
	good := v.Current()
	watch(t, v, time.Millisecond, nil)

	replace(t, path, "bad!")
	testkit.Eventually(t, 2*time.Second, "the bad edit read", func() bool { return p.calls.Load() == 2 })
	time.Sleep(50 * time.Millisecond)
	if n := p.calls.Load(); n != 2 {
		t.Errorf("a bad edit was parsed %d times, want once", n-1)
	}
	if v.Current() != good {
		t.Fatal("a bad edit replaced the value")
	}
	if c := strings.Count(logs.String(), "reload refused"); c != 1 {
		t.Errorf("the refusal was logged %d times, want once", c)
	}

	write(t, path, "4")
	testkit.Eventually(t, 2*time.Second, "the fix", func() bool { return v.Current().n == 4 })
}

// TestWatchReloadsOnSignal: SIGHUP reloads even when polling would not
// notice (same size, same modification time).
func TestWatchReloadsOnSignal(t *testing.T) {
	v, path, _, _ := load(t, "1")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	signals := make(chan os.Signal, 1)
	watch(t, v, time.Hour, signals)

	write(t, path, "5")
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	signals <- syscall.SIGHUP
	testkit.Eventually(t, 2*time.Second, "the reload on SIGHUP", func() bool { return v.Current().n == 5 })
}

// TestWatchFollowsASymlinkSwap: Kubernetes updates a mounted ConfigMap by
// swapping a symlink to a new directory; the file itself is not written.
func TestWatchFollowsASymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"a": "1", "b": "200"} {
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name, "value.txt"), content)
	}
	if err := os.Symlink("a", filepath.Join(dir, "data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "data", "value.txt")
	p := new(parser)
	v, err := Load("number", path, p.parse, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	watch(t, v, 5*time.Millisecond, nil)

	tmp := filepath.Join(dir, "data.tmp")
	if err := os.Symlink("b", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "data")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "the symlink swap", func() bool { return v.Current().n == 200 })
}

// TestWatchStopsWithItsContext: Watch returns once ctx ends.
func TestWatchStopsWithItsContext(t *testing.T) {
	v, _, _, _ := load(t, "1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.Watch(ctx, time.Millisecond, nil); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Watch kept running after its context ended")
	}
}
