package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

func cmdCheckConfig(args []string, stdout io.Writer) error {
	path := envOr("TOLLGATE_HARNESSES", "./harnesses.yaml")
	if len(args) > 0 {
		path = args[0]
	}
	r, err := registry.LoadFile(path)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("%s: %w", path, err)}
	}
	fmt.Fprintf(stdout, "%s: ok (version %s): %d dialects, %d providers, %d harnesses\n",
		path, r.Version, len(r.Dialects()), len(r.Providers()), len(r.Harnesses()))
	return nil
}

func cmdEnv(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("env", stderr)
	harness := fs.String("harness", "", "harness name from harnesses.yaml")
	token := fs.String("token", "", "workspace-scoped token")
	url := fs.String("url", envOr("TOLLGATE_PUBLIC_URL", ""), "tollgate's URL as the workspace reaches it")
	model := fs.String("model", "", "model to pin (optional)")
	dialect := fs.String("dialect", "", "dialect, for harnesses that speak several")
	path := fs.String("harnesses", envOr("TOLLGATE_HARNESSES", "./harnesses.yaml"), "harness registry file")
	format := fs.String("format", "shell", "shell or json")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *harness == "" || *token == "" || *url == "" {
		return usageErr("env needs --harness, --token and --url")
	}
	reg, err := registry.LoadFile(*path)
	if err != nil {
		return err
	}
	s, err := reg.Setup(*harness, registry.EnvOptions{ProxyURL: *url, Token: *token, Model: *model, Dialect: *dialect})
	if err != nil {
		return err
	}
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	writeSetup(stdout, s)
	return nil
}

// writeSetup prints a Setup as shell exports, with the config snippet as a
// comment block the reader copies into the named file.
func writeSetup(w io.Writer, s *registry.Setup) {
	for _, e := range s.Env {
		fmt.Fprintf(w, "export %s=%s\n", e.Name, registry.ShellQuote(e.Value))
	}
	if s.Config != "" {
		fmt.Fprintf(w, "# %s:\n", s.ConfigFile)
		sc := bufio.NewScanner(strings.NewReader(s.Config))
		for sc.Scan() {
			fmt.Fprintf(w, "#   %s\n", sc.Text())
		}
	}
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
	if len(args) == 0 {
		return usageErr("token needs a subcommand: issue, list or revoke")
	}
	var o options
	fs := newFlags("token "+args[0], stderr)
	o.bind(fs)
	workspace := fs.String("workspace", "", "workspace id")
	project := fs.String("project", "", "project id")
	user := fs.String("user", "", "user id")
	harness := fs.String("harness", "", "harness the token is limited to (optional)")
	ttl := fs.Duration("ttl", 24*time.Hour, "token lifetime")
	all := fs.Bool("all", false, "list revoked and expired tokens too")
	format := fs.String("format", "table", "table or json")
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	return withDeps(ctx, &o, stderr, func(d *deps) error {
		switch args[0] {
		case "issue":
			if *workspace == "" || *project == "" || *user == "" {
				return usageErr("token issue needs --workspace, --project and --user")
			}
			tok, info, err := d.resolver.IssueToken(ctx, resolver.TokenSpec{
				Workspace: *workspace, Project: *project, User: *user, Harness: *harness, TTL: *ttl,
			})
			if err != nil {
				return err
			}
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
	project := fs.String("project", "", "project id")
	user := fs.String("user", "", "user id")
	format := fs.String("format", "table", "table or json")
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
		if *format == "json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(rows)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "HARNESS\tDIALECT\tSOURCE\tCREDENTIAL\tPROVIDER\tREASON")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", dash(r.Harness), r.Dialect, r.Source, dash(r.CredentialID), dash(r.Provider), dash(r.Reason))
		}
		return tw.Flush()
	})
}

func cmdUsage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlags("usage", stderr)
	o.bind(fs)
	from := fs.String("from", "", "start date or RFC 3339 time, inclusive (default: 7 days before --to), e.g. 2026-11-01")
	to := fs.String("to", "", "end: a date includes that whole UTC day; an RFC 3339 time is exclusive (default: now)")
	groupBy := fs.String("group-by", "model", "comma list of "+strings.Join(ledger.GroupByNames, ", "))
	project := fs.String("project", "", "only this project")
	user := fs.String("user", "", "only this user")
	workspace := fs.String("workspace", "", "only this workspace")
	tier := fs.String("service-tier", "", "only requests the provider served in this tier (flex, priority, ...)")
	format := fs.String("format", "table", "table, json or csv")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	q, err := ledger.ParseUsageQuery(*from, *to, *groupBy, time.Now())
	if err != nil {
		return usageErr("%v", err)
	}
	q.Project, q.User, q.Workspace, q.ServiceTier = *project, *user, *workspace, *tier
	return withDeps(ctx, &o, stderr, func(d *deps) error {
		st, err := ledger.OpenStore(ctx, d.db)
		if err != nil {
			return err
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
