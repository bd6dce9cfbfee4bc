package zvhd2

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	"github.com/diskimg/diskimg/format/internal/vhdspec/vhdspectest"
)

type checkCase formattest.Corruption

// TestCheckClean: every reference vector, the test builder's files and
// our writer's outputs check clean, without a warning.
func TestCheckClean(t *testing.T) {
	for _, v := range []string{"t1.zvhd2", "t1z.zvhd2", "t1d.zvhd2", "t2.zvhd2", "t3.zvhd2", "t4.zvhd2"} {
		vhdspectest.Clean(t, Name, v, vhdspectest.ReadVector(t, v))
	}
	blocks := map[uint32][]byte{0: []byte("hello"), 2: bytes.Repeat([]byte{1, 2, 3}, 300), 9: {7}}
	for _, method := range []uint8{vhdspec.MethodZstd, vhdspec.MethodZlib} {
		for _, dense := range []bool{false, true} {
			b := spec{origSize: 19*mib + 512, method: method, dense: dense, blocks: blocks}.build(t)
			vhdspectest.Clean(t, Name, "built", b)
		}
	}
	vhdspectest.Clean(t, Name, "built empty 1 TiB", spec{origSize: 1 << 40, method: vhdspec.MethodZstd}.build(t))
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 9<<20+1536, formattest.Sparse)
	for _, in := range []string{src, vhdspectest.VectorPath(t, "t1.raw"), vhdspectest.VectorPath(t, "t3.raw")} {
		for _, m := range []string{CompressionZstd, CompressionZlib} {
			out := filepath.Join(dir, "out.zvhd2")
			os.Remove(out)
			convertFile(t, in, "raw", out, Name, convert.Options{WriterOptions: methodOpts(m)})
			data := formattest.ReadFile(t, out)
			vhdspectest.Clean(t, Name, filepath.Base(in)+" "+m, data)
		}
	}
}

// t1 offsets beyond those of hostile_test.go.
const (
	t1Mid     = t1Index - vhdspec.SlotSize
	t1Trailer = 2646016 - vhdspec.SlotSize
	t1Rec0    = 4096
)

// fixHeader recomputes the header's checksum after a patch.
func fixHeader(b []byte) []byte { vhdspec.SetChecksum(b); return b }

// insertGap inserts n zero bytes into the t1 file b at off, before the
// mid-footer, moving every later structure: records stay where their
// index entries say, the space is referred to by nothing.
func insertGap(b []byte, off, n int) []byte {
	b = append(b[:off:off], append(make([]byte, n), b[off:]...)...)
	for k := range 2 {
		if e := t1Index + n + 16*k; le.Uint64(b[e:]) >= uint64(off) {
			le.PutUint64(b[e:], le.Uint64(b[e:])+uint64(n))
		}
	}
	return patchTrailer(b, func(d *vhdspec.Descriptor) { d.IndexLBA += uint64(n); d.BitmapLBA += uint64(n) })
}

