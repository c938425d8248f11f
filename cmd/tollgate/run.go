package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// version is set by -ldflags at build time (make build: git describe).
var version = "dev"

// versionString is what "tollgate version" and the serve log print. A
// binary built without -ldflags (go build, go install) reports the module
// version the go command stamps: since Go 1.24 a pseudo-version naming the
// commit (v0.0.0-<time>-<commit>[+dirty]) when VCS stamping is on. It is
// off on machines that set GOFLAGS=-buildvcs=false, and then "dev" stays.
func versionString() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

const usageText = `tollgate: a credential-aware AI inference reverse proxy

Usage:
  tollgate serve                      run the proxy
  tollgate check-config [FILE]        validate harnesses.yaml and exit
  tollgate env --harness H --token T --url URL
                                      print what a workspace exports
  tollgate token issue --workspace W --project P --user U [--harness H] [--ttl 24h]
  tollgate token list [--workspace W] [--project P] [--user U] [--all]
  tollgate token revoke ID
  tollgate credential set --platform --provider P --key-stdin
  tollgate credential add --provider P --name N --key-stdin [--base-url URL]
  tollgate credential list | disable ID | enable ID | delete ID
  tollgate credential bind --credential ID --dialect D (--project P | --user U | --platform) [--harness H] [--inactive]
  tollgate credential unbind ID | activate ID | deactivate ID | bindings
  tollgate credential rotate-key --from-key-file OLD
  tollgate resolve --project P --user U
  tollgate usage [--from DATE] [--to DATE] [--group-by model,project,...] [--project|--user|--workspace|--service-tier ID] [--format table|json|csv]
  tollgate version                    (also --version)

Every command reads the TOLLGATE_* variables listed in the README;
run "tollgate COMMAND -h" for its flags.
`

// exitError carries an exit code; usage errors exit 2.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

// run is the whole program; main only wires signals and exits with its code,
// so tests can run the binary in process on 127.0.0.1:0.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	var err error
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		err = cmdServe(ctx, rest, stdout, stderr)
	case "check-config":
		err = cmdCheckConfig(rest, stdout)
	case "env":
		err = cmdEnv(rest, stdout, stderr)
	case "token":
		err = cmdToken(ctx, rest, stdout, stderr)
	case "credential":
		err = cmdCredential(ctx, rest, stdin, stdout, stderr)
	case "resolve":
		err = cmdResolve(ctx, rest, stdout, stderr)
	case "usage":
		err = cmdUsage(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "tollgate", versionString())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usageText)
	default:
		fmt.Fprintf(stderr, "tollgate: unknown command %q\n\n%s", cmd, usageText)
		return 2
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, "tollgate:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "tollgate:", err)
	return 1
}

func usageErr(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses flags that may come before or after positional
// arguments ("token revoke ID --db X").
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &exitError{code: 2, err: errors.New("")}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
