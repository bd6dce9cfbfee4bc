package zvhd2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	"github.com/diskimg/diskimg/format/internal/vhdspec/vhdspectest"
)

var le = binary.LittleEndian

// hostile is a patched test vector and the error it must give.
type hostile formattest.Hostile

// patchTrailer rewrites the trailer of b with fn and fixes its checksum,
// so that only the field under test is wrong.
func patchTrailer(b []byte, fn func(d *vhdspec.Descriptor)) []byte {
	tr := b[len(b)-vhdspec.SlotSize:]
	d := vhdspec.DecodeDescriptor(tr)
	fn(d)
	d.Encode(tr)
	vhdspec.SetChecksum(tr)
	return b
}

// mustFail opens b and reads every stored block; some step must fail with
// a FormatError whose text names field.
func mustFail(t *testing.T, b []byte, field string) {
	t.Helper()
	vhdspectest.MustFailAs(t, openAndRead(b), Name, field)
}

func openAndRead(b []byte) error {
	img, err := openBytes(b)
	if err != nil {
		return err
	}
	defer img.Close()
	buf := make([]byte, 4096)
	for _, e := range img.entries {
		if _, err := img.ReadAt(buf, int64(e.Block)*vhdspec.BlockSize); err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

// t1 layout offsets (see TestT1Descriptor).
const (
	t1Index  = 2113536
	t1Bitmap = 2637824
	t1Rec2   = 4096 + 2101248 // the record of block 2
)

func TestHostile(t *testing.T) {
	t1 := vhdspectest.ReadVector(t, "t1.zvhd2")
	trailer := func(fn func(d *vhdspec.Descriptor)) func([]byte) []byte {
		return func(b []byte) []byte { return patchTrailer(b, fn) }
	}
	put32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { le.PutUint32(b[off:], v); return b }
	}
	put64 := func(off int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { le.PutUint64(b[off:], v); return b }
	}
	var cases []hostile
	for _, c := range []struct {
		name, field string
		patch       func([]byte) []byte
	}{
		{"header version 0", "zvhd2_version", func(b []byte) []byte { b[vhdspec.OffVersion] = 0; return b }},
		{"truncated to a slot", "file size", func(b []byte) []byte { return b[:4096] }},
		{"truncated mid-slot", "file size", func(b []byte) []byte { return b[:len(b)-100] }},
		{"truncated by a slot", "trailer cookie", func(b []byte) []byte { return b[:len(b)-vhdspec.SlotSize] }},
		{"trailer checksum", "trailer checksum", func(b []byte) []byte { b[len(b)-vhdspec.SlotSize+vhdspec.OffOriginalSize]++; return b }},
		{"trailer version", "zvhd2_version", trailer(func(d *vhdspec.Descriptor) { d.Version = 2 })},
		{"orig_size odd", "orig_size", trailer(func(d *vhdspec.Descriptor) { d.OrigSize++ })},
		{"orig_size absurd", "orig_size", trailer(func(d *vhdspec.Descriptor) { d.OrigSize = 1 << 62 })},
		{"orig_size vs header", "orig_size", trailer(func(d *vhdspec.Descriptor) { d.OrigSize -= 512 })},
		{"curr_size", "curr_size", trailer(func(d *vhdspec.Descriptor) { d.CurrSize = 2 << 30 })},
		{"block_size", "block_size", trailer(func(d *vhdspec.Descriptor) { d.BlockSize = 1 << 20 })},
		{"max_blk_num", "max_blk_num", trailer(func(d *vhdspec.Descriptor) { d.MaxBlkNum = 100000 })},
		{"compress_method", "compress_method", trailer(func(d *vhdspec.Descriptor) { d.CompressMethod = 2 })},
		{"compress_method vs header", "compress_method", trailer(func(d *vhdspec.Descriptor) { d.CompressMethod = 0 })},
		{"index_contains_zero_blk", "index_contains_zero_blk", trailer(func(d *vhdspec.Descriptor) { d.IndexDense = 7 })},
		{"index_seg_size", "index_seg_size", trailer(func(d *vhdspec.Descriptor) { d.IndexSegSize = 4096 })},
		{"bitmap_seg_size", "bitmap_seg_size", trailer(func(d *vhdspec.Descriptor) { d.BitmapSegSize = 512 })},
		{"non_zero_blk_num > max", "non_zero_blk_num", trailer(func(d *vhdspec.Descriptor) { d.NonZeroBlkNum = 4 })},
		{"non_zero_blk_num vs bitmap", "non_zero_blk_num", trailer(func(d *vhdspec.Descriptor) { d.NonZeroBlkNum = 1 })},
		{"bitmap_seg_num", "bitmap_seg_num", trailer(func(d *vhdspec.Descriptor) { d.BitmapSegNum = 2 })},
		{"bitmap_size", "bitmap_size", trailer(func(d *vhdspec.Descriptor) { d.BitmapSize = 8192 })},
		{"index_seg_num", "index_seg_num", trailer(func(d *vhdspec.Descriptor) { d.IndexSegNum = 2 })},
		{"index_size", "index_size", trailer(func(d *vhdspec.Descriptor) { d.IndexSize = 4096 })},
		{"index_lba unaligned", "index_lba", trailer(func(d *vhdspec.Descriptor) { d.IndexLBA++ })},
		{"index_lba past EOF", "index_lba", trailer(func(d *vhdspec.Descriptor) { d.IndexLBA = 1 << 40 })},
		{"index_lba zero", "index_lba", trailer(func(d *vhdspec.Descriptor) { d.IndexLBA = 0 })},
		{"bitmap_lba", "bitmap_lba", trailer(func(d *vhdspec.Descriptor) { d.BitmapLBA += 4096 })},
		{"index moved", "bitmap_size", trailer(func(d *vhdspec.Descriptor) { d.IndexLBA -= 4096; d.BitmapLBA -= 4096 })},
		{"bitmap bit past max_blk_num", "bitmap", func(b []byte) []byte { b[t1Bitmap] |= 0x08; b[t1Bitmap] &^= 0x04; return b }},
		{"bitmap bit moved", "bitmap", func(b []byte) []byte { b[t1Bitmap] = 0x03; return b }},
		{"entries out of order", "index entry block", func(b []byte) []byte {
			var e0, e1 [vhdspec.EntrySize]byte
			copy(e0[:], b[t1Index:])
			copy(e1[:], b[t1Index+vhdspec.EntrySize:])
			copy(b[t1Index:], e1[:])
			copy(b[t1Index+vhdspec.EntrySize:], e0[:])
			return b
		}},
		{"entry block past max", "index entry block", put32(t1Index+vhdspec.EntrySize+8, 3)},
		{"entry offset past EOF", "index entry offset", put64(t1Index+vhdspec.EntrySize, 1<<40)},
		{"entry offset into the index", "index entry offset", put64(t1Index+vhdspec.EntrySize, t1Index)},
		{"entry offset unaligned", "index entry offset", put64(t1Index+vhdspec.EntrySize, t1Rec2+512)},
		{"entry offset zero", "index entry offset", put64(t1Index, 0)},
		{"entries overlap", "index entry offset", put64(t1Index+vhdspec.EntrySize, t1Rec2-4096)},
		{"entry length absurd", "index entry length", put32(t1Index+vhdspec.EntrySize+12, 0xfffff000)},
		{"entry length zero", "index entry length", put32(t1Index+vhdspec.EntrySize+12, 0)},
		{"mid-footer cookie", "mid-footer cookie", func(b []byte) []byte { b[t1Index-vhdspec.SlotSize] = 'x'; return b }},
		{"record magic", "record magic", func(b []byte) []byte { b[t1Rec2] = 'H'; return b }},
		{"record block", "record block", put32(t1Rec2+vhdspec.OffRecBlock, 1)},
		{"record payload length", "record payload length", put32(t1Rec2+vhdspec.OffRecPayloadLen, 4096)},
		{"record payload length zero", "record payload length", put32(t1Rec2+vhdspec.OffRecPayloadLen, 0)},
		{"record end marker", "record end marker", func(b []byte) []byte { b[t1Rec2+4095] = 'x'; return b }},
		{"record payload corrupt", "record payload", func(b []byte) []byte {
			copy(b[t1Rec2+vhdspec.RecordHeaderLen+4:], bytes.Repeat([]byte{0xff}, 16))
			return b
		}},
	} {
		cases = append(cases, hostile{c.name, "t1", c.patch, Name + ": " + c.field, formattest.AtOpenOrRead})
	}
	formattest.RunHostileOn(t, Name, func(string) []byte { return t1 }, cases)
}

func TestHostileWrongMagic(t *testing.T) {
	b := vhdspectest.ReadVector(t, "t1.zvhd2")
	b[0] = 'Z'
	if _, err := openBytes(b); !errors.Is(err, format.ErrWrongType) {
		t.Errorf("wrong cookie: %v, want ErrWrongType", err)
	}
	if _, err := openBytes([]byte("z2st")); !errors.Is(err, format.ErrWrongType) {
		t.Errorf("4-byte file: %v, want ErrWrongType", err)
	}
	mustFail(t, []byte("z2strm\x00\x00"), "header descriptor")
}

// TestHostileDense covers the checks of the dense index (t1d.zvhd2).
func TestHostileDense(t *testing.T) {
	t1d := vhdspectest.ReadVector(t, "t1d.zvhd2")
	var cases []hostile
	for _, c := range []struct {
		name, field string
		patch       func([]byte)
	}{
		{"entry block mismatch", "index entry block", func(b []byte) { le.PutUint32(b[t1Index+2*vhdspec.EntrySize+8:], 1) }},
		{"zero entry with bit set", "index entry", func(b []byte) { b[t1Bitmap] = 0x03 }},
	} {
		patch := c.patch
		cases = append(cases, hostile{c.name, "t1d", func(b []byte) []byte { patch(b); return b }, Name + ": " + c.field, formattest.AtOpenOrRead})
	}
	formattest.RunHostileOn(t, Name, func(string) []byte { return t1d }, cases)
}

// TestHostilePayloadSize checks that decompression stops at one block:
// payloads that inflate to more, or to less, are refused.
func TestHostilePayloadSize(t *testing.T) {
	big := make([]byte, vhdspec.BlockSize+1)
	big[0] = 1
	enc, _ := zstd.NewWriter(nil)
	defer enc.Close()
	for _, c := range []struct {
		name    string
		method  uint8
		payload []byte
	}{
		{"zstd too big", vhdspec.MethodZstd, enc.EncodeAll(big, nil)},
		{"zstd too small", vhdspec.MethodZstd, enc.EncodeAll(big[:1000], nil)},
		{"zstd huge", vhdspec.MethodZstd, enc.EncodeAll(make([]byte, 64<<20), nil)},
		{"zlib too big", vhdspec.MethodZlib, deflate(t, big)},
		{"zlib too small", vhdspec.MethodZlib, deflate(t, big[:1000])},
		{"zlib huge", vhdspec.MethodZlib, deflate(t, make([]byte, 64<<20))},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := spec{origSize: 4 * mib, method: c.method, payloads: map[uint32][]byte{1: c.payload}}.build(t)
			mustFail(t, b, "record payload")
		})
	}
}

