package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/resolver"
)

func cmdCredential(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	sub, err := subcommand("credential", args, stdout)
	if err != nil {
		return err
	}
	var o options
	fs := newFlags("credential "+sub, stderr)
	o.bind(fs)
	switch sub {
	case "set", "add", "bind", "delete":
		// To check the provider (delete --platform names one), the dialect
		// and the harness.
		o.bindRegistry(fs)
	}
	if sub == "add" {
		o.bindHTTPBaseURL(fs)
	}
	f := newCommandFlags(fs)
	platform := f.Bool("platform", "platform tier")
	project := f.String("project", "", "project tier: the project id")
	user := f.String("user", "", "user tier: the user id")
	provider := f.String("provider", "", "provider name from harnesses.yaml")
	name := f.String("name", "", "a label for listings")
	keyStdin := f.Bool("key-stdin", "read the key from standard input (never from a flag: flags end up in shell history)")
	baseURL := f.String("base-url", "", "override the provider's base URL (https)")
	credID := new(string)
	var credIDs, fallbacks []string
	if sub == "bind" {
		f.Strings(&credIDs, "credential", "credential `ID[:WEIGHT]` to bind; repeat it (or give a comma list) to share traffic by weight (default 1)")
		f.Strings(&fallbacks, "fallback", "the next failover step, `ID[:WEIGHT][,...]`, tried when every earlier step fails; repeat it for further steps")
	} else {
		credID = f.String("credential", "", "credential id")
	}
	dialect := f.String("dialect", "", "dialect name from harnesses.yaml")
	harness := f.String("harness", "", "narrow the binding to one harness")
	inactive := f.Bool("inactive", "create the binding inactive (on a project: the provider is off for it)")
	fromKeyFile := f.String("from-key-file", "", "`file` holding the OLD master key; the configured master key is the new one")
	format := f.String("format", "table", "table or json")
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	bindingKey := func() (resolver.BindingKey, error) {
		k := resolver.BindingKey{Dialect: *dialect, Harness: *harness}
		n := 0
		if *platform {
			k.Tier, n = resolver.TierPlatform, n+1
		}
		if *project != "" {
			k.Tier, k.ScopeID, n = resolver.TierProject, *project, n+1
		}
		if *user != "" {
			k.Tier, k.ScopeID, n = resolver.TierUser, *user, n+1
		}
		if n != 1 || *dialect == "" {
			return k, usageErr("credential %s needs --dialect and exactly one of --platform, --project P, --user U", sub)
		}
		return k, nil
	}
	oneID := func() (string, error) {
		if len(pos) != 1 {
			return "", usageErr("credential %s needs one credential id", sub)
		}
		return pos[0], nil
	}
	var oldKey []byte
	if sub == "rotate-key" {
		if *fromKeyFile == "" {
			return usageErr("credential rotate-key needs --from-key-file OLD (the configured master key is the new one)")
		}
		raw, err := os.ReadFile(*fromKeyFile)
		if err != nil {
			return err
		}
		if oldKey, err = resolver.ParseMasterKey(strings.TrimSpace(string(raw))); err != nil {
			return fmt.Errorf("old master key: %w", err)
		}
		// Opening the store with the new key needs the old one accepted.
		o.PreviousKeys = strings.Trim(o.PreviousKeys+","+strings.TrimSpace(string(raw)), ",")
	}
	return withDeps(ctx, &o, stderr, func(d *deps) error {
		svc := d.resolver
		ctx, trail, err := openTrail(ctx, d)
		if err != nil {
			return err
		}
		switch sub {
		case "set":
			if !*platform || *provider == "" || !*keyStdin {
				return usageErr("credential set needs --platform, --provider P and --key-stdin")
			}
			if err := knownProvider(d, *provider); err != nil {
				return err
			}
			key, err := readKey(stdin)
			if err != nil {
				return err
			}
			cr, err := svc.SetPlatformKey(ctx, *provider, resolver.NewSecret(key))
			if err != nil {
				return err
			}
			audited(stderr, trail.PlatformKeySet(ctx, cr, key))
			fmt.Fprintf(stdout, "platform credential %s set for %s (…%s)\n", cr.ID, cr.Provider, cr.Last4)
			return nil
		case "add":
			if *provider == "" || !*keyStdin {
				return usageErr("credential add needs --provider P and --key-stdin")
			}
			if err := knownProvider(d, *provider); err != nil {
				return err
			}
			key, err := readKey(stdin)
			if err != nil {
				return err
			}
			cr, err := svc.CreateCredential(ctx, resolver.CredentialSpec{Name: *name, Provider: *provider, Secret: resolver.NewSecret(key), BaseURL: *baseURL})
			if err != nil {
				return err
			}
			audited(stderr, trail.CredentialCreated(ctx, cr, key))
			fmt.Fprintln(stdout, cr.ID)
			return nil
		case "list":
			crs, err := svc.ListCredentials(ctx)
			if err != nil {
				return err
			}
			if *format == "json" {
				return json.NewEncoder(stdout).Encode(crs)
			}
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tPROVIDER\tBASE URL\tKEY\tSTATE\tCREATED\tLAST USED")
			for _, c := range crs {
				state := "enabled"
				if c.Disabled {
					state = "disabled"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t…%s\t%s\t%s\t%s\n", c.ID, dash(c.Name), c.Provider, dash(c.BaseURL), c.Last4, state, fmtTime(c.CreatedAt), fmtTime(c.LastUsedAt))
			}
			return tw.Flush()
		case "disable", "enable", "delete":
			if *platform || *provider != "" {
				return deletePlatformKey(ctx, svc, trail, *platform, *provider, pos, stdout, stderr)
			}
			id, err := oneID()
			if err != nil {
				return err
			}
			op := map[string]func(context.Context, string) error{"disable": svc.DisableCredential, "enable": svc.EnableCredential, "delete": svc.DeleteCredential}[sub]
			if err := op(ctx, id); err != nil {
				return err
			}
			audited(stderr, trail.CredentialChanged(ctx, sub, id))
			fmt.Fprintf(stdout, "%sd %s\n", strings.TrimSuffix(sub, "e"), id)
			return nil
		case "bind":
			k, err := bindingKey()
			if err != nil {
				return err
			}
			if err := knownBinding(d, k.Dialect, k.Harness); err != nil {
				return err
			}
			cands, err := bindCandidates(credIDs, fallbacks)
			if err != nil {
				return err
			}
			b, err := svc.BindCandidates(ctx, k, cands, resolver.BindOptions{Inactive: *inactive})
			if err != nil {
				return err
			}
			audited(stderr, trail.Bound(ctx, b))
			fmt.Fprintf(stdout, "bound %s at %s for %s (active=%v)\n", candidatesText(b.Credentials), scopeText(k), k.Dialect, b.Active)
			return nil
		case "unbind", "activate", "deactivate":
			k, err := bindingKey()
			if err != nil {
				return err
			}
			switch sub {
			case "unbind":
				err = svc.Unbind(ctx, k)
			default:
				err = svc.SetBindingActive(ctx, k, sub == "activate")
			}
			if err != nil {
				return err
			}
			audited(stderr, trail.BindingChanged(ctx, sub, k))
			fmt.Fprintf(stdout, "%s: %s for %s\n", sub, scopeText(k), k.Dialect)
			return nil
		case "bindings":
			bs, err := svc.ListBindings(ctx, resolver.BindingFilter{CredentialID: *credID, Dialect: *dialect})
			if err != nil {
				return err
			}
			if *format == "json" {
				return json.NewEncoder(stdout).Encode(bs)
			}
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "TIER\tSCOPE\tDIALECT\tHARNESS\tCREDENTIALS\tACTIVE")
			for _, b := range bs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", b.Tier, dash(b.ScopeID), b.Dialect, dash(b.Harness), candidatesText(b.Credentials), b.Active)
			}
			return tw.Flush()
		case "rotate-key":
			if err := svc.RotateKey(ctx, oldKey, d.masterKey); err != nil {
				return err
			}
			audited(stderr, trail.MasterKeyRotated(ctx, oldKey, d.masterKey))
			fmt.Fprintln(stdout, "every credential is now encrypted with the configured master key.\n"+
				"Keep the old key in TOLLGATE_PREVIOUS_MASTER_KEYS until tokens issued before the rotation expire (at most 30 days).")
			return nil
		}
		return usageErr("unknown credential subcommand %q", sub)
	})
}

