package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

func cmdCheckConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("check-config", stderr)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageErr("check-config takes one file")
	}
	path := cmp.Or(os.Getenv("TOLLGATE_HARNESSES"), defaultHarnesses)
	if len(pos) == 1 {
		path = pos[0]
	}
	r, err := registry.LoadFile(path)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("%s: %w", path, err)}
	}
	fmt.Fprintf(stdout, "%s: ok (version %s): %d dialects, %d providers, %d harnesses\n",
		path, r.Version, len(r.Dialects()), len(r.Providers()), len(r.Harnesses()))
	return nil
}

func cmdEnv(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlags("env", stderr)
	o.bindRegistry(fs)
	f := newCommandFlags(fs)
	harness := f.String("harness", "", "harness name from the registry")
	token := f.String("token", "", "the workspace token (tgw_...) from \"tollgate token issue\"")
	url := f.String("url", os.Getenv("TOLLGATE_PUBLIC_URL"), "tollgate's http(s) URL as the workspace reaches it (TOLLGATE_PUBLIC_URL)")
	model := f.String("model", "", "model to pin (optional)")
	dialect := f.String("dialect", "", "dialect, for harnesses that speak several")
	format := f.String("format", "shell", "shell or json")
	verify := f.Bool("verify", "require the database (the shared flags say which) and look the token up in it; the default whenever that database exists: an unknown, expired or revoked token, or one limited to another harness, is refused")
	noVerify := f.Bool("no-verify", "check only the token's form, not the database")
	write := f.String("write", "", "write the harness's config file under this `directory` (its ~), as well as printing the exports")
	force := f.Bool("force", "with --write: replace a config file that exists")
	o.bind(fs)
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := o.check(); err != nil {
		return err
	}
	if *harness == "" || *token == "" || *url == "" {
		return usageErr("env needs --harness, --token and --url (or TOLLGATE_PUBLIC_URL)")
	}
	if err := checkHTTPURL(*url); err != nil {
		return usageErr("--url %q: %v", *url, err)
	}
	if !resolver.WellFormedToken(*token) {
		return usageErr("--token is not a tollgate workspace token (%s followed by 43 characters): issue one with \"tollgate token issue\"", resolver.TokenPrefix)
	}
	if *format != "shell" && *format != "json" {
		return usageErr("unknown format %q: use shell or json", *format)
	}
	if *force && *write == "" {
		return usageErr("--force goes with --write DIR")
	}
	if *verify && *noVerify {
		return usageErr("--verify and --no-verify: choose one")
	}
	reg, err := builtInRegistry(o.Harnesses, func(s string) { fmt.Fprintln(stderr, "tollgate: note:", s) })
	if err == nil && reg == nil {
		reg, err = registry.LoadFile(o.Harnesses)
	}
	if err != nil {
		return err
	}
	if !*noVerify {
		if err := verifyToken(ctx, &o, stderr, *token, *harness, *verify); err != nil {
			return err
		}
	}
	s, err := reg.Setup(*harness, registry.EnvOptions{ProxyURL: *url, Token: *token, Model: *model, Dialect: *dialect})
	if err != nil {
		return err
	}
	if *write != "" {
		if err := writeConfigFile(*write, s, *force, stderr); err != nil {
			return err
		}
	}
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	_, err = io.WriteString(stdout, s.Shell())
	return err
}

// verifyLookupBound bounds env's token lookup: a workspace-setup script
// must not hang on a PostgreSQL that does not answer.
const verifyLookupBound = 10 * time.Second

