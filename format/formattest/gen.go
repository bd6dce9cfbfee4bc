package formattest

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
)

// Content names a pattern of guest data for a generated image.
type Content string

const (
	Empty  Content = "empty"  // no data at all
	Sparse Content = "sparse" // a few runs of data, at cluster edges, odd offsets and the last byte
	Dense  Content = "dense"  // random data everywhere
	Zeros  Content = "zeros"  // written zeros: data that is all zero
)

// WriteRuns writes a raw file of size bytes holding n bytes of 0x55 at
// each offset in data and holes elsewhere, with its modification time an
// hour back: a write later in the test gives it a new one, even within
// the filesystem clock's tick.
func WriteRuns(t testing.TB, path string, size, n int64, data ...int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range data {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0x55}, int(n)), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
}

// MakeRaw writes a raw image of size bytes with content c to path. Its data
// is deterministic, so a failure reproduces.
func MakeRaw(t testing.TB, path string, size int64, c Content) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(size))
	write := func(off, n int64, random bool) {
		if off < 0 || off >= size {
			return
		}
		n = min(n, size-off)
		buf := make([]byte, n)
		if random {
			rng.Read(buf)
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	switch c {
	case Empty:
	case Dense:
		for off := int64(0); off < size; off += 1 << 20 {
			write(off, 1<<20, true)
		}
	case Zeros:
		for off := int64(0); off < size; off += 1 << 20 {
			write(off, 1<<20, false)
		}
	case Sparse:
		// Runs chosen to straddle 512 B, 4 KiB, 64 KiB and 2 MiB boundaries.
		for _, r := range [][2]int64{
			{0, 1000}, {4095, 2}, {65536 - 100, 300}, {3 << 20, 70000},
			{(2 << 20) - 512, 1024}, {size / 2, 12345}, {size - 1, 1},
		} {
			write(r[0], r[1], true)
		}
		// A run of written zeros between data, which must read back as zeros.
		write(5<<20, 65536, false)
	default:
		t.Fatalf("unknown content %q", c)
	}
}

// WriteSource writes a raw benchmark source of size bytes to path, a MiB
// at a time: fill(buf, off) makes the MiB at off, or, when fill is nil,
// random data (seed 1).
func WriteSource(t testing.TB, path string, size int64, fill func(buf []byte, off int64)) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fill == nil {
		rng := rand.New(rand.NewSource(1))
		fill = func(buf []byte, _ int64) { rng.Read(buf) }
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		fill(buf, off)
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
}

// Convert makes an image of format fmt at dst from the raw file src with
// qemu-img, passing extra arguments (such as "-o", "cluster_size=512" or
// "-c") before the file names.
func Convert(t testing.TB, src, dst, fmt string, extra ...string) {
	t.Helper()
	args := append([]string{"convert", "-f", "raw", "-O", fmt}, extra...)
	settled(t, dst, func() { Qemu(t, append(args, src, dst)...) })
}

// settled runs qemu-img (in run) to make dst, then flushes every file it
// wrote: dst and the new files beside it (a VMDK's extent files). qemu-img
// does not sync, and tests compare "actual-size", which the filesystem may
// otherwise change by a block of its own metadata between qemu-img's stat
// and ours (seen as a 4 KiB difference on a monolithicFlat extent).
func settled(t testing.TB, dst string, run func()) {
	t.Helper()
	dir := filepath.Dir(dst)
	before := map[string]bool{}
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			before[e.Name()] = true
		}
	}
	run()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if path := filepath.Join(dir, e.Name()); e.Type().IsRegular() && (!before[e.Name()] || path == filepath.Clean(dst)) {
			settle(t, path)
		}
	}
}

func settle(t testing.TB, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// Create makes an empty image with qemu-img create.
func Create(t testing.TB, dst, fmt, size string, extra ...string) {
	t.Helper()
	args := append([]string{"create", "-q", "-f", fmt}, extra...)
	settled(t, dst, func() { Qemu(t, append(args, dst, size)...) })
}

// Generate makes an image of format fmt with the given size and content in
// dir and returns its path.
func Generate(t testing.TB, dir, name, fmt string, size int64, c Content, extra ...string) string {
	t.Helper()
	src := filepath.Join(dir, name+".src.raw")
	MakeRaw(t, src, size, c)
	dst := filepath.Join(dir, name+"."+fmt)
	Convert(t, src, dst, fmt, extra...)
	os.Remove(src)
	return dst
}

// BenchOpenEmpty times opening the empty image at path (as format name, or
// probed when name is ""), its info and a walk of its whole extent map:
// metadata time only, what converting an empty disk costs before its first
// byte. It fails unless the map has 1 to maxExtents extents.
func BenchOpenEmpty(b *testing.B, path, name string, maxExtents int) {
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		img, err := format.Open(path, name, format.Policy{})
		if err != nil {
			b.Fatal(err)
		}
		img.Info()
		n := 0
		if err := format.Walk(img, 0, func(format.Extent) error { n++; return nil }); err != nil {
			b.Fatal(err)
		}
		if n < 1 || n > maxExtents {
			b.Fatalf("%d extents in an empty image, want 1 to %d", n, maxExtents)
		}
		img.Close()
	}
}

// CreateEmpty makes an empty image of the given size with qemu-img
// create in a temporary directory and returns its path.
func CreateEmpty(b *testing.B, fmt, size string, extra ...string) string {
	path := filepath.Join(b.TempDir(), "empty."+fmt)
	Create(b, path, fmt, size, extra...)
	return path
}
