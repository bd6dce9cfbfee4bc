package vhdx

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// A VHDX file is at least 3 MiB of mostly zeros (MiB-aligned header
// section, BAT and metadata regions), too large for seed files. Seeds are
// kept in a sparse form instead: sparseMagic, then records of a uint32
// file offset, a uint16 length and that many bytes, all little-endian.
// The fuzz target opens a sparse input through a sparse file, and any
// other input as it is.
const (
	sparseMagic = "vhdx-sparse\n"
	sparseLimit = 16 << 20 // largest expanded file: qemu starts data at 8 MiB
)

// sparseFile is the file a sparse seed describes, without materialising
// its megabytes of zeros.
type sparseFile struct {
	recs []sparseRec
	size int64
}

type sparseRec struct {
	off int64
	b   []byte
}

// parseSparse returns the file a sparse seed describes, or nil.
func parseSparse(data []byte) *sparseFile {
	rest, ok := bytes.CutPrefix(data, []byte(sparseMagic))
	if !ok {
		return nil
	}
	f := &sparseFile{}
	for len(rest) >= 6 {
		off := int64(binary.LittleEndian.Uint32(rest))
		n := int(binary.LittleEndian.Uint16(rest[4:]))
		rest = rest[6:]
		n = min(n, len(rest))
		if off+int64(n) <= sparseLimit {
			f.recs = append(f.recs, sparseRec{off, rest[:n]})
			f.size = max(f.size, off+int64(n))
		}
		rest = rest[n:]
	}
	return f
}

func (f *sparseFile) Size() int64  { return f.size }
func (f *sparseFile) Name() string { return "/nonexistent/fuzz.vhdx" }

func (f *sparseFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= f.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.size-off))
	clear(p[:n])
	for _, r := range f.recs { // later records win, as in expand
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

// expand materialises a sparse seed, or returns nil.
func expand(data []byte) []byte {
	f := parseSparse(data)
	if f == nil {
		return nil
	}
	out := make([]byte, f.size)
	f.ReadAt(out, 0)
	return out
}

// exerciseLayer exercises the image of f alone: the fuzzer opens no
// other file, so a differencing image's own blocks and sector bitmaps are
// read without its parent.
func exerciseLayer(t *testing.T, f format.File) {
	img, err := Open(f, format.NewOpener(format.Policy{Untrusted: true}))
	if err != nil {
		return
	}
	defer img.Close()
	img.Backing()
	formattest.ExerciseImage(t, img)
}

// compact is the inverse of expand: it keeps the runs of b that are not
// zero, at a 16-byte grain, and its length.
func compact(b []byte) []byte {
	const grain = 16
	out := []byte(sparseMagic)
	put := func(off int, p []byte) {
		out = binary.LittleEndian.AppendUint32(out, uint32(off))
		out = binary.LittleEndian.AppendUint16(out, uint16(len(p)))
		out = append(out, p...)
	}
	zero := make([]byte, grain)
	start := -1
	for off := 0; off <= len(b); off += grain {
		nonzero := off < len(b) && !bytes.Equal(b[off:min(off+grain, len(b))], zero[:min(grain, len(b)-off)])
		switch {
		case nonzero && start < 0:
			start = off
		case !nonzero && start >= 0 || nonzero && off-start >= 4096:
			put(start, b[start:off])
			start = -1
			if nonzero {
				start = off
			}
		}
	}
	put(len(b)-1, b[len(b)-1:]) // the file's length
	return out
}

func FuzzVhdx(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/vhdx")
	f.Fuzz(func(t *testing.T, data []byte) {
		if f := parseSparse(data); f != nil {
			exerciseLayer(t, f)
			return
		}
		formattest.Exercise(t, data, Name)
		exerciseLayer(t, &formattest.MemFile{Data: data, Path: "/nonexistent/fuzz.vhdx"})
	})
}

// TestSeeds checks that the sparse seeds expand to images that open, so
// the fuzzer starts from valid files. With VHDX_WRITE_SEEDS=1 it first
// regenerates them with qemu-img.
func TestSeeds(t *testing.T) {
	dir := "../../testdata/vhdx"
	if os.Getenv("VHDX_WRITE_SEEDS") == "1" {
		writeSeeds(t, dir)
	}
	for _, e := range formattest.Seeds(t, dir) {
		b := expand(e.Data)
		if b == nil {
			continue
		}
		img, err := openBytes(b)
		if filepath.Ext(e.Name) == ".bad" {
			if err == nil {
				img.Close()
				t.Errorf("%s opened; it is meant to be refused", e.Name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", e.Name, err)
			continue
		}
		if err := format.Walk(img, 0, func(format.Extent) error { return nil }); err != nil {
			t.Errorf("%s: %v", e.Name, err)
		}
		img.Close()
	}
}

func writeSeeds(t *testing.T, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), compact(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	small := func(opts string) []byte {
		return makeImage(t, opts, "4M", "write -P 0x5a 1M 64", "write -P 0x6b 3M 64")
	}
	write("dynamic-1M.sparse", small("subformat=dynamic,block_size=1M"))
	write("dynamic-nozero-1M.sparse", small("subformat=dynamic,block_size=1M,block_state_zero=off"))
	b := small("subformat=dynamic,block_size=1M")
	writeLogEntry(t, b, true)
	write("log-replay.sparse.bad", b)
	write("differencing-1M.sparse", diffSeed(t))
}
