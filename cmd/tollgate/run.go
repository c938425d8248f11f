package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"
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

// command is one command of the CLI. Its synopsis is the one place its
// flags are named: the top-level usage and the command's -h print it, and
// the command registers exactly the flags it names (see commandFlags), so
// the three cannot disagree. Shared settings (--db and the like) are not
// in it; -h lists them.
type command struct {
	name, synopsis, summary string
}

var commands = []command{
	{"serve", "", "run the proxy"},
	{"check-config", "[FILE]", "validate harnesses.yaml and exit"},
	{"env", "--harness H --token T [--url URL] [--model M] [--dialect D] [--format shell|json] [--verify | --no-verify] [--write DIR [--force]]",
		"print what a workspace exports; --write DIR writes the harness's config file under DIR (a home directory)"},
	{"token issue", "--workspace W --project P --user U [--harness H] [--ttl 24h]", "issue a workspace token; it is shown once"},
	{"token list", "[--workspace W] [--project P] [--user U] [--all] [--format table|json]", ""},
	{"token revoke", "ID", ""},
	{"credential set", "--platform --provider P --key-stdin", "set the platform key of a provider"},
	{"credential add", "--provider P --key-stdin [--name N] [--base-url URL]", "store a credential; prints its id"},
	{"credential list", "[--format table|json]", ""},
	{"credential disable", "ID", ""},
	{"credential enable", "ID", ""},
	{"credential delete", "(ID | --platform --provider P)", "delete a credential, or the platform key of a provider"},
	{"credential bind", "--credential ID[:WEIGHT]... [--fallback ID[:WEIGHT][,ID[:WEIGHT]]...]... --dialect D (--platform | --project P | --user U) [--harness H] [--inactive]",
		"bind credentials: the --credential ones share traffic by weight; each --fallback is the next failover step"},
	{"credential unbind", "--dialect D (--platform | --project P | --user U) [--harness H]", ""},
	{"credential activate", "--dialect D (--platform | --project P | --user U) [--harness H]", ""},
	{"credential deactivate", "--dialect D (--platform | --project P | --user U) [--harness H]", ""},
	{"credential bindings", "[--credential ID] [--dialect D] [--format table|json]", ""},
	{"credential rotate-key", "--from-key-file OLD", "re-encrypt every credential with the configured master key"},
	{"resolve", "--project P --user U [--format table|json]", "show which credential serves each harness and dialect, and the policies in force"},
	{"budget set", scopeSynopsis + " (--cost USD | --tokens N) --window W [--tz ZONE] [--mode hard|soft|alert] [--model GLOB] [--harness H] [--unpriced refuse|fallback] [--alerts 50,80,100] [--id ID]",
		"create a budget, or update the one with the same scope, model, harness, metric and window (or --id): its spend is kept"},
	{"budget list", "[" + scopeSynopsis + "] [--format table|json]", ""},
	{"budget show", "ID [--format table|json]", ""},
	{"budget delete", "ID", ""},
	{"limit set", scopeSynopsis + " [--rpm N] [--tpm N] [--concurrency N] [--mode hard|soft] [--model GLOB] [--harness H] [--id ID]",
		"create a rate limit, or update the one with the same scope, model and harness (or --id)"},
	{"limit list", "[" + scopeSynopsis + "] [--format table|json]", ""},
	{"limit show", "ID [--format table|json]", ""},
	{"limit delete", "ID", ""},
	{"models allow", scopeSynopsis + " PATTERN", "only models matching PATTERN (a glob; quote it) pass at this scope"},
	{"models deny", scopeSynopsis + " PATTERN", "models matching PATTERN are refused at this scope"},
	{"models alias", "(--platform | --project P) NAME TARGET", "a request for model NAME is sent as TARGET"},
	{"models list", "[" + scopeSynopsis + "] [--format table|json]", ""},
	{"models delete", "ID", ""},
	{"usage", "[--from DATE] [--to DATE] [--group-by model,project,...] [--project P] [--user U] [--workspace W] [--service-tier T] [--session ID] [--format table|json|csv] [--refusals]", "report metered usage, or with --refusals the refused authentications per minute; --to DATE includes that whole UTC day"},
	{"usage import-quarantine", "[--spool DIR] [--dry-run]", "replay the spool's quarantine.jsonl into the database once its cause is fixed; keeps what is still refused"},
	{"audit", "[--actor-kind api|cli|console] [--actor ID] [--action PREFIX] [--target ID] [--from DATE] [--to DATE] [--limit N] [--cursor C] [--format table|json]",
		"list the audit log of admin writes, newest first"},
	{"version", "", "print the version (also --version)"},
}

