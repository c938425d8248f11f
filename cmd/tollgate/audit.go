package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"text/tabwriter"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/proxy"
)

// cliActor is the OS user running the CLI: it has no login of its own, so
// the account that ran it is who made the write.
func cliActor() audit.Actor {
	id := ""
	if u, err := user.Current(); err == nil {
		id = u.Username
	}
	if id == "" {
		id = os.Getenv("USER")
	}
	if id == "" {
		id = "uid " + strconv.Itoa(os.Getuid())
	}
	return audit.Actor{Kind: audit.KindCLI, ID: id}
}

// openTrail opens the audit log on d's database and returns ctx naming
// the CLI's user as the actor of its writes.
func openTrail(ctx context.Context, d *deps) (context.Context, proxy.AuditTrail, error) {
	l, err := audit.Open(ctx, d.db)
	if err != nil {
		return ctx, proxy.AuditTrail{}, err
	}
	return audit.WithActor(ctx, cliActor(), audit.SourceCLI), proxy.AuditTrail{Log: l}, nil
}

// audited reports, after a write that succeeded, an audit entry that could
// not be appended. A warning, not a failure: the write has committed, and
// a failed exit would invite running it again.
func audited(stderr io.Writer, err error) {
	if err != nil {
		fmt.Fprintf(stderr, "tollgate: warning: the change was made but its audit entry was not recorded: %v\n", err)
	}
}

// auditFlags are the audit command's filter flags and the audit.Params
// they stand for.
var auditFlags = []struct{ flag, param, usage string }{
	{"actor-kind", "actor_kind", "only writes made through api, cli or console"},
	{"actor", "actor", "only writes by this actor: an admin token's fingerprint, an OS user, a console session"},
	{"action", "action", "only actions starting with this, e.g. credential or binding.bind"},
	{"target", "target", "only writes to this id (a token, credential or policy id, or a binding such as user:u1/anthropic-messages)"},
	{"from", "from", "start: a date or RFC 3339 time, inclusive"},
	{"to", "to", "end: a date includes that whole UTC day; an RFC 3339 time is exclusive"},
	{"limit", "limit", "entries per page (default 100, at most 1000)"},
	{"cursor", "cursor", "the page after this cursor, as the previous page printed it"},
}

func cmdAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlags("audit", stderr)
	o.bind(fs)
	f := newCommandFlags(fs)
	vals := make([]*string, len(auditFlags))
	for i, a := range auditFlags {
		vals[i] = f.String(a.flag, "", a.usage)
	}
	format := f.String("format", "table", "table or json")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	params := map[string]string{}
	for i, a := range auditFlags {
		if *vals[i] != "" {
			params[a.param] = *vals[i]
		}
	}
	filter, err := audit.ParseFilter(params)
	if err != nil {
		return usageErr("%v", err)
	}
	if *format != "table" && *format != "json" {
		return usageErr("unknown format %q: use table or json", *format)
	}
	return withDeps(ctx, &o, stderr, func(d *deps) error {
		l, err := audit.Open(ctx, d.db)
		if err != nil {
			return err
		}
		p, err := l.Query(ctx, filter)
		if err != nil {
			return err
		}
		if *format == "json" {
			// The shape of GET /admin/v1/audit.
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(p)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "AT\tACTOR\tSOURCE\tACTION\tTARGET\tCHANGE")
		for _, e := range p.Entries {
			change := "-"
			if len(e.Change) > 0 {
				b, _ := json.Marshal(e.Change)
				change = string(b)
			}
			fmt.Fprintf(tw, "%s\t%s:%s\t%s\t%s\t%s\t%s\n", e.At.Format("2006-01-02 15:04:05"), e.Actor.Kind, dash(e.Actor.ID),
				dash(e.Source), e.Action, dash(e.Target), change)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if p.Next != "" {
			fmt.Fprintf(stderr, "tollgate: more entries: add --cursor %s\n", p.Next)
		}
		return nil
	})
}

// cliAudit records a policy command's writes. It keeps the command's
// context, which names the CLI's user, for the one command it serves.
type cliAudit struct {
	ctx    context.Context
	trail  proxy.AuditTrail
	stderr io.Writer
}

func openCLIAudit(ctx context.Context, d *deps, stderr io.Writer) (cliAudit, error) {
	ctx, t, err := openTrail(ctx, d)
	return cliAudit{ctx: ctx, trail: t, stderr: stderr}, err
}

func (a cliAudit) policySet(noun string, policy any, res governance.SetResult) {
	audited(a.stderr, a.trail.PolicySet(a.ctx, noun, policy, string(res)))
}

func (a cliAudit) policyDeleted(noun, id string) {
	audited(a.stderr, a.trail.PolicyDeleted(a.ctx, noun, id))
}
