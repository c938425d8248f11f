package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// redisConn is the little of RESP the bench needs around S1g: is Redis
// there, how many commands did it serve, which keys did tollgate leave.
// tollgate's own client does the real work; this one only observes.
type redisConn struct {
	c  net.Conn
	br *bufio.Reader
}

// redisAddr is the host:port of a redis:// URL, with the default port.
func redisAddr(raw string) (*url.URL, string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Hostname() == "" {
		return nil, "", fmt.Errorf("-redis %q: want redis://HOST[:PORT][/DB]", raw)
	}
	if u.Scheme == "rediss" {
		return nil, "", fmt.Errorf("-redis %q: the bench observes Redis in plain RESP; use redis://", raw)
	}
	port := u.Port()
	if port == "" {
		port = "6379"
	}
	return u, net.JoinHostPort(u.Hostname(), port), nil
}

// dialRedis connects, authenticates and selects the URL's database.
func dialRedis(ctx context.Context, raw string) (*redisConn, error) {
	u, addr, err := redisAddr(raw)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &redisConn{c: c, br: bufio.NewReader(c)}
	if pw, ok := u.User.Password(); ok {
		args := []string{"AUTH", pw}
		if name := u.User.Username(); name != "" {
			args = []string{"AUTH", name, pw}
		}
		if _, err := r.do(args...); err != nil {
			c.Close()
			return nil, fmt.Errorf("AUTH: %w", err)
		}
	}
	if db := strings.Trim(u.Path, "/"); db != "" && db != "0" {
		if _, err := r.do("SELECT", db); err != nil {
			c.Close()
			return nil, fmt.Errorf("SELECT %s: %w", db, err)
		}
	}
	return r, nil
}

func (r *redisConn) close() { r.c.Close() }

// do sends one command and reads its reply: a string, an int64, nil, or
// a []any of those.
func (r *redisConn) do(args ...string) (any, error) {
	_ = r.c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := r.c.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	return r.reply()
}

func (r *redisConn) reply() (any, error) {
	line, err := r.br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, errors.New(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r.br, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = r.reply(); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// redisCalls is what Redis served: every command, those a script ran
// included (Redis counts a script's redis.call commands too), and the
// script calls themselves, which are what a client's round trips carry.
type redisCalls struct{ commands, scripts int64 }

// calls reads INFO commandstats.
func (r *redisConn) calls() (redisCalls, error) {
	v, err := r.do("INFO", "commandstats")
	if err != nil {
		return redisCalls{}, err
	}
	s, _ := v.(string)
	var c redisCalls
	for _, l := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(l), ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
		c.commands += n
		switch strings.TrimPrefix(name, "cmdstat_") {
		case "evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro":
			c.scripts += n
		}
	}
	return c, nil
}

// keys lists the keys under prefix (SCAN, so a shared Redis is not
// blocked).
func (r *redisConn) keys(prefix string) ([]string, error) {
	var out []string
	cursor := "0"
	for range 100000 {
		v, err := r.do("SCAN", cursor, "MATCH", prefix+"*", "COUNT", "1000")
		if err != nil {
			return out, err
		}
		a, ok := v.([]any)
		if !ok || len(a) != 2 {
			return out, errors.New("malformed SCAN reply")
		}
		cursor, _ = a[0].(string)
		ks, _ := a[1].([]any)
		for _, k := range ks {
			if s, ok := k.(string); ok {
				out = append(out, s)
			}
		}
		if cursor == "0" {
			return out, nil
		}
	}
	return out, errors.New("SCAN did not finish")
}

// deleteKeys removes the keys under prefix and returns how many went.
func (r *redisConn) deleteKeys(prefix string) (int, error) {
	ks, err := r.keys(prefix)
	n := 0
	for len(ks) > 0 {
		batch := ks[:min(len(ks), 500)]
		ks = ks[len(batch):]
		v, derr := r.do(append([]string{"DEL"}, batch...)...)
		if derr != nil {
			return n, derr
		}
		d, _ := v.(int64)
		n += int(d)
	}
	return n, err
}

// startRedis runs redis-server on addr's port, without persistence,
// pinned to cpu, and waits until it answers PING. Inside the private
// namespace it is the only Redis there is; it stands where the shared
// Redis of a deployment would, beside the fake provider on the load core.
func startRedis(ctx context.Context, logDir, bin, cpu, rawURL string) (*proc, error) {
	_, addr, err := redisAddr(rawURL)
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%s not found: %w", bin, err)
	}
	argv := []string{path, "--bind", host, "--port", port, "--save", "", "--appendonly", "no", "--daemonize", "no"}
	if cpu != "" {
		argv = append([]string{"taskset", "-c", cpu}, argv...)
	}
	logPath := filepath.Join(logDir, "redis.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &proc{name: "redis", cmd: cmd, pid: cmd.Process.Pid, log: logPath, done: make(chan struct{}), URL: rawURL}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	deadline := time.Now().Add(startBound)
	for {
		if err := pingRedis(ctx, rawURL); err == nil {
			return p, nil
		} else if time.Now().After(deadline) || ctx.Err() != nil {
			p.kill()
			return nil, fmt.Errorf("redis-server did not answer within %s: %v (log %s)", startBound, err, logPath)
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("redis-server exited: %v (log %s)", p.err, logPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func pingRedis(ctx context.Context, rawURL string) error {
	r, err := dialRedis(ctx, rawURL)
	if err != nil {
		return err
	}
	defer r.close()
	v, err := r.do("PING")
	if err != nil {
		return err
	}
	if v != "PONG" {
		return fmt.Errorf("PING answered %v", v)
	}
	return nil
}