func lookupCommand(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// usageFor is the usage of every command whose name starts with prefix.
func usageFor(prefix string) string {
	var b strings.Builder
	for _, c := range commands {
		if c.name == prefix || strings.HasPrefix(c.name, prefix+" ") || prefix == "" {
			fmt.Fprintf(&b, "  tollgate %s\n", strings.TrimSpace(c.name+" "+c.synopsis))
			if c.summary != "" {
				fmt.Fprintf(&b, "      %s\n", c.summary)
			}
		}
	}
	return b.String()
}

var usageText = "tollgate: a credential-aware AI inference reverse proxy\n\nUsage:\n" + usageFor("") + `
Every command reads the TOLLGATE_* variables listed in the README;
run "tollgate COMMAND -h" for its flags.
`

// subcommandNames lists the subcommands of group ("credential").
func subcommandNames(group string) []string {
	var out []string
	for _, c := range commands {
		if sub, ok := strings.CutPrefix(c.name, group+" "); ok {
			out = append(out, sub)
		}
	}
	return out
}

// subcommand picks the subcommand of group from args: -h prints the
// group's usage and ends the command with exit 0.
func subcommand(group string, args []string, stdout io.Writer) (string, error) {
	if len(args) == 0 {
		return "", usageErr("%s needs a subcommand: %s", group, strings.Join(subcommandNames(group), ", "))
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprintf(stdout, "Usage:\n%s\nrun \"tollgate %s SUBCOMMAND -h\" for its flags.\n", usageFor(group), group)
		return "", flag.ErrHelp
	}
	if _, ok := lookupCommand(group + " " + args[0]); !ok {
		return "", usageErr("unknown %s subcommand %q: use %s", group, args[0], strings.Join(subcommandNames(group), ", "))
	}
	return args[0], nil
}

// commandFlags registers the flags a command's synopsis names and no
// other: a flag the synopsis lacks is left unregistered, its default in
// force, so using it is an error.
type commandFlags struct {
	fs    *flag.FlagSet
	names map[string]bool
}

func newCommandFlags(fs *flag.FlagSet) commandFlags {
	c, _ := lookupCommand(fs.Name())
	names := map[string]bool{}
	for _, w := range strings.FieldsFunc(c.synopsis, func(r rune) bool { return strings.ContainsRune(" []()|", r) }) {
		if n, ok := strings.CutPrefix(w, "--"); ok {
			names[n] = true
		}
	}
	return commandFlags{fs: fs, names: names}
}

func (c commandFlags) String(name, def, usage string) *string {
	p := &def
	if c.names[name] {
		c.fs.StringVar(p, name, def, usage)
	}
	return p
}

func (c commandFlags) Bool(name, usage string) *bool {
	p := new(bool)
	if c.names[name] {
		c.fs.BoolVar(p, name, false, usage)
	}
	return p
}

func (c commandFlags) Duration(name string, def time.Duration, usage string) *time.Duration {
	p := &def
	if c.names[name] {
		c.fs.DurationVar(p, name, def, usage)
	}
	return p
}

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
		err = cmdCheckConfig(rest, stdout, stderr)
	case "env":
		err = cmdEnv(ctx, rest, stdout, stderr)
	case "token":
		err = cmdToken(ctx, rest, stdout, stderr)
	case "credential":
		err = cmdCredential(ctx, rest, stdin, stdout, stderr)
	case "resolve":
		err = cmdResolve(ctx, rest, stdout, stderr)
	case "budget":
		err = cmdBudget(ctx, rest, stdout, stderr)
	case "limit":
		err = cmdLimit(ctx, rest, stdout, stderr)
	case "models":
		err = cmdModels(ctx, rest, stdout, stderr)
	case "usage":
		if len(rest) > 0 && rest[0] == "import-quarantine" {
			err = cmdImportQuarantine(ctx, rest[1:], stdout, stderr)
		} else {
			err = cmdUsage(ctx, rest, stdout, stderr)
		}
	case "audit":
		err = cmdAudit(ctx, rest, stdout, stderr)
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

// newFlags returns a flag set that reports errors instead of exiting and
// leaves removed flags out of its -h.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		c, _ := lookupCommand(name)
		fmt.Fprintf(fs.Output(), "Usage: tollgate %s\n", strings.TrimSpace(name+" "+c.synopsis))
		if c.summary != "" {
			fmt.Fprintf(fs.Output(), "\n%s.\n", c.summary)
		}
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(fs.Output(), "\nFlags:")
			printFlags(fs)
		}
	}
	return fs
}

// printFlags is fs.PrintDefaults without the hidden flags.
func printFlags(fs *flag.FlagSet) {
	shown := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	shown.SetOutput(fs.Output())
	fs.VisitAll(func(f *flag.Flag) {
		if f.Usage != hiddenUsage {
			shown.Var(f.Value, f.Name, f.Usage)
		}
	})
	shown.PrintDefaults()
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
