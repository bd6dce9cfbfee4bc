package convert

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/diskimg/diskimg/format/formattest"
)

func TestParseCache(t *testing.T) {
	for mode, want := range map[string]Cache{
		"": {}, "writeback": {}, "unsafe": {NoFlush: true}, "writethrough": {Sync: true},
		"none": {Direct: true}, "directsync": {Direct: true, Sync: true},
	} {
		if got, err := ParseCache(mode); err != nil || got != want {
			t.Errorf("ParseCache(%q) = %+v, %v; want %+v", mode, got, err, want)
		}
	}
	if _, err := ParseCache("fast"); err == nil {
		t.Error("ParseCache(fast) accepted")
	}
}

// TestCacheFlush: the output is fsynced before it is renamed, except with
// -t unsafe.
func TestCacheFlush(t *testing.T) {
	calls := 0
	defer func(f func(*os.File) error) { syncFile = f }(syncFile)
	syncFile = func(f *os.File) error { calls++; return f.Sync() }
	for _, tc := range []struct {
		mode  string
		syncs int
	}{{"writeback", 1}, {"unsafe", 0}, {"none", 1}, {"writethrough", 1}} {
		calls = 0
		cache, _ := ParseCache(tc.mode)
		path := filepath.Join(t.TempDir(), "out")
		out, err := CreateOutput(path, OutputOptions{Cache: cache})
		if err != nil {
			t.Fatal(err)
		}
		out.Target.Write([]byte("data"))
		if err := out.Commit(); err != nil {
			t.Fatal(err)
		}
		if calls != tc.syncs {
			t.Errorf("-t %s: %d fsyncs, want %d", tc.mode, calls, tc.syncs)
		}
		if b, _ := os.ReadFile(path); string(b) != "data" {
			t.Errorf("-t %s: output %q", tc.mode, b)
		}
	}
}

// writePattern writes want through a Target at unaligned and aligned
// offsets, from aligned and unaligned memory, by WriteAt and by Seek and
// Write, and sets the length with Truncate.
func writePattern(t *testing.T, out *Output, want []byte) {
	t.Helper()
	type wr interface {
		io.Writer
		io.WriterAt
		io.Seeker
		Truncate(int64) error
	}
	w := out.Target.(wr)
	const mid = 8192 + 3*4096 // the end of the aligned pieces
	pieces := [][2]int{{0, 100}, {100, 8192 - 100}, {8192, 3 * 4096}, {mid + 1, 1 << 20}, {mid, 1}, {mid + 1 + 1<<20, len(want) - (mid + 1 + 1<<20)}}
	for i, p := range pieces {
		data := want[p[0] : p[0]+p[1]]
		if i == 3 {
			// Unaligned memory for an aligned-length middle.
			data = append(make([]byte, 0, len(data)+7)[:7], data...)[7:]
		}
		if i%2 == 0 {
			if _, err := w.WriteAt(data, int64(p[0])); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := w.Seek(int64(p[0]), io.SeekStart); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Truncate(int64(len(want))); err != nil {
		t.Fatal(err)
	}
}

// TestDirectOutput writes an output with -t none: the O_DIRECT descriptor
// is open on filesystems that take it, and the file holds exactly what
// was written, with unaligned edges and unaligned memory.
func TestDirectOutput(t *testing.T) {
	want := make([]byte, 8192+3*4096+1+1<<20+5000)
	rand.New(rand.NewSource(1)).Read(want)
	path := filepath.Join(t.TempDir(), "out")
	out, err := CreateOutput(path, OutputOptions{Cache: Cache{Direct: true}})
	if err != nil {
		t.Fatal(err)
	}
	if out.fo == nil || out.fo.direct == nil {
		t.Skip("this filesystem refuses O_DIRECT; TestDirectOutputFallback covers the page cache path")
	}
	flags, err := unix.FcntlInt(out.fo.direct.Fd(), unix.F_GETFL, 0)
	if err != nil || flags&syscall.O_DIRECT == 0 {
		t.Fatalf("direct descriptor flags %#x, %v: no O_DIRECT", flags, err)
	}
	writePattern(t, out, want)
	if out.fo.direct == nil {
		t.Fatal("O_DIRECT writes were refused after the open succeeded")
	}
	if err := out.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Fatalf("output differs (%d vs %d bytes)", len(got), len(want))
	}
}

// TestDirectOutputFallback: a filesystem that refuses O_DIRECT gets the
// same file through the page cache.
func TestDirectOutputFallback(t *testing.T) {
	defer func(f func(string, int) (*os.File, error)) { openDirect = f }(openDirect)
	openDirect = func(string, int) (*os.File, error) { return nil, syscall.EINVAL }
	want := make([]byte, 8192+3*4096+1+1<<20+5000)
	rand.New(rand.NewSource(2)).Read(want)
	path := filepath.Join(t.TempDir(), "out")
	out, err := CreateOutput(path, OutputOptions{Cache: Cache{Direct: true, Sync: true}})
	if err != nil {
		t.Fatal(err)
	}
	writePattern(t, out, want)
	if err := out.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Fatal("output differs")
	}
}

// TestDirectFile reads a file of odd length with -T none at odd offsets
// and lengths, from several goroutines, and through the fallback.
func TestDirectFile(t *testing.T) {
	want := make([]byte, 3<<20+1234)
	rand.New(rand.NewSource(3)).Read(want)
	path := filepath.Join(t.TempDir(), "img")
	formattest.WriteFile(t, path, want)
	reads := 200 // each goroutine's, up to 3 MiB each: O_DIRECT reads the disk
	if testing.Short() {
		reads = 40
	}
	check := func(t *testing.T, direct bool) {
		f, err := OpenDirect(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.(*DirectFile).Close()
		if got := f.(*DirectFile).Direct(); got != direct {
			if direct {
				t.Skip("this filesystem refuses O_DIRECT")
			}
			t.Fatalf("Direct() = %v", got)
		}
		if f.Size() != int64(len(want)) {
			t.Fatalf("Size %d", f.Size())
		}
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewSource(int64(g)))
				for range reads {
					off := rng.Int63n(int64(len(want)) + 100)
					buf := make([]byte, rng.Intn(3<<20))
					n, err := f.ReadAt(buf, off)
					end := min(off+int64(len(buf)), int64(len(want)))
					wantN := int(max(end-off, 0))
					if n != wantN || (n < len(buf) && err != io.EOF) || (n == len(buf) && err != nil) {
						t.Errorf("ReadAt(%d bytes at %d) = %d, %v; want %d", len(buf), off, n, err, wantN)
						return
					}
					if n > 0 && !bytes.Equal(buf[:n], want[off:end]) {
						t.Errorf("ReadAt(%d bytes at %d): wrong bytes", len(buf), off)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	t.Run("direct", func(t *testing.T) { check(t, true) })
	t.Run("fallback", func(t *testing.T) {
		defer func(f func(string, int) (*os.File, error)) { openDirect = f }(openDirect)
		openDirect = func(string, int) (*os.File, error) { return nil, syscall.EINVAL }
		check(t, false)
	})
}
