//go:build e2e

package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// Bounds of the end-to-end run's helpers. Each is generous for a cold
// machine and still ends a hung step long before go test's own timeout.
const (
	// npmInstallTimeout bounds one `npm install` (a cold CLI is 100-400 MB).
	npmInstallTimeout = 15 * time.Minute
	// daemonStartTimeout bounds the wait for a daemon's "listening on" line.
	daemonStartTimeout = 30 * time.Second
	// daemonStopTimeout is how long a daemon gets after SIGTERM before
	// SIGKILL; tollgate is started with a shorter shutdown grace than this.
	daemonStopTimeout = 15 * time.Second
	// waitDelay bounds how long a finished or killed command's pipes may
	// stay open (a grandchild holding them).
	waitDelay = 10 * time.Second
	// sinkholeConnDeadline bounds one connection to the sinkhole proxy.
	sinkholeConnDeadline = 5 * time.Second
)

// groupAttr puts a child in its own process group, so that it and whatever
// it spawns can be killed together, and kills it if the test binary dies.
func groupAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup sends sig to the process group led by cmd's process.
func killGroup(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, sig)
	}
}

// daemon is a long-running child process (tollgate serve, the fake
// provider), stopped when the test ends, whether it passed or not.
type daemon struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr *testkit.LogBuffer
	done           chan struct{}
	err            error // set before done closes
}

// mustStartDaemon starts bin with args and env, and registers its stop:
// SIGTERM to its process group, then SIGKILL after daemonStopTimeout.
func mustStartDaemon(tb testing.TB, name, bin string, args, env []string) *daemon {
	tb.Helper()
	d := &daemon{name: name, stdout: new(testkit.LogBuffer), stderr: new(testkit.LogBuffer), done: make(chan struct{})}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Env = env
	d.cmd.Stdout, d.cmd.Stderr = d.stdout, d.stderr
	d.cmd.SysProcAttr = groupAttr()
	d.cmd.WaitDelay = waitDelay
	if err := d.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	tb.Cleanup(func() { d.stop(tb) })
	return d
}

func (d *daemon) stop(tb testing.TB) {
	select {
	case <-d.done:
		return
	default:
	}
	killGroup(d.cmd, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(daemonStopTimeout):
		tb.Errorf("%s did not stop within %v of SIGTERM; killing it", d.name, daemonStopTimeout)
		killGroup(d.cmd, syscall.SIGKILL)
		<-d.done
	}
	// Anything it started in its group goes too.
	killGroup(d.cmd, syscall.SIGKILL)
}

// mustListenURL waits for the daemon's "listening on URL" stdout line.
func (d *daemon) mustListenURL(tb testing.TB) string {
	tb.Helper()
	var url string
	testkit.Poll(daemonStartTimeout, 100*time.Millisecond, func() bool {
		sc := bufio.NewScanner(strings.NewReader(d.stdout.String()))
		for sc.Scan() {
			if u, found := strings.CutPrefix(sc.Text(), "listening on "); found {
				url = strings.TrimSpace(u)
				return true
			}
		}
		select {
		case <-d.done:
			return true
		default:
			return false
		}
	})
	if url == "" {
		state := "still running"
		select {
		case <-d.done:
			state = fmt.Sprintf("exited: %v", d.err)
		default:
		}
		tb.Fatalf("%s printed no \"listening on\" line within %v (%s)\nstdout:\n%s\nstderr:\n%s",
			d.name, daemonStartTimeout, state, d.stdout.String(), tail(d.stderr.String(), 4000))
	}
	return url
}

// cliResult is one finished CLI run.
type cliResult struct {
	stdout, stderr string
	err            error
	elapsed        time.Duration
}

// runCLI runs bin in dir with exactly env, stdin from /dev/null, killing
// its whole process group at timeout and once it has exited, so nothing it
// spawned outlives the run.
func runCLI(dir string, env []string, timeout time.Duration, bin string, args ...string) cliResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir, cmd.Env = dir, env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = groupAttr()
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	start := time.Now()
	err := cmd.Run()
	killGroup(cmd, syscall.SIGKILL)
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v (%v)", timeout, err)
	}
	return cliResult{stdout: stdout.String(), stderr: stderr.String(), err: err, elapsed: time.Since(start)}
}

// sinkhole is an HTTPS proxy that refuses every request and remembers it.
// The CLIs get it as HTTPS_PROXY, so any connection they try to make to
// the outside world (telemetry, update checks, catalogs, npm) fails at once
// and is reported, instead of hanging or, worse, succeeding.
type sinkhole struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	hits []string
}

func mustStartSinkhole(tb testing.TB) *sinkhole {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("sinkhole: %v", err)
	}
	s := &sinkhole{ln: ln}
	s.wg.Add(1)
	go s.serve()
	tb.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *sinkhole) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(sinkholeConnDeadline))
			line, _ := bufio.NewReader(c).ReadString('\n')
			// Method and target only ("CONNECT api.example.com:443").
			f := strings.Fields(line)
			if len(f) > 2 {
				f = f[:2]
			}
			s.mu.Lock()
			s.hits = append(s.hits, strings.Join(f, " "))
			s.mu.Unlock()
			_, _ = c.Write([]byte("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
		}()
	}
}

