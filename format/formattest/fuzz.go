package formattest

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
)

// MemFile is an in-memory format.File, for fuzzing and hand-made images.
type MemFile struct {
	Data []byte
	Path string
}

func (m *MemFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= int64(len(m.Data)) {
		return 0, io.EOF
	}
	n := copy(p, m.Data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m *MemFile) Size() int64  { return int64(len(m.Data)) }
func (m *MemFile) Name() string { return m.Path }

// AddSeeds adds every file under dir (such as testdata/qcow2) to f's corpus.
func AddSeeds(f *testing.F, dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err == nil && len(data) <= 4<<20 {
			f.Add(data)
		}
	}
}

// FuzzOpen fuzzes the reader of format fmtName (Exercise), starting from
// the seeds in dir.
func FuzzOpen(f *testing.F, fmtName, dir string) {
	AddSeeds(f, dir)
	f.Fuzz(func(t *testing.T, data []byte) { Exercise(t, data, fmtName) })
}

// Seed is a file of a seed directory.
type Seed struct {
	Name string
	Data []byte
}

// ReadSeed returns the bytes of the seed file name in dir.
func ReadSeed(t testing.TB, dir, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Seeds returns the files in dir (such as testdata/vhdx) in name order;
// a directory without any fails the test.
func Seeds(t testing.TB, dir string) []Seed {
	t.Helper()
	ents, err := os.ReadDir(dir)
	var seeds []Seed
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		d, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, Seed{e.Name(), d})
	}
	if len(seeds) == 0 {
		t.Fatalf("no seeds in %s: %v", dir, err)
	}
	return seeds
}

// Exercise opens data as format fmtName under the strictest policy and
// uses every part of the Image interface a little (ExerciseImage). It
// must return without panicking, hanging or allocating without bound;
// errors are fine.
func Exercise(t testing.TB, data []byte, fmtName string) {
	f := &MemFile{Data: data, Path: filepath.Join(t.TempDir(), "fuzz.img")}
	img, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(f, fmtName)
	if err != nil {
		return
	}
	defer img.Close()
	ExerciseImage(t, img)
}

// ExerciseImage uses every part of an open image's interface a little:
// Info, the extent map (a bounded number of extents, checked for
// consistency) with a read of each data extent, and reads at its start,
// middle and end. A fuzz target of a driver whose images name other
// files (a differencing layer) calls it on the driver's own image, which
// the untrusted policy would not open.
func ExerciseImage(t testing.TB, img format.Image) {
	size := img.Size()
	if size < 0 {
		t.Fatalf("negative virtual size %d", size)
	}
	img.Info()
	off := int64(0)
	for i := 0; i < 1000 && off < size; i++ {
		e, err := img.Extent(off)
		if err != nil {
			break
		}
		if e.Start != off || e.Length <= 0 || e.Length > size-off {
			t.Fatalf("Extent(%d) = [%d,+%d) in a disk of %d bytes", off, e.Start, e.Length, size)
		}
		if e.Status == format.Data {
			buf := make([]byte, min(e.Length, 64<<10))
			img.ReadAt(buf, e.Start)
		}
		off = e.End()
	}
	buf := make([]byte, 4096)
	for _, o := range []int64{0, size / 2, size - 1} {
		if o >= 0 {
			n, _ := img.ReadAt(buf, o)
			if n > len(buf) || n < 0 {
				t.Fatalf("ReadAt returned %d", n)
			}
		}
	}
}
