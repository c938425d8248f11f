//go:build readme

package tollgate

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// readmeHeading introduces the block TestReadmeFiveMinutes runs.
	readmeHeading = "## Five minutes from zero to a working agent"
	// readmeCanary stands for the reader's Anthropic key: it must show
	// nowhere but in the environment it came from.
	readmeCanary = "sk-ant-api03-CANARYreadmeTEST0123456789abcdefghij"
	// readmeDeadline bounds the whole block: the `until … readyz` loop
	// never ends if the server never answers. make test-readme builds
	// first, so the block's `make build` is a build-cache hit (-trimpath
	// keys do not depend on the directory) and this is ample.
	readmeDeadline = 4 * time.Minute
	// serverStopBound is how long the block's server may take to exit
	// after SIGTERM: it holds no stream, so its shutdown grace is moot.
	serverStopBound = 30 * time.Second
)

// TestReadmeFiveMinutes pastes the README's "five minutes from zero" block,
// verbatim, into `bash -euo pipefail` in a copy of the tracked files, with
// a canary for ANTHROPIC_KEY (issue 15 B2). The block must exit 0, print
// the exports for the port it uses and a token, run the usage report, and
// leave the canary out of everything it printed (the server's log
// included: the block does not redirect it) and of every file under data/.
// The server it starts in the background is stopped by its PID, which an
// EXIT trap records ($!) without changing the block.
func TestReadmeFiveMinutes(t *testing.T) {
	block := readmeBlock(t, readmeHeading)
	m := regexp.MustCompile(`--url http://127\.0\.0\.1:([0-9]+)\b`).FindStringSubmatch(block)
	if m == nil {
		t.Fatalf("the README block has no `--url http://127.0.0.1:PORT`: which port does it serve on?\n%s", block)
	}
	port := m[1]
	for _, p := range []string{port, "8788"} { // 8788: serve's default admin port
		ln, err := net.Listen("tcp", "127.0.0.1:"+p)
		if err != nil {
			t.Fatalf("127.0.0.1:%s is in use (%v): the README block serves on it, so this test cannot run while something else listens there; stop it (ss -ltnp 'sport = :%s') and run again", p, err, p)
		}
		ln.Close()
	}
	dir := copyTracked(t)
	tmp := t.TempDir()
	pidFile := filepath.Join(tmp, "server.pid")
	outFile, err := os.Create(filepath.Join(tmp, "output"))
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()

	ctx, cancel := context.WithTimeout(context.Background(), readmeDeadline)
	defer cancel()
	// ${!:-}: no background job yet is no PID, not an unbound variable.
	script := "trap 'echo \"${!:-}\" > \"" + pidFile + "\"' EXIT\n" + block
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(readerEnv(), "ANTHROPIC_KEY="+readmeCanary)
	// A file, not a buffer: the server keeps the output open after bash
	// exits, and Wait would wait for it to close.
	cmd.Stdout, cmd.Stderr = outFile, outFile
	// Its own process group: on the deadline, bash, a build in progress
	// and the server all go (no EXIT trap runs on SIGKILL).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	runErr := cmd.Run()
	if cmd.Process != nil {
		pgid := cmd.Process.Pid
		defer syscall.Kill(-pgid, syscall.SIGKILL) // whatever the block left behind
	}
	stopErr := stopServer(pidFile)
	b, err := os.ReadFile(outFile.Name())
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	if ctx.Err() != nil {
		t.Fatalf("the block did not finish within %v: is the server answering /readyz? (On a cold build cache, make test-readme builds first.) Its output:\n%s", readmeDeadline, out)
	}
	if runErr != nil {
		t.Fatalf("the block failed (%v); its output:\n%s", runErr, out)
	}
	if stopErr != nil {
		t.Errorf("the block's server: %v", stopErr)
	}
	// The block's own claim ("# serving") before step 1: a server still
	// starting races step 1 over the first start's database and master
	// key. The server logs its connection caps before it serves, so that
	// line comes first whenever the block waited.
	serving, step1 := strings.Index(out, `"msg":"connection caps"`), strings.Index(out, "platform credential ")
	switch {
	case serving < 0:
		t.Errorf("the server's log has no \"connection caps\" line: did it start?\n%s", out)
	case step1 < 0:
		t.Errorf("step 1 (credential set) printed nothing:\n%s", out)
	case step1 < serving:
		t.Errorf("step 1 ran before the server was serving: the block does not wait for it\n%s", out)
	}
	if want := "export ANTHROPIC_BASE_URL=http://127.0.0.1:" + port + "/anthropic"; !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).MatchString(out) {
		t.Errorf("no line %q in the output:\n%s", want, out)
	}
	if !regexp.MustCompile(`(?m)^export ANTHROPIC_AUTH_TOKEN=tgw_[A-Za-z0-9_-]{43}$`).MatchString(out) {
		t.Errorf("no `export ANTHROPIC_AUTH_TOKEN=tgw_…` line in the output:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^project +model +requests `).MatchString(out) {
		t.Errorf("the usage report (grouped by project, model) is not in the output:\n%s", out)
	}
	if strings.Contains(out, readmeCanary) {
		t.Errorf("the Anthropic key shows in the block's output or the server's log:\n%s", out)
	}
	err = filepath.WalkDir(filepath.Join(dir, "data"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if bytes.Contains(b, []byte(readmeCanary)) {
			t.Errorf("the Anthropic key is stored in plain text in %s", path)
		}
		return err
	})
	if err != nil {
		t.Errorf("data/: %v", err)
	}
}