// TestHostileT2 patches the second bitmap segment of the 64 GiB t2.zvhd2.
func TestHostileT2(t *testing.T) {
	t2 := vhdspectest.ReadVector(t, "t2.zvhd2")
	const (
		index = 0x6000
		seg1  = 0x86000 + vhdspec.BitmapSegSize // bitmap segment 1: blocks 32768…
	)
	if t2[seg1] != 0x05 {
		t.Fatalf("bitmap segment 1 starts %#x", t2[seg1])
	}
	var cases []hostile
	for _, c := range []struct {
		name, field string
		patch       func([]byte)
	}{
		{"bit past max_blk_num", "bitmap", func(b []byte) { b[seg1] = 0x09 }},
		{"bit moved", "bitmap", func(b []byte) { b[seg1] = 0x03 }},
		{"entry names an absent block", "bitmap", func(b []byte) { le.PutUint32(b[index+3*vhdspec.EntrySize+8:], 32769) }},
		{"segment 0 bit cleared", "non_zero_blk_num", func(b []byte) { b[0x86000] = 0 }},
	} {
		patch := c.patch
		cases = append(cases, hostile{c.name, "t2", func(b []byte) []byte { patch(b); return b }, Name + ": " + c.field, formattest.AtOpenOrRead})
	}
	formattest.RunHostileOn(t, Name, func(string) []byte { return t2 }, cases)
}
