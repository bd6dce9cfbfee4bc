package zvhd

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	"github.com/diskimg/diskimg/format/internal/vhdspec/vhdspectest"
)

type checkCase formattest.Corruption

// TestCheckClean: the reference vector, the test builder's files, the
// seeds that open and our writer's outputs check clean, without a
// warning.
func TestCheckClean(t *testing.T) {
	vhdspectest.Clean(t, Name, "t1.zvhd", vhdspectest.ReadVector(t, "t1.zvhd"))
	vhdspectest.Clean(t, Name, "built", build(t, 9*mib+512, map[uint32][]byte{0: []byte("hello"), 3: {1}, 4: bytes.Repeat([]byte{1, 2, 3}, 300)}))
	vhdspectest.Clean(t, Name, "built empty 1 TiB", build(t, 1<<40, nil))
	for _, s := range []string{"empty.zvhd", "three-blocks.zvhd", "writer.zvhd"} {
		b := formattest.ReadFile(t, filepath.Join("../../testdata/zvhd", s))
		vhdspectest.Clean(t, Name, s, b)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 9<<20+1536, formattest.Sparse)
	for _, in := range []string{src, vhdspectest.VectorPath(t, "t1.raw")} {
		out := filepath.Join(dir, "out.zvhd")
		os.Remove(out)
		convertFile(t, in, "raw", out, Name)
		data := formattest.ReadFile(t, out)
		vhdspectest.Clean(t, Name, filepath.Base(in), data)
	}
}

func TestCheckCorrupt(t *testing.T) {
	const (
		rec2     = 2105344 // second record (block 2, 12,288 bytes)
		payload0 = 2097799 // first record's payload length
		payload2 = 9207
		trailer  = 2121728 - vhdspec.SlotSize
	)
	put := func(off int, v ...byte) func([]byte) []byte {
		return func(b []byte) []byte { copy(b[off:], v); return b }
	}
	flip := func(off int) func([]byte) []byte {
		return func(b []byte) []byte { b[off] ^= 0x10; return b }
	}
	both := func(off int) func([]byte) []byte {
		return func(b []byte) []byte {
			for _, s := range [][]byte{b[:vhdspec.SlotSize], b[trailer:]} {
				s[off] = 1
				vhdspec.SetChecksum(s)
			}
			return b
		}
	}
	vhdspectest.Run(t, Name, vhdspectest.ReadVector(t, "t1.zvhd"), []checkCase{
		{"unchanged", func(b []byte) []byte { return b }, 0, ""},
		{"filler", put(rec2+12000, 0xaa), 0, ""},

		{"checksum", flip(vhdspec.OffUniqueID), -1, "checksum"},
		{"copy differs", flip(trailer + vhdspec.OffUniqueID), -1, "not a copy of the header descriptor"},

		{"record prefix", put(rec2, 'H'), 2, "record magic at offset 2105344"},
		{"record block order", put(rec2+vhdspec.OffRecBlock, 0), 2, "records must ascend; the records after it cannot be located"},
		{"record payload length", put(rec2+vhdspec.OffRecPayloadLen, 0, 0, 0x10), 2, "record payload length at offset 2105356"},
		{"record end marker", put(rec2+12287, 'x'), 2, "record end marker"},
		{"zlib header", flip(4096 + vhdspec.RecordHeaderLen), 2, "record at offset 4096 (block 0): payload starts 68 01, not a zlib header"},
		{"sync flush", flip(4096 + vhdspec.RecordHeaderLen + payload0 - 2), 2, "not a zlib sync flush"},
		{"sync flush of a later record", flip(rec2 + vhdspec.RecordHeaderLen + payload2 - 1), 2, "record at offset 2105344 (block 2): payload ends"},

		{"descriptor padding", put(600, 1), 0, "descriptor at offset 0: padding byte at offset 600"},
		{"copy padding", put(trailer+4095, 1), 0, "descriptor copy at offset 2117632: padding byte at offset 2121727"},
		{"reserved descriptor bytes", both(100), 0, "descriptor at offset 0: reserved byte at offset 100"},
		{"record unused header", put(rec2+40, 1), 0, "unused header byte at offset 2105384"},
	})
}

func FuzzCheck(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/zvhd")
	f.Fuzz(func(t *testing.T, data []byte) { vhdspectest.Exercise(t, Name, data) })
}

// TestCheckMutated is FuzzCheck's deterministic complement.
func TestCheckMutated(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 300
	}
	formattest.MutateSeeds(t, "../../testdata/zvhd", n, 20, func(b []byte) { vhdspectest.Exercise(t, Name, b) })
}
