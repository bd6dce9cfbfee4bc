package format_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

type run struct {
	start, end int64
	status     format.Status
}

func runs(t *testing.T, img format.Image) []run {
	t.Helper()
	var out []run
	err := format.Walk(img, 0, func(e format.Extent) error {
		if n := len(out); n > 0 && out[n-1].status == e.Status && out[n-1].end == e.Start {
			out[n-1].end = e.End()
			return nil
		}
		if e.HostHole {
			t.Errorf("raw extent %+v marked a hole under a block", e)
		}
		out = append(out, run{e.Start, e.End(), e.Status})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The opener splits an image's data by its host file's holes, one pair
// of lseek calls per run, and walks the map again from its cache.
func TestHostHoles(t *testing.T) {
	path := t.TempDir() + "/h.raw"
	formattest.WriteRuns(t, path, 64<<20+100, 4096, 1<<20, 1<<20+4096, 40<<20)
	img, err := format.Open(path, "raw", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	want := []run{
		{0, 1 << 20, format.Zero},
		{1 << 20, 1<<20 + 8192, format.Data},
		{1<<20 + 8192, 40 << 20, format.Zero},
		{40 << 20, 40<<20 + 4096, format.Data},
		{40<<20 + 4096, img.Size(), format.Zero},
	}
	got := runs(t, img)
	if len(got) != len(want) {
		t.Fatalf("runs %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("run %d: %v, want %v", i, got[i], want[i])
		}
	}
	seeks, _ := format.HostSeeks(img)
	if seeks != 5 {
		t.Errorf("%d runs asked of the filesystem, want 5", seeks)
	}
	runs(t, img)
	if again, _ := format.HostSeeks(img); again != seeks {
		t.Errorf("a second walk asked %d more runs", again-seeks)
	}
	if n, err := format.AllocatedBytes(img); err != nil || n != 12288 {
		t.Errorf("allocated %d, %v; want 12288", n, err)
	}
	for _, off := range []int64{-1, img.Size()} {
		if e, err := img.Extent(off); err == nil {
			t.Errorf("Extent(%d) = %+v, want an error", off, e)
		}
	}
	if e, err := img.Extent(1<<20 + 100); err != nil || e.Status != format.Data || e.End() != 1<<20+8192 || e.Offset != 1<<20+100 {
		t.Errorf("Extent inside a remembered run: %+v, %v", e, err)
	}
}

// The run cache stays bounded however many runs the file has.
func TestHostHolesManyRuns(t *testing.T) {
	path := t.TempDir() + "/many.raw"
	n := int64(format.MaxHostRuns + 500)
	var data []int64
	for i := range n / 2 {
		data = append(data, i*8192)
	}
	formattest.WriteRuns(t, path, n*4096, 4096, data...)
	img, err := format.Open(path, "raw", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := runs(t, img); int64(len(got)) != n {
		t.Fatalf("%d runs, want %d", len(got), n)
	}
	if seeks, cached := format.HostSeeks(img); int64(seeks) != n || cached > format.MaxHostRuns {
		t.Errorf("%d seeks, %d runs cached; want %d and at most %d", seeks, cached, n, format.MaxHostRuns)
	}
}

// A file that shrinks under the reader is an error, not a hole to its
// end: lseek's ENXIO past the new end means nothing there.
func TestHostHolesShrunk(t *testing.T) {
	path := t.TempDir() + "/s.raw"
	formattest.WriteRuns(t, path, 16<<20, 4096, 0, 12<<20)
	img, err := format.Open(path, "raw", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := os.Truncate(path, 8<<20); err != nil {
		t.Fatal(err)
	}
	_, err = img.Extent(10 << 20)
	if err == nil || !strings.Contains(err.Error(), "changed") {
		t.Errorf("extent past the new end: %v", err)
	}
	if err := format.Unchanged(img); err == nil || !strings.Contains(err.Error(), "size") {
		t.Errorf("Unchanged: %v", err)
	}
}

func TestUnchanged(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) (string, format.Image) {
		path := dir + "/" + name
		formattest.WriteRuns(t, path, 1<<20, 4096, 0)
		img, err := format.Open(path, "raw", format.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		if err := format.Unchanged(img); err != nil {
			t.Fatalf("%s before any change: %v", name, err)
		}
		return path, img
	}
	path, img := open("written.raw")
	formattest.WriteFile(t, path, bytes.Repeat([]byte{1}, 1<<20))
	if err := format.Unchanged(img); err == nil || !strings.Contains(err.Error(), "modified") {
		t.Errorf("written in place: %v", err)
	}
	path, img = open("replaced.raw")
	other := dir + "/other.raw"
	formattest.WriteRuns(t, other, 1<<20, 4096, 0)
	if err := os.Rename(other, path); err != nil {
		t.Fatal(err)
	}
	if err := format.Unchanged(img); err == nil || !strings.Contains(err.Error(), "another file") {
		t.Errorf("replaced: %v", err)
	}
}
