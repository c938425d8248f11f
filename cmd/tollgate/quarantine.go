package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/tollgate/tollgate/metering/ledger"
)

// cmdImportQuarantine replays the spool's quarantine.jsonl into the
// database once what made the store refuse its records is fixed. It exits
// 1 while some record is still refused, so a script sees it.
func cmdImportQuarantine(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlags("usage import-quarantine", stderr)
	o.bind(fs)
	o.stringVar(fs, &o.Spool, "spool", "TOLLGATE_SPOOL", "./data/spool", "usage spool `directory` holding quarantine.jsonl", nil)
	f := newCommandFlags(fs)
	dryRun := f.Bool("dry-run", "report what would be imported; change nothing")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("usage import-quarantine takes no arguments")
	}
	return withDeps(ctx, &o, stderr, func(d *deps) error {
		st, err := ledger.OpenStore(ctx, d.db)
		if err != nil {
			return err
		}
		rep, err := ledger.ImportQuarantine(ctx, o.Spool, st, *dryRun)
		for _, r := range rep.Refused {
			fmt.Fprintf(stdout, "line %d %s: %s\n", r.Line, dash(r.RequestID), r.Reason)
		}
		if rep.DryRun {
			fmt.Fprintf(stdout, "dry run: would import %d, already present %d, unreadable %d; %s unchanged\n", rep.Imported, rep.Present, len(rep.Refused), rep.File)
		} else {
			fmt.Fprintf(stdout, "imported %d, already present %d, still refused %d", rep.Imported, rep.Present, len(rep.Refused))
			if len(rep.Refused) > 0 {
				fmt.Fprintf(stdout, " (kept in %s)", rep.File)
			}
			fmt.Fprintln(stdout)
		}
		if err != nil {
			return err
		}
		if len(rep.Refused) > 0 && !rep.DryRun {
			return &exitError{code: 1, err: errors.New("some quarantined records are still refused: fix the cause and run it again")}
		}
		return nil
	})
}
