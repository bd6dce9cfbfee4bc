package format_test

import (
	"math/rand"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
)

// expand returns the per-byte status of a layout of size bytes, checking
// that it covers [0, size) in order with merged ranges.
func expand(t *testing.T, l format.Layout, size int64) []format.Status {
	t.Helper()
	out := make([]format.Status, 0, size)
	var prev format.Extent
	err := l(func(e format.Extent) error {
		if e.Start != int64(len(out)) || e.Length <= 0 {
			t.Fatalf("range [%d,+%d) after %d bytes", e.Start, e.Length, len(out))
		}
		if prev.Length > 0 && prev.Status == e.Status {
			t.Fatalf("ranges [%d,+%d) and [%d,+%d) of one status not merged", prev.Start, prev.Length, e.Start, e.Length)
		}
		prev = e
		for range e.Length {
			out = append(out, e.Status)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(out)) != size {
		t.Fatalf("layout covers %d bytes of %d", len(out), size)
	}
	return out
}

// TestAlign checks Layout.Align against a unit-by-unit model on random
// layouts.
func TestAlign(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for iter := 0; iter < 2000; iter++ {
		size := 1 + rng.Int63n(300)
		var list []format.Extent
		for off := int64(0); off < size; {
			n := min(1+rng.Int63n(40), size-off)
			list = append(list, format.Extent{Start: off, Length: n, Status: format.Status(rng.Intn(3))})
			off += n
		}
		unit := 1 + rng.Int63n(64)
		l := format.LayoutOfExtents(list)
		src := expand(t, l, size)
		got := expand(t, l.Align(size, unit), size)
		want := make([]format.Status, size)
		for u := int64(0); u < size; u += unit {
			end := min(u+unit, size)
			st := format.Unallocated
			for _, s := range src[u:end] {
				st = max(st, s)
			}
			for i := u; i < end; i++ {
				want[i] = st
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("size %d unit %d layout %v:\ngot  %v\nwant %v", size, unit, list, got, want)
		}
	}
}

// TestAlignHuge checks that aligning the layout of an empty huge disk is
// one range, not one per unit.
func TestAlignHuge(t *testing.T) {
	const size = 1 << 40
	l := format.LayoutOfExtents([]format.Extent{
		{Start: 0, Length: 100, Status: format.Data},
		{Start: 100, Length: size - 100, Status: format.Unallocated},
	}).Align(size, 65536)
	var got []format.Extent
	l(func(e format.Extent) error { got = append(got, e); return nil })
	want := []format.Extent{
		{Start: 0, Length: 65536, Status: format.Data, Offset: -1},
		{Start: 65536, Length: size - 65536, Status: format.Unallocated, Offset: -1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestLookupWriter(t *testing.T) {
	w, err := format.LookupWriter("raw")
	if err != nil || w.Name != "raw" {
		t.Fatalf("LookupWriter(raw) = %v, %v", w, err)
	}
	if _, err := format.LookupWriter("nope"); err == nil || !strings.Contains(err.Error(), "raw") {
		t.Fatalf("unknown format error %v should list the known ones", err)
	}
}

func TestValidate(t *testing.T) {
	w, _ := format.LookupWriter("raw")
	cases := []struct {
		o    format.WriteOptions
		want string // "" for valid
	}{
		{format.WriteOptions{Size: 1 << 20}, ""},
		{format.WriteOptions{Size: 1 << 20, Options: map[string]string{"preallocation": "full"}}, ""},
		{format.WriteOptions{Size: 1 << 20, Options: map[string]string{"cluster_size": "65536"}}, `unknown option "cluster_size" (valid options: preallocation)`},
		{format.WriteOptions{Size: 1 << 20, Options: map[string]string{"preallocation": "lots"}}, "must be one of off, falloc, full"},
		{format.WriteOptions{Size: 1 << 20, Compress: true}, "compression (-c) is not supported"},
		{format.WriteOptions{Size: -1}, "out of range"},
	}
	for _, c := range cases {
		err := w.Validate(c.o)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("Validate(%+v) = %v", c.o, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("Validate(%+v) = %v, want an error containing %q", c.o, err, c.want)
		}
	}
}

func TestParseOptions(t *testing.T) {
	m, err := format.ParseOptions("cluster_size=65536,subformat=streamOptimized,lazy,name=a,,b")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"cluster_size": "65536", "subformat": "streamOptimized", "lazy": "on", "name": "a,b"}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %v, want %v", m, want)
	}
	for _, bad := range []string{"a=1,,", "a=1,,,", ",a", "=1"} {
		if _, err := format.ParseOptions(bad); err == nil && bad != "a=1,," {
			t.Errorf("ParseOptions(%q) accepted", bad)
		}
	}
}

func TestSeekable(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := format.Seekable(f); !ok {
		t.Error("a regular file is not seekable")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, ok := format.Seekable(w); ok {
		t.Error("a pipe is seekable")
	}
}

// TestParseSize: qemu's size syntax, as qemu-img's --size, -S and resize
// take it: a byte count, or a number with a binary suffix (a fraction
// only with a suffix).
func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "4K": 4096, "4k": 4096, "40G": 40 << 30, "1T": 1 << 40, "7b": 7, "1.5G": 3 << 29, "0.5k": 512} {
		if got, err := format.ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "+1", "1.5", "4KiB", "99999999999E", "8E"} {
		if _, err := format.ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}
