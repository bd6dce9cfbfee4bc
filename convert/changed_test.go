package convert_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// A raw source that shrinks while it is converted is an error: the data
// past its new end must not turn into zeros in an output that succeeds.
func TestSourceShrinks(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.WriteRuns(t, src, 64<<20, 1<<20, 0, 48<<20)
	img := open(t, src)
	var once sync.Once
	opts := convert.Options{Workers: 1, InFlight: 2, ChunkSize: 64 << 10, Progress: func(done, total int64) {
		// After the first chunk: the map past 1 MiB is not read yet.
		once.Do(func() {
			if err := os.Truncate(src, 32<<20); err != nil {
				t.Error(err)
			}
		})
	}}
	out, err := convert.CreateOutput(filepath.Join(dir, "out.raw"), convert.OutputOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Abort()
	_, err = convert.Convert(context.Background(), img, rawWriter(t), out.Target, opts)
	if err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("converting a source that shrank: %v, want an error saying it changed", err)
	}
}

// A source whose modification time changes during the run (written in
// place, same size) is an error too.
func TestSourceModified(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.WriteRuns(t, src, 8<<20, 1<<20, 0)
	img := open(t, src)
	if err := format.Unchanged(img); err != nil {
		t.Fatalf("before any change: %v", err)
	}
	f, err := os.OpenFile(src, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 4<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := convert.CreateOutput(filepath.Join(dir, "out.raw"), convert.OutputOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Abort()
	_, err = convert.Convert(context.Background(), img, rawWriter(t), out.Target, convert.Options{})
	if err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("converting a source modified since it was opened: %v", err)
	}
}
