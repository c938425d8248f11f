package metering

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestBucketsMatchUsage: the table names every Usage field once, in field
// order, under its JSON key, and each accessor reaches its own field. A
// tool bucket is a count, never tokens: no input, no token type, and its
// key is omitted when zero.
func TestBucketsMatchUsage(t *testing.T) {
	ty := reflect.TypeFor[Usage]()
	if ty.NumField() != NumBuckets {
		t.Fatalf("Usage has %d fields, Buckets %d", ty.NumField(), NumBuckets)
	}
	for i, b := range Buckets {
		f := ty.Field(i)
		want := b.Name
		if b.Tool != "" {
			want += ",omitempty"
			if b.Input || b.TokenType != "" {
				t.Errorf("tool bucket %q counts as tokens", b.Name)
			}
		}
		if tag := f.Tag.Get("json"); tag != want {
			t.Errorf("bucket %d is %q, field %s has JSON tag %q, want %q", i, b.Name, f.Name, tag, want)
		}
		var u Usage
		*b.Of(&u) = int64(i + 1)
		if got := reflect.ValueOf(u).Field(i).Int(); got != int64(i+1) {
			t.Errorf("bucket %q reaches the wrong field", b.Name)
		}
	}
	u := Usage{1, 2, 3, 4, 5, 6, 7, 8}
	if got := u.InputTotal(); got != 1+2+3+4+5 {
		t.Errorf("InputTotal = %d", got)
	}
	b, _ := json.Marshal(u)
	if string(b) != `{"input_uncached":1,"cache_read":2,"cache_write_5m":3,"cache_write_1h":4,"input_other":5,"output":6,"reasoning":7,"web_search_requests":8}` {
		t.Errorf("JSON: %s", b)
	}
	u.WebSearchRequests = 0
	if b, _ := json.Marshal(u); string(b) != `{"input_uncached":1,"cache_read":2,"cache_write_5m":3,"cache_write_1h":4,"input_other":5,"output":6,"reasoning":7}` {
		t.Errorf("JSON without searches: %s", b)
	}
}

// Summing a Usage allocates nothing: the governed request path calls
// InputTotal and Add on values, and a bucket's field accessor that made
// them escape cost two allocations a request.
func TestUsageSumsDoNotAllocate(t *testing.T) {
	u := Usage{InputUncached: 1, CacheRead: 2, CacheWrite5m: 3, CacheWrite1h: 4, InputOther: 5, Output: 6}
	var sum Usage
	if n := testing.AllocsPerRun(100, func() {
		if u.InputTotal() != 15 {
			t.Fatal("InputTotal")
		}
		sum.Add(&u)
	}); n != 0 {
		t.Fatalf("%v allocations per InputTotal and Add, want 0", n)
	}
}