// verifyToken authenticates token against the database and checks it may
// be used with harness. Unless required (--verify), a database that is
// not there is no error: the token was checked for form only, and one
// stderr line says so and why. A missing SQLite file is never opened, which
// would create it (and a master key) and then call every token unknown.
func verifyToken(ctx context.Context, o *options, stderr io.Writer, token, harness string, required bool) error {
	o.needRegistry = false // loaded already; authenticating needs none
	formOnly := func(why string) error {
		fmt.Fprintf(stderr, "tollgate: note: --token was checked for form only, not for its harness, expiry or revocation: %s (--verify requires the database, --no-verify skips the lookup)\n", why)
		return nil
	}
	if path := strings.TrimPrefix(o.DB, "sqlite:"); !strings.Contains(o.DB, "://") {
		if _, err := os.Stat(path); err != nil {
			if required {
				return fmt.Errorf("--verify needs the database: %w (set TOLLGATE_DB or --db)", err)
			}
			return formOnly(fmt.Sprintf("no database at %s (set TOLLGATE_DB or --db)", path))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, verifyLookupBound)
	defer cancel()
	err := withDeps(ctx, o, stderr, func(d *deps) error {
		id, err := d.resolver.Authenticate(ctx, token)
		switch {
		case errors.Is(err, resolver.ErrTokenInvalid):
			return errors.New("--token is unknown to the database: issue one with \"tollgate token issue\", or point TOLLGATE_DB / --db at the database that issued it")
		case errors.Is(err, resolver.ErrTokenRevoked):
			return errors.New("--token is revoked: issue a new one with \"tollgate token issue\"")
		case errors.Is(err, resolver.ErrTokenExpired):
			return errors.New("--token has expired: issue a new one with \"tollgate token issue\"")
		case err != nil:
			return fmt.Errorf("--token: %w", err)
		}
		if id.Harness != "" && id.Harness != harness {
			return usageErr("--token is limited to harness %q, not %q: issue a token with --harness %s", id.Harness, harness, harness)
		}
		return nil
	})
	if err != nil && !required && store.Unreachable(err) {
		return formOnly(fmt.Sprintf("the database did not answer (%v)", err))
	}
	return err
}

// writeConfigFile writes s's config file under dir, which stands for the
// workspace's home: "~/.codex/config.toml" becomes dir/.codex/config.toml.
// It holds the token, so it is private to its owner.
func writeConfigFile(dir string, s *registry.Setup, force bool, stderr io.Writer) error {
	if s.ConfigFile == "" {
		fmt.Fprintln(stderr, "tollgate: note: this harness needs no config file; nothing written")
		return nil
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(s.ConfigFile, "~"), "/")
	path := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if errors.Is(err, os.ErrExist) {
		return &exitError{code: 1, err: fmt.Errorf("%s exists: not replaced (--force replaces it)", path)}
	}
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, s.Config); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "tollgate: wrote %s\n", path)
	return nil
}

// withDeps opens the registry, the database and the resolver as o says,
// runs f and closes them.
func withDeps(ctx context.Context, o *options, stderr io.Writer, f func(d *deps) error) error {
	d, err := openDeps(ctx, o, o.logger(stderr))
	if err != nil {
		return err
	}
	defer d.Close()
	return f(d)
}

func cmdToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub, err := subcommand("token", args, stdout)
	if err != nil {
		return err
	}
	var o options
	fs := newFlags("token "+sub, stderr)
	o.bind(fs)
	if sub == "issue" {
		o.bindRegistry(fs) // to check --harness
	}
	f := newCommandFlags(fs)
	workspace := f.String("workspace", "", "workspace id")
	project := f.String("project", "", "project id")
	user := f.String("user", "", "user id")
	harness := f.String("harness", "", "harness the token is limited to (optional)")
	ttl := f.Duration("ttl", 24*time.Hour, "token lifetime")
	all := f.Bool("all", "list revoked and expired tokens too")
	format := f.String("format", "table", "table or json")
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	return withDeps(ctx, &o, stderr, func(d *deps) error {
		ctx, trail, err := openTrail(ctx, d)
		if err != nil {
			return err
		}
		switch args[0] {
		case "issue":
			if *workspace == "" || *project == "" || *user == "" {
				return usageErr("token issue needs --workspace, --project and --user")
			}
			if err := knownHarness(d, *harness); err != nil {
				return err
			}
			tok, info, err := d.resolver.IssueToken(ctx, resolver.TokenSpec{
				Workspace: *workspace, Project: *project, User: *user, Harness: *harness, TTL: *ttl,
			})
			if err != nil {
				return err
			}
			audited(stderr, trail.TokenIssued(ctx, info, tok))
			fmt.Fprintf(stderr, "issued %s for workspace %s (expires %s); the token is shown once:\n", info.ID, info.Workspace, info.ExpiresAt.Format(time.RFC3339))
			fmt.Fprintln(stdout, tok)
			return nil
		case "list":
			toks, err := d.resolver.ListTokens(ctx, resolver.TokenFilter{Workspace: *workspace, Project: *project, User: *user, IncludeRevoked: *all})
			if err != nil {
				return err
			}
			if *format == "json" {
				return json.NewEncoder(stdout).Encode(toks)
			}
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tPREFIX\tWORKSPACE\tPROJECT\tUSER\tHARNESS\tEXPIRES\tREVOKED\tLAST USED")
			for _, t := range toks {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Prefix, t.Workspace, t.Project, t.User,
					dash(t.Harness), fmtTime(t.ExpiresAt), fmtTime(t.RevokedAt), fmtTime(t.LastUsedAt))
			}
			return tw.Flush()
		case "revoke":
			if len(pos) != 1 {
				return usageErr("token revoke needs one token id")
			}
			if err := d.resolver.RevokeToken(ctx, pos[0]); err != nil {
				return err
			}
			audited(stderr, trail.TokenRevoked(ctx, pos[0]))
			fmt.Fprintf(stdout, "revoked %s\n", pos[0])
			return nil
		}
		return usageErr("unknown token subcommand %q", args[0])
	})
}

