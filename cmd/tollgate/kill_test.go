package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// childServeEnv makes the test binary act as `tollgate serve` (see TestMain).
const childServeEnv = "TOLLGATE_TEST_CHILD_SERVE"

func TestMain(m *testing.M) {
	if os.Getenv(childServeEnv) == "1" {
		ctx, stop := signalContext()
		code := run(ctx, []string{"serve"}, os.Stdin, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case <-ch:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// startChild runs `tollgate serve` in a child process and returns its URL.
func startChild(t *testing.T, env map[string]string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childServeEnv+"=1")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("child printed no address: %v", err)
	}
	go io.Copy(io.Discard, out)
	return cmd, strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
}

// TestKillDuringLoadLosesNoRecord: tollgate is killed with SIGKILL while
// clients stream through it; after a restart replays the spool, every
// request whose answer the client received in full has exactly one usage
// record.
func TestKillDuringLoadLosesNoRecord(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills child processes")
	}
	const canary = "sk-ant-api03-CANARYkill0123456789abcdefghij"
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{Keys: []string{canary}, Gap: 2 * time.Millisecond, RecordLimit: -1})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	if _, errs, code := c.run(ctx, canary+"\n", "credential", "set", "--platform", "--provider", "anthropic", "--key-stdin"); code != 0 {
		t.Fatalf("credential set: %s", errs)
	}
	tok, _, _ := c.run(ctx, "", "token", "issue", "--workspace", "ws-kill", "--project", "p", "--user", "u")
	tok = strings.TrimSpace(tok)

	child, base := startChild(t, c.env)
	var (
		mu       sync.Mutex
		answered []string
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	client := &http.Client{Timeout: 10 * time.Second}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`
				if i%2 == 0 {
					body = `{"model":"claude-sonnet-4-5","max_tokens":8,"stream":true,"messages":[]}`
				}
				req, _ := http.NewRequest("POST", base+"/anthropic/v1/messages", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := client.Do(req)
				if err != nil {
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				complete := err == nil && resp.StatusCode == 200 && (i%2 == 1 || strings.Contains(string(b), "message_stop"))
				if complete {
					mu.Lock()
					answered = append(answered, resp.Header.Get("X-Tollgate-Request-Id"))
					mu.Unlock()
				}
			}
		}(w)
	}
	testkit.Eventually(t, 20*time.Second, "some answered requests", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(answered) >= 100
	})
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	close(stop)
	wg.Wait()

	// Restart: the spool is replayed into the store; then stop cleanly.
	db := restartToReplay(t, c)
	counts := map[string]int{}
	rows, err := db.QueryContext(ctx, `SELECT request_id FROM usage_records WHERE workspace = $1`, "ws-kill")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		rows.Scan(&id)
		counts[id]++
	}
	rows.Close()
	missing, dup := 0, 0
	for _, id := range answered {
		switch counts[id] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	if missing > 0 || dup > 0 {
		t.Errorf("%d answered requests: %d without a record, %d with more than one", len(answered), missing, dup)
	}
	t.Logf("%d answered before the kill, %d records in all", len(answered), len(counts))
	var withUsage int
	db.QueryRowContext(ctx, `SELECT COUNT(*) FROM usage_records WHERE workspace = $1 AND output_tokens IS NOT NULL`, "ws-kill").Scan(&withUsage)
	if withUsage < len(answered) {
		t.Errorf("%d records with usage, want at least %d", withUsage, len(answered))
	}
}