// deletePlatformKey is "credential delete --platform --provider P". The
// resolver checks the provider, so a key whose provider left the registry
// can still be removed.
func deletePlatformKey(ctx context.Context, svc *resolver.Service, trail audit.Trail, platform bool, provider string, pos []string, stdout, stderr io.Writer) error {
	if !platform || provider == "" || len(pos) != 0 {
		return usageErr("credential delete needs one credential id, or --platform and --provider P")
	}
	cr, err := svc.DeletePlatformKey(ctx, provider)
	if err != nil {
		return err
	}
	audited(stderr, trail.PlatformKeyDeleted(ctx, cr))
	fmt.Fprintf(stdout, "platform key %s of %s deleted\n", cr.ID, cr.Provider)
	return nil
}

// bindCandidates reads bind's --credential and --fallback values: the
// --credential ones at priority 0, the n-th --fallback at priority n, each
// ID optionally followed by :WEIGHT.
func bindCandidates(creds, fallbacks []string) ([]resolver.BindCandidate, error) {
	if len(creds) == 0 {
		return nil, usageErr("credential bind needs --credential ID")
	}
	var out []resolver.BindCandidate
	for prio, group := range append([]string{strings.Join(creds, ",")}, fallbacks...) {
		flagName := "--credential"
		if prio > 0 {
			flagName = "--fallback"
		}
		for _, v := range strings.Split(group, ",") {
			id, w, weighted := strings.Cut(strings.TrimSpace(v), ":")
			c := resolver.BindCandidate{CredentialID: id, Priority: prio, Weight: 1}
			if id == "" {
				return nil, usageErr("%s %q: a credential id is missing", flagName, group)
			}
			if weighted {
				n, err := strconv.Atoi(w)
				if err != nil || n < 1 {
					return nil, usageErr("%s %s: the weight after the colon must be a whole number of at least 1 (a standby goes in a later --fallback)", flagName, v)
				}
				c.Weight = n
			}
			out = append(out, c)
		}
	}
	return out, nil
}