func cmdResolve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlags("resolve", stderr)
	o.bind(fs)
	o.bindRegistry(fs)
	f := newCommandFlags(fs)
	project := f.String("project", "", "project id")
	user := f.String("user", "", "user id")
	format := f.String("format", "table", "table or json")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *project == "" || *user == "" {
		return usageErr("resolve needs --project and --user")
	}
	return withDeps(ctx, &o, stderr, func(d *deps) error {
		rows, err := d.resolver.ResolutionView(ctx, *project, *user)
		if err != nil {
			return err
		}
		policies, err := resolvePolicies(ctx, d, *project, *user)
		if err != nil {
			return err
		}
		if *format == "json" {
			// The shape of GET /admin/v1/resolution.
			return writePolicyJSON(stdout, map[string]any{"project": *project, "user": *user,
				"resolutions": nonNilPolicies(rows), "policies": nonNilPolicies(policies)})
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "HARNESS\tDIALECT\tSOURCE\tCREDENTIAL\tPROVIDER\tREASON\tCANDIDATES")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dash(r.Harness), r.Dialect, r.Source, dash(r.CredentialID), dash(r.Provider), dash(r.Reason), viewCandidatesText(r.Candidates))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(policies) == 0 {
			fmt.Fprintln(stdout, "\nno budget, rate limit or model rule applies")
			return nil
		}
		fmt.Fprintln(stdout)
		return writePolicyStates(stdout, policies)
	})
}

func cmdUsage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlags("usage", stderr)
	o.bind(fs)
	f := newCommandFlags(fs)
	from := f.String("from", "", "start date or RFC 3339 time, inclusive (default: 7 days before --to), e.g. 2026-11-01")
	to := f.String("to", "", "end: a date includes that whole UTC day; an RFC 3339 time is exclusive (default: now)")
	groupBy := f.String("group-by", "model", "comma list of "+strings.Join(ledger.GroupByNames, ", "))
	project := f.String("project", "", "only this project")
	user := f.String("user", "", "only this user")
	workspace := f.String("workspace", "", "only this workspace")
	tier := f.String("service-tier", "", "only requests the provider served in this tier (flex, priority, ...)")
	session := f.String("session", "", "only this harness session (what one agent task cost; see --group-by session)")
	format := f.String("format", "table", "table, json or csv")
	refusals := f.Bool("refusals", "list refused authentications per minute, client address, token and reason instead (--from, --to, --workspace apply)")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	q, err := ledger.ParseUsageQuery(*from, *to, *groupBy, time.Now())
	if err != nil {
		return usageErr("%v", err)
	}
	q.Project, q.User, q.Workspace, q.ServiceTier, q.Session = *project, *user, *workspace, *tier, *session
	return withDeps(ctx, &o, stderr, func(d *deps) error {
		st, err := ledger.OpenStore(ctx, d.db)
		if err != nil {
			return err
		}
		if *refusals {
			return writeRefusals(ctx, st, q, *format, stdout)
		}
		rows, err := st.Query(ctx, q)
		if err != nil {
			return err
		}
		switch *format {
		case "json":
			return ledger.WriteJSON(stdout, q.GroupBy, rows)
		case "csv":
			return ledger.WriteCSV(stdout, q.GroupBy, rows)
		case "table":
			return ledger.WriteTable(stdout, q.GroupBy, rows)
		}
		return usageErr("unknown format %q: use table, json or csv", *format)
	})
}

// maxRefusalRows bounds `usage --refusals`: a spray from many addresses
// has a row per address a minute.
const maxRefusalRows = 10_000

func writeRefusals(ctx context.Context, st *ledger.Store, q ledger.UsageQuery, format string, stdout io.Writer) error {
	rows, err := st.Refusals(ctx, q.From, q.To, q.Workspace, maxRefusalRows)
	if err != nil {
		return err
	}
	switch format {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	case "table":
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MINUTE\tCLIENT\tREASON\tDIALECT\tWORKSPACE\tTOKEN\tCOUNT")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", fmtTime(r.Minute), dash(r.Client), r.Reason, r.Dialect, dash(r.Workspace), dash(r.TokenID), r.Count)
		}
		return tw.Flush()
	}
	return usageErr("unknown format %q for --refusals: use table or json", format)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04")
}

var errKeyEmpty = errors.New("no key on standard input")

// readKey reads one secret line from stdin; it never echoes it.
func readKey(stdin io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
	if err != nil {
		return "", err
	}
	k := strings.TrimSpace(string(b))
	if k == "" {
		return "", errKeyEmpty
	}
	return k, nil
}
