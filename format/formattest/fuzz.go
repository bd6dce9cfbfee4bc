package formattest

import (
	"bytes"
	"encoding/binary"
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
	return ReadFile(t, filepath.Join(dir, name))
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
		d := ReadFile(t, filepath.Join(dir, e.Name()))
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

// SparseSeed is a seed encoding for images of megabytes of mostly zeros,
// too large for seed files as they are: Magic, then records of a uint32
// file offset, a uint16 length and that many bytes, little-endian; later
// records win, and records ending past Limit are dropped.
type SparseSeed struct {
	Magic string
	Limit int64
	// Compact keeps the runs of Grain-byte units that are not all zero,
	// at most Run bytes a record.
	Grain, Run int
}

// SparseFile is the file a sparse seed describes, without materialising
// its zeros.
type SparseFile struct {
	recs []sparseRec
	size int64
	name string
}

type sparseRec struct {
	off int64
	b   []byte
}

// File returns the file data describes, named name; nil when data is not
// a sparse seed.
func (s SparseSeed) File(data []byte, name string) *SparseFile {
	rest, ok := bytes.CutPrefix(data, []byte(s.Magic))
	if !ok {
		return nil
	}
	f := &SparseFile{name: name}
	for len(rest) >= 6 {
		off := int64(binary.LittleEndian.Uint32(rest))
		n := int(binary.LittleEndian.Uint16(rest[4:]))
		rest = rest[6:]
		n = min(n, len(rest))
		if off+int64(n) <= s.Limit {
			f.recs = append(f.recs, sparseRec{off, rest[:n]})
			f.size = max(f.size, off+int64(n))
		}
		rest = rest[n:]
	}
	return f
}

// Expand materialises a sparse seed; nil when data is not one.
func (s SparseSeed) Expand(data []byte) []byte {
	f := s.File(data, "")
	if f == nil {
		return nil
	}
	out := make([]byte, f.size)
	f.ReadAt(out, 0)
	return out
}

// WriteSeeds writes seeds into dir as WriteFiles does, each compacted.
func (s SparseSeed) WriteSeeds(t testing.TB, dir string, seeds map[string][]byte) {
	t.Helper()
	compact := make(map[string][]byte, len(seeds))
	for name, b := range seeds {
		compact[name] = s.Compact(b)
	}
	WriteFiles(t, dir, compact)
}

// Compact is the inverse of Expand: the runs of b that are not zero, and
// its length (a record of its last byte).
func (s SparseSeed) Compact(b []byte) []byte {
	out := []byte(s.Magic)
	put := func(off int, p []byte) {
		out = binary.LittleEndian.AppendUint32(out, uint32(off))
		out = binary.LittleEndian.AppendUint16(out, uint16(len(p)))
		out = append(out, p...)
	}
	start := -1
	for off := 0; ; off += s.Grain {
		nonzero := off < len(b) && !format.IsZero(b[off:min(off+s.Grain, len(b))])
		if start >= 0 && (!nonzero || off-start >= s.Run) {
			put(start, b[start:min(off, len(b))])
			start = -1
		}
		if nonzero && start < 0 {
			start = off
		}
		if off >= len(b) {
			break
		}
	}
	put(len(b)-1, b[len(b)-1:])
	return out
}

func (f *SparseFile) Size() int64  { return f.size }
func (f *SparseFile) Name() string { return f.name }

// ReadAt reads the file's bytes: zeros but where a record says.
func (f *SparseFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= f.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.size-off))
	clear(p[:n])
	for _, r := range f.recs {
		lo, hi := max(r.off, off), min(r.off+int64(len(r.b)), off+int64(n))
		if lo < hi {
			copy(p[lo-off:hi-off], r.b[lo-r.off:hi-r.off])
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
