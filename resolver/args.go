package resolver

import (
	"errors"
	"fmt"
	"strings"

	"github.com/tollgate/tollgate/registry"
)

// argError is a refusal of a call's arguments. It lists every problem, so
// a caller fixes them in one round instead of one per attempt, and wraps
// ErrInvalidArgument plus any more specific sentinel (an unknown registry
// name, ErrHTTPBaseURL) for errors.Is. Each problem names its field and
// never holds a secret.
type argError struct {
	problems []string
	is       []error
}

func (e *argError) Error() string {
	return ErrInvalidArgument.Error() + ": " + strings.Join(e.problems, "; ")
}

func (e *argError) Unwrap() []error { return append([]error{ErrInvalidArgument}, e.is...) }

// invalid is an argError with one problem.
func invalid(format string, args ...any) *argError {
	return &argError{problems: []string{fmt.Sprintf(format, args...)}}
}

// argProblems collects the problems of one call.
type argProblems struct{ e argError }

func (p *argProblems) addf(format string, args ...any) {
	p.e.problems = append(p.e.problems, fmt.Sprintf(format, args...))
}

// add merges err, the result of a check, when it is not nil.
func (p *argProblems) add(err error) {
	if err == nil {
		return
	}
	var ae *argError
	if errors.As(err, &ae) {
		p.e.problems = append(p.e.problems, ae.problems...)
		p.e.is = append(p.e.is, ae.is...)
		return
	}
	p.e.problems = append(p.e.problems, err.Error())
	p.e.is = append(p.e.is, err)
}

// unknown records a name the registry does not know, with the names it
// does: the caller's next attempt should not be a guess.
func (p *argProblems) unknown(field, name string, sentinel error, known []string) {
	if name == "" {
		p.addf("%s is required (one of %s)", field, strings.Join(known, ", "))
	} else {
		p.addf("%s %q is not known here (known: %s)", field, name, strings.Join(known, ", "))
	}
	p.e.is = append(p.e.is, sentinel)
}

// err returns nil when nothing was added.
func (p *argProblems) err() error {
	if len(p.e.problems) == 0 {
		return nil
	}
	e := p.e
	return &e
}

// checkProvider adds a problem unless name is a provider of reg.
func (p *argProblems) checkProvider(reg *registry.Registry, name string) *registry.Provider {
	pr, err := reg.Provider(name)
	if err != nil {
		p.unknown("provider", name, err, names(reg.Providers(), func(x *registry.Provider) string { return x.Name }))
	}
	return pr
}

// checkHarness adds a problem unless name is a harness of reg.
func (p *argProblems) checkHarness(reg *registry.Registry, name string) *registry.Harness {
	h, err := reg.Harness(name)
	if err != nil {
		p.unknown("harness", name, err, names(reg.Harnesses(), func(x *registry.Harness) string { return x.Name }))
	}
	return h
}

// checkDialect adds a problem unless name is a dialect of reg.
func (p *argProblems) checkDialect(reg *registry.Registry, name string) bool {
	if _, err := reg.Dialect(name); err != nil {
		p.unknown("dialect", name, err, names(reg.Dialects(), func(x *registry.Dialect) string { return x.Name }))
		return false
	}
	return true
}

func names[T any](xs []T, name func(T) string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = name(x)
	}
	return out
}