func TestCheckCorrupt(t *testing.T) {
	put := func(off int, v ...byte) func([]byte) []byte {
		return func(b []byte) []byte { copy(b[off:], v); return b }
	}
	put32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { le.PutUint32(b[off:], v); return b }
	}
	put64 := func(off int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { le.PutUint64(b[off:], v); return b }
	}
	flip := func(off int) func([]byte) []byte {
		return func(b []byte) []byte { b[off] ^= 0x10; return b }
	}
	frame := t1Rec2 + vhdspec.RecordHeaderLen // the zstd frame of block 2
	t.Run("t1", func(t *testing.T) {
		vhdspectest.Run(t, Name, vhdspectest.ReadVector(t, "t1.zvhd2"), []checkCase{
			{"unchanged", func(b []byte) []byte { return b }, 0, ""},
			{"filler", put(t1Rec2+4000, 0xaa), 0, ""},
			{"mid-footer fresh checksum", func(b []byte) []byte { vhdspec.SetChecksum(b[t1Mid:]); return b }, 0, ""},

			{"trailer checksum", flip(t1Trailer + vhdspec.OffUniqueID), -1, "trailer checksum"},
			{"trailer index_lba", func(b []byte) []byte {
				return patchTrailer(b, func(d *vhdspec.Descriptor) { d.IndexLBA += 4096 })
			}, -1, "bitmap_lba"},
			{"header orig_size", func(b []byte) []byte { return fixHeader(put64(vhdspec.OffOriginalSize, 1<<20)(b)) }, -1, "orig_size"},

			{"header checksum", flip(vhdspec.OffChecksum), 2, "header at offset 0: checksum"},
			{"mid-footer cookie", put(t1Mid, 'x'), 2, "mid-footer at offset 2109440: cookie"},
			{"bitmap bit moved", put(t1Bitmap, 0x03), 2, "bit for block 2 is clear but index entry 1 stores it"},
			{"bitmap bit past the end", put(t1Bitmap, 0x0d), 2, "bit set for a block past max_blk_num 3"},
			{"entry block", put32(t1Index+vhdspec.EntrySize+8, 0), 2, "entries must ascend"},
			{"entry offset", put64(t1Index+vhdspec.EntrySize, t1Rec2+4096), 2, "extends past the mid-footer"},
			{"entry length", put32(t1Index+12, 4096), 2, "payload length 2097209 does not make a 4096-byte record"},
			{"record prefix", put(t1Rec2, 'H'), 2, "record at offset 2105344: prefix"},
			{"record block", put32(t1Rec2+vhdspec.OffRecBlock, 1), 2, "holds block 1, index entry 1 says 2"},
			{"record payload length", put32(t1Rec2+vhdspec.OffRecPayloadLen, 5000), 2, "payload length 5000 does not make a 4096-byte record"},
			{"record payload length in the record", put32(t1Rec2+vhdspec.OffRecPayloadLen, 4000), 2, "frame ends at payload byte 122, the payload at 4000"},
			{"record end marker", put(t1Rec2+4093, 'x'), 2, "end marker"},
			{"zstd magic", flip(frame), 2, "zstd magic number"},
			{"zstd reserved bit", func(b []byte) []byte { b[frame+4] |= 0x08; return b }, 2, "reserved bit"},
			{"zstd dictionary", func(b []byte) []byte { b[frame+4] |= 0x01; return b }, 2, "names a dictionary"},
			{"zstd content size", put32(frame+5, 1<<20), 2, "content size 1048576"},
			{"zstd checksum flag", func(b []byte) []byte { b[frame+4] |= 0x04; return b }, 2, "frame ends at payload byte 126"},
			{"zstd block size", flip(frame + 9), 2, "runs past the 122-byte payload"},
			{"zstd last block flag", func(b []byte) []byte { b[frame+9] ^= 1; return b }, 2, "payload byte"},
			{"gap between records", func(b []byte) []byte { return insertGap(b, t1Rec2, 8192) }, 3, "8192 bytes at offset 2105344 between records"},
			{"gap before the mid-footer", func(b []byte) []byte { return insertGap(b, t1Mid, 4096) }, 3, "4096 bytes at offset 2109440 between records"},

			{"header field", func(b []byte) []byte { return fixHeader(flip(vhdspec.OffUniqueID)(b)) }, 0, "header at offset 0: uuid differs from the trailer's"},
			{"header final field", func(b []byte) []byte { return fixHeader(put32(vhdspec.OffNonZeroBlkNum, 2)(b)) }, 0, "non_zero_blk_num is not zero"},
			{"header reserved", func(b []byte) []byte { return fixHeader(put(300, 1)(b)) }, 0, "header at offset 0: reserved differs"},
			{"header padding", put(1000, 1), 0, "header at offset 0: padding byte at offset 1000"},
			{"mid-footer padding", put(t1Mid+4095, 1), 0, "padding byte at offset 2113535"},
			{"trailer padding", put(t1Trailer+512, 1), 0, "padding byte at offset 2642432"},
			{"mid-footer checksum", flip(t1Mid + vhdspec.OffChecksum), 0, "mid-footer at offset 2109440: checksum"},
			{"mid-footer field", flip(t1Mid + vhdspec.OffTimestamp), 0, "mid-footer at offset 2109440: timestamp"},
			{"mid-footer count", put32(t1Mid+vhdspec.OffNonZeroBlkNum, 3), 0, "non_zero_blk_num is not the header's"},
			{"reserved in both", func(b []byte) []byte {
				fixHeader(put(200, 1)(b))
				b[t1Trailer+200] = 1
				vhdspec.SetChecksum(b[t1Trailer:])
				return b
			}, 0, "trailer at offset 2641920: reserved byte at offset 2642120"},
			{"record unused header", put(t1Rec2+20, 1), 0, "unused header byte at offset 2105364"},
			{"unused index entry", put(t1Index+2*vhdspec.EntrySize+3, 1), 0, "unused entries after entry 2"},
			{"zstd unused bit", func(b []byte) []byte { b[frame+4] |= 0x10; return b }, 0, "unused bit"},
		})
	})
	t.Run("t1z", func(t *testing.T) {
		payload := 2097799 // of block 0
		vhdspectest.Run(t, Name, vhdspectest.ReadVector(t, "t1z.zvhd2"), []checkCase{
			{"zlib header", flip(t1Rec0 + vhdspec.RecordHeaderLen + 1), 2, "not a zlib header"},
			{"zlib window", put(t1Rec0+vhdspec.RecordHeaderLen, 0x88), 2, "not a zlib header"},
			{"zlib sync flush", flip(t1Rec0 + vhdspec.RecordHeaderLen + payload - 1), 2, "not a zlib sync flush"},
		})
	})
	t.Run("t1d", func(t *testing.T) {
		vhdspectest.Run(t, Name, vhdspectest.ReadVector(t, "t1d.zvhd2"), []checkCase{
			{"absent entry's block", put32(t1Index+vhdspec.EntrySize+8, 1), 0, "block 1 in the entry of an absent block"},
			{"absent entry's record", put64(t1Index+vhdspec.EntrySize, t1Rec2), 2, "in the entry for block 1"},
		})
	})
}

// TestCheckMutated is FuzzCheck's deterministic complement: the expanded
// seeds with one to four random bytes changed.
func TestCheckMutated(t *testing.T) {
	dir := t.TempDir()
	seeds, err := os.ReadDir("../../testdata/zvhd2")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range seeds {
		data := formattest.ReadFile(t, filepath.Join("../../testdata/zvhd2", s.Name()))
		formattest.WriteFile(t, filepath.Join(dir, s.Name()), sparse.Expand(data))
	}
	n := 2000
	if testing.Short() {
		n = 300
	}
	formattest.MutateSeeds(t, dir, n, 20, func(b []byte) { vhdspectest.Exercise(t, Name, b) })
}