func (s *sinkhole) URL() string { return "http://" + s.ln.Addr().String() }

func (s *sinkhole) Hits() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.hits...)
}

// npmPackage is one pinned package installed from the npm registry.
type npmPackage struct {
	Name    string
	Version string
	// Bin is the executable under node_modules/.bin; empty for a package
	// that is only copied somewhere (OpenCode's plugin seed).
	Bin string
	// IgnoreScripts installs with --ignore-scripts (Gemini CLI's node-pty
	// would run node-gyp, which downloads Node headers).
	IgnoreScripts bool
}

func (p npmPackage) spec() string { return p.Name + "@" + p.Version }

// dirName has no "@": npm takes an argument naming an existing folder for
// a local package.
func (p npmPackage) dirName() string {
	return strings.NewReplacer("@", "", "/", "-").Replace(p.Name) + "-" + p.Version
}

// installMarker is written last into a package's install directory; a
// directory without it is a failed or interrupted install and is redone.
const installMarker = ".tollgate-e2e-installed"

func (p npmPackage) markerText() string {
	return fmt.Sprintf("%s ignore-scripts=%v\n", p.spec(), p.IgnoreScripts)
}

// installedVersion is the version npm actually put in dir.
func (p npmPackage) installedVersion(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", p.Name, "package.json"))
	if err != nil {
		return ""
	}
	var v struct{ Version string }
	if json.Unmarshal(b, &v) != nil {
		return ""
	}
	return v.Version
}

// mustInstallNPM installs each package, at its pinned version, into its
// own prefix under root, reusing an earlier complete install of the same
// version. It uses a private npm cache under root that it deletes after
// logging its size (the download size), so a cold run is reproducible and
// the user's ~/.npm is left alone. It returns each package's prefix.
func mustInstallNPM(tb testing.TB, npm, root string, pkgs []npmPackage) map[string]string {
	tb.Helper()
	if err := os.MkdirAll(root, 0o755); err != nil {
		tb.Fatal(err)
	}
	npmCache := filepath.Join(root, ".npm-cache")
	out := make(map[string]string, len(pkgs))
	for _, p := range pkgs {
		dir := filepath.Join(root, p.dirName())
		out[p.Name] = dir
		if b, err := os.ReadFile(filepath.Join(dir, installMarker)); err == nil &&
			string(b) == p.markerText() && p.installedVersion(dir) == p.Version {
			tb.Logf("npm: %s already in %s", p.spec(), dir)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			tb.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tb.Fatal(err)
		}
		// An exact spec matters: on Node 20, npm resolves an unpinned
		// Claude Code to an old engine-compatible release.
		args := []string{"install", "--prefix", dir, "--cache", npmCache,
			"--no-audit", "--no-fund", "--save-exact", "--loglevel", "warn"}
		if p.IgnoreScripts {
			args = append(args, "--ignore-scripts")
		}
		args = append(args, p.spec())
		ctx, cancel := context.WithTimeout(context.Background(), npmInstallTimeout)
		cmd := exec.CommandContext(ctx, npm, args...)
		cmd.Dir = dir
		cmd.SysProcAttr = groupAttr()
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = waitDelay
		start := time.Now()
		b, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			tb.Fatalf("npm %s: %v\n%s", strings.Join(args, " "), err, tail(string(b), 4000))
		}
		if got := p.installedVersion(dir); got != p.Version {
			tb.Fatalf("npm installed %s version %q, want %s", p.Name, got, p.Version)
		}
		if err := os.WriteFile(filepath.Join(dir, installMarker), []byte(p.markerText()), 0o644); err != nil {
			tb.Fatal(err)
		}
		tb.Logf("npm: installed %s in %v (%s on disk)", p.spec(), time.Since(start).Round(time.Second), humanBytes(dirSize(dir)))
	}
	var total int64
	for _, dir := range out {
		total += dirSize(dir)
	}
	tb.Logf("npm: %s on disk under %s", humanBytes(total), root)
	if n := dirSize(filepath.Join(npmCache, "_cacache", "content-v2")); n > 0 {
		tb.Logf("npm: downloaded %s of packages this run", humanBytes(n))
	}
	if err := os.RemoveAll(npmCache); err != nil {
		tb.Logf("npm: could not remove the download cache %s: %v", npmCache, err)
	}
	return out
}

// copyTree copies src to dst with cp -a (symlinks in node_modules/.bin
// must stay symlinks).
func mustCopyTree(tb testing.TB, src, dst string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		tb.Fatal(err)
	}
	if b, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		tb.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, b)
	}
}

// dirSize is the bytes of the regular files under dir, each hard link
// counted once (the CLIs' install scripts hard-link their binaries).
func dirSize(dir string) int64 {
	var n int64
	seen := map[[2]uint64]bool{}
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			id := [2]uint64{uint64(st.Dev), st.Ino}
			if seen[id] {
				return nil
			}
			seen[id] = true
		}
		n += fi.Size()
		return nil
	})
	return n
}

func humanBytes(n int64) string {
	return fmt.Sprintf("%.0f MB", float64(n)/1e6)
}

// tail returns the last n bytes of s, for failure messages.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
