//go:build hostile || cluster || ui

// The child-process side of the heavy suites (`make test-hostile`, `make
// test-cluster`): the binaries under test, and `tollgate serve` run as a
// real process whose addresses are read from its stdout.

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// serveStartTimeout bounds the wait for a server's address lines: a cold
// start migrates, which must not hang the suite.
const serveStartTimeout = 30 * time.Second

// testBinary is the program built from pkg: the file named by envVar (make
// builds bin/ first), else a fresh build into the test's temp directory.
func testBinary(t *testing.T, envVar, pkg string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	p := filepath.Join(t.TempDir(), filepath.Base(pkg))
	out, err := exec.Command("go", "build", "-o", p, pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return p
}

// logTail is the last n lines of a log.
func logTail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// serveProc is one `tollgate serve` child process.
type serveProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	exited chan error
	// base is the proxy listener's URL, addr its host:port.
	base, addr string
	// adminBase is the admin listener (admin API, /metrics).
	adminBase string
	pid       int
	logs      *testkit.LogBuffer
	// lines delivers the address lines once read (or the read error).
	lines chan error
}

// startServeProc starts cmd, a tollgate serve, without waiting for it to
// listen (ready does); it is killed when the test ends.
func startServeProc(t *testing.T, cmd *exec.Cmd) (*serveProc, error) {
	return startListening(t, cmd, true)
}

// startListening is startServeProc for any program that prints "listening
// on URL" first, and then, if admin, the admin listener's line.
func startListening(t *testing.T, cmd *exec.Cmd, admin bool) (*serveProc, error) {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	sp := &serveProc{t: t, cmd: cmd, exited: make(chan error, 1), logs: &testkit.LogBuffer{}, lines: make(chan error, 1)}
	cmd.Stderr = sp.logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sp.pid = cmd.Process.Pid
	go func() { sp.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		err := <-sp.exited
		sp.exited <- err
	})
	go func() {
		out := bufio.NewReader(stdout)
		line, err := out.ReadString('\n')
		if err != nil {
			sp.lines <- fmt.Errorf("server printed no address: %w", err)
			return
		}
		sp.base = strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
		sp.addr = strings.TrimPrefix(sp.base, "http://")
		if admin {
			if line, err := out.ReadString('\n'); err == nil {
				sp.adminBase = strings.TrimSpace(strings.TrimPrefix(line, "admin API and metrics on "))
			}
		}
		sp.lines <- nil
		_, _ = io.Copy(io.Discard, out)
	}()
	return sp, nil
}

// ready waits until the server printed its addresses; an error says why
// it did not (it exited, or took longer than serveStartTimeout), with the
// last lines of its log.
func (sp *serveProc) ready() error {
	select {
	case err := <-sp.lines:
		if err != nil {
			// Exited before listening: its log says why.
			err = <-sp.exited
			sp.exited <- err
			return fmt.Errorf("exited before listening (%v):\n%s", err, logTail(sp.logs.String(), 5))
		}
		return nil
	case <-time.After(serveStartTimeout):
		return fmt.Errorf("not listening after %s:\n%s", serveStartTimeout, logTail(sp.logs.String(), 5))
	}
}

// mustStartServe is startServeProc and ready, failing the test on an error.
func mustStartServe(t *testing.T, cmd *exec.Cmd) *serveProc {
	t.Helper()
	sp, err := startServeProc(t, cmd)
	if err == nil {
		err = sp.ready()
	}
	if err != nil {
		t.Fatalf("tollgate serve: %v", err)
	}
	return sp
}

// alive fails the test if the server has exited.
func (sp *serveProc) alive(stage string) {
	sp.t.Helper()
	select {
	case err := <-sp.exited:
		sp.exited <- err
		sp.t.Fatalf("server exited during %s: %v\nlast log lines:\n%s", stage, err, logTail(sp.logs.String(), 5))
	default:
	}
}

// stop sends SIGTERM and checks the server stops cleanly.
func (sp *serveProc) stop() {
	sp.t.Helper()
	_ = sp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-sp.exited:
		sp.exited <- err
		if err != nil {
			sp.t.Errorf("server did not stop cleanly: %v\n%s", err, logTail(sp.logs.String(), 5))
		}
	case <-time.After(45 * time.Second):
		sp.t.Errorf("server did not stop within 45 s of SIGTERM")
	}
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (sp *serveProc) kill9() {
	_ = sp.cmd.Process.Signal(syscall.SIGKILL)
	err := <-sp.exited
	sp.exited <- err
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		sp.t.Errorf("kill -9: %v", err)
	}
}