// readmeBlock is the first ```sh block after heading in README.md, as it
// would be pasted.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no heading %q", heading)
	}
	if next := strings.Index(after, "\n## "); next >= 0 {
		after = after[:next]
	}
	_, body, ok := strings.Cut(after, "```sh\n")
	if !ok {
		t.Fatalf("README.md has no ```sh block under %q", heading)
	}
	body, _, ok = strings.Cut(body, "```\n")
	if !ok || strings.TrimSpace(body) == "" {
		t.Fatalf("README.md's ```sh block under %q is empty or not closed", heading)
	}
	return body
}

// copyTracked copies the files git tracks, as they are in the working
// tree, into a new directory: what a fresh clone holds, with no .git, no
// data/ and no bin/.
func copyTracked(t *testing.T) string {
	t.Helper()
	list, err := exec.Command("git", "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v (the test needs a git checkout)", err)
	}
	dst := t.TempDir()
	n := 0
	for _, name := range strings.Split(strings.TrimSuffix(string(list), "\x00"), "\x00") {
		fi, err := os.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) || err == nil && fi.IsDir() {
			continue // deleted in the working tree; a submodule
		}
		if err != nil {
			t.Fatal(err)
		}
		to := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(name)
			if err == nil {
				err = os.Symlink(target, to)
			}
			if err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("git ls-files listed no files")
	}
	return dst
}

// readerEnv is this process's environment as a reader's shell would have
// it: no TOLLGATE_* setting or Anthropic variable of the developer's, and
// no make state from `make test-readme` leaking into the block's make.
func readerEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "TOLLGATE_"), strings.HasPrefix(name, "ANTHROPIC_"),
			name == "MAKEFLAGS", name == "MFLAGS", name == "MAKELEVEL":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// stopServer sends SIGTERM to the server whose PID the block's EXIT trap
// wrote, once it has checked the PID is a `tollgate serve`, and waits for it
// to exit.
func stopServer(pidFile string) error {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return errors.New("the block started no background job: no server PID in $!")
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return errors.New("the server (PID " + strconv.Itoa(pid) + ") had exited before the block ended")
	}
	if args := strings.Split(string(cmdline), "\x00"); len(args) < 2 || !strings.HasSuffix(args[0], "tollgate") || args[1] != "serve" {
		return errors.New("PID " + strconv.Itoa(pid) + " is not a tollgate serve: " + strings.Join(args, " "))
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return err
	}
	for deadline := time.Now().Add(serverStopBound); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		// Gone, or a zombie its new parent has not reaped yet.
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return nil
		}
		if _, rest, ok := strings.Cut(string(stat), ") "); ok && strings.HasPrefix(rest, "Z") {
			return nil
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
	return errors.New("the server did not exit within " + serverStopBound.String() + " of SIGTERM")
}
