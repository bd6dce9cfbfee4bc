package zvhd2

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	"github.com/diskimg/diskimg/format/internal/vhdspec/vhdspectest"
)

// Every ZVHD2 file with data holds a 512 KiB index segment, mostly zeros:
// too large for a seed. Seeds are kept in a sparse form instead:
// sparseMagic, then records of a uint32 file offset, a uint16 length and
// that many bytes, little-endian. The fuzz target runs both the input as
// it is and its expansion.
const (
	sparseMagic = "zvhd2-sparse\n"
	sparseLimit = 8 << 20 // largest expanded file
)

func expand(data []byte) []byte {
	rest, ok := bytes.CutPrefix(data, []byte(sparseMagic))
	if !ok {
		return nil
	}
	type rec struct {
		off int64
		b   []byte
	}
	var recs []rec
	var size int64
	for len(rest) >= 6 {
		off := int64(binary.LittleEndian.Uint32(rest))
		n := int(binary.LittleEndian.Uint16(rest[4:]))
		rest = rest[6:]
		n = min(n, len(rest))
		if off+int64(n) <= sparseLimit {
			recs = append(recs, rec{off, rest[:n]})
			size = max(size, off+int64(n))
		}
		rest = rest[n:]
	}
	out := make([]byte, size)
	for _, r := range recs {
		copy(out[r.off:], r.b)
	}
	return out
}

// compact keeps the non-zero 512-byte sectors of b and its length.
func compact(b []byte) []byte {
	out := []byte(sparseMagic)
	put := func(off int, p []byte) {
		out = binary.LittleEndian.AppendUint32(out, uint32(off))
		out = binary.LittleEndian.AppendUint16(out, uint16(len(p)))
		out = append(out, p...)
	}
	zero := make([]byte, 512)
	for off := 0; off < len(b); off += 512 {
		s := b[off:min(off+512, len(b))]
		if !bytes.Equal(s, zero[:len(s)]) {
			put(off, s)
		}
	}
	put(len(b)-1, b[len(b)-1:])
	return out
}

// fuzzExpanded fuzzes fn on the seeds' mutations, each as it is and
// expanded.
func fuzzExpanded(f *testing.F, fn func(t *testing.T, data []byte)) {
	formattest.AddSeeds(f, "../../testdata/zvhd2")
	f.Fuzz(func(t *testing.T, data []byte) {
		fn(t, data)
		if b := expand(data); b != nil {
			fn(t, b)
		}
	})
}

func FuzzZVHD2(f *testing.F) {
	fuzzExpanded(f, func(t *testing.T, data []byte) { formattest.Exercise(t, data, Name) })
}

// FuzzCheck runs the check, on the opened image and through CheckFile.
func FuzzCheck(f *testing.F) {
	fuzzExpanded(f, func(t *testing.T, data []byte) { vhdspectest.Exercise(t, Name, data) })
}

// TestSeeds checks that the seeds expand to images that open and read, so
// the fuzzer starts from valid files. With ZVHD2_WRITE_SEEDS=1 it first
// regenerates them from the reference vectors.
func TestSeeds(t *testing.T) {
	dir := "../../testdata/zvhd2"
	if os.Getenv("ZVHD2_WRITE_SEEDS") == "1" {
		writeSeeds(t, dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		b := expand(data)
		if b == nil {
			continue
		}
		n++
		img, err := openBytes(b)
		if err != nil {
			t.Errorf("%s: %v", e.Name(), err)
			continue
		}
		if err := format.Walk(img, 0, func(format.Extent) error { return nil }); err != nil {
			t.Errorf("%s: %v", e.Name(), err)
		}
		if err := openAndRead(b); err != nil {
			t.Errorf("%s: %v", e.Name(), err)
		}
		img.Close()
	}
	if n == 0 {
		t.Errorf("no seeds in %s", dir)
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
	write("t2.sparse", vhdspectest.ReadVector(t, "t2.zvhd2"))
	write("t3.sparse", vhdspectest.ReadVector(t, "t3.zvhd2"))
	write("t4.sparse", vhdspectest.ReadVector(t, "t4.zvhd2"))
	blocks := map[uint32][]byte{0: []byte("hello"), 2: bytes.Repeat([]byte{1, 2, 3}, 300)}
	write("zlib-dense.sparse", spec{origSize: 5*mib + 512, method: vhdspec.MethodZlib, dense: true, blocks: blocks}.build(t))
	write("zstd-sparse.sparse", spec{origSize: 5*mib + 512, method: vhdspec.MethodZstd, blocks: blocks}.build(t))
}