// candidatesText writes a binding's credentials as bind reads them: ids
// of one priority joined by commas (":WEIGHT" unless 1), failover steps by
// " > ".
func candidatesText(cs []resolver.BindCandidate) string {
	var b strings.Builder
	for i, c := range cs {
		switch {
		case i == 0:
		case c.Priority == cs[i-1].Priority:
			b.WriteString(",")
		default:
			b.WriteString(" > ")
		}
		b.WriteString(c.CredentialID)
		if c.Weight != 1 {
			fmt.Fprintf(&b, ":%d", c.Weight)
		}
	}
	return b.String()
}

// viewCandidatesText writes a resolution row's candidates as
// candidatesText does, an unusable one followed by its reason; "-" for a
// binding of one credential, which the row's own columns describe.
func viewCandidatesText(cs []resolver.Candidate) string {
	if len(cs) < 2 {
		return "-"
	}
	bc := make([]resolver.BindCandidate, len(cs))
	for i, c := range cs {
		bc[i] = resolver.BindCandidate{CredentialID: c.CredentialID, Priority: c.Priority, Weight: c.Weight}
		if !c.Usable {
			bc[i].CredentialID += "(" + c.Reason + ")"
		}
	}
	return candidatesText(bc)
}

// Strings registers a repeatable flag, if the synopsis names it, whose
// values are appended to *p.
func (c commandFlags) Strings(p *[]string, name, usage string) {
	if c.names[name] {
		c.fs.Func(name, usage, func(v string) error { *p = append(*p, v); return nil })
	}
}

func scopeText(k resolver.BindingKey) string {
	if k.Tier == resolver.TierPlatform {
		return "platform"
	}
	return k.Tier + " " + k.ScopeID
}

// knownProvider refuses a provider the registry lacks, listing the ones it
// has, before a key is read.
func knownProvider(d *deps, name string) error {
	reg := d.registry.Current()
	if _, err := reg.Provider(name); err == nil {
		return nil
	}
	var names []string
	for _, p := range reg.Providers() {
		names = append(names, p.Name)
	}
	return unknownName("provider", name, names)
}

// knownBinding refuses a dialect or harness the registry lacks, listing
// the ones it has.
func knownBinding(d *deps, dialect, harness string) error {
	reg := d.registry.Current()
	if _, err := reg.Dialect(dialect); err != nil {
		var names []string
		for _, x := range reg.Dialects() {
			names = append(names, x.Name)
		}
		return unknownName("dialect", dialect, names)
	}
	return knownHarness(d, harness)
}

// knownHarness refuses a harness, if one is named, the registry lacks.
func knownHarness(d *deps, harness string) error {
	reg := d.registry.Current()
	if _, err := reg.Harness(harness); harness == "" || err == nil {
		return nil
	}
	var names []string
	for _, x := range reg.Harnesses() {
		names = append(names, x.Name)
	}
	return unknownName("harness", harness, names)
}

func unknownName(kind, name string, known []string) error {
	return usageErr("unknown %s %q: the registry knows %s", kind, name, strings.Join(known, ", "))
}
