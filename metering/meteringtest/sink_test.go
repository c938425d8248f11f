package meteringtest

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

func TestSinkWaitFor(t *testing.T) {
	var s Sink
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() { s.Record(&metering.Record{RequestID: fmt.Sprint("r", i)}) })
	}
	got := s.WaitFor(t, 10, 2*time.Second)
	wg.Wait()
	if len(got) != 10 {
		t.Fatalf("got %d records, want 10", len(got))
	}
	if _, ok := s.ByID("r7"); !ok {
		t.Error("ByID did not find r7")
	}
	s.Reset()
	if s.Len() != 0 {
		t.Errorf("Len after Reset: %d", s.Len())
	}
}

func TestSinkWaitForTimesOut(t *testing.T) {
	var s Sink
	ft := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.WaitFor(ft, 1, 20*time.Millisecond)
	}()
	<-done
	if !ft.failed {
		t.Error("WaitFor did not fail when records never came")
	}
}

// fatalTB records Fatalf instead of stopping the test.
type fatalTB struct {
	testing.TB
	failed bool
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(string, ...any) {
	f.failed = true
	runtime.Goexit() // like t.Fatalf: stop this goroutine
}
