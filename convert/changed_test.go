package convert_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
)

// sparseRaw writes a raw file of size bytes holding 1 MiB of 0x55 at
// each offset in data, holes elsewhere.
func sparseRaw(t *testing.T, path string, size int64, data ...int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range data {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0x55}, 1<<20), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// A raw source that shrinks while it is converted is an error: the data
// past its new end must not turn into zeros in an output that succeeds.
func TestSourceShrinks(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	sparseRaw(t, src, 64<<20, 0, 48<<20)
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
	sparseRaw(t, src, 8<<20, 0)
	// An old time: the write below gets a new one even within the
	// filesystem clock's tick.
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(src, old, old); err != nil {
		t.Fatal(err)
	}
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
