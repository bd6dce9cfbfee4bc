package zvhd

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zlib"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	"github.com/diskimg/diskimg/format/internal/vhdspec/vhdspectest"
)

const (
	mib = 1 << 20
	bs  = vhdspec.BlockSize
)

func openBytes(b []byte) (*Image, error) {
	return Open(&formattest.MemFile{Data: b, Path: "/nonexistent/x.zvhd"})
}

// build writes a ZVHD file as the driver does (§3 of docs/ZVHD2.md): header,
// one record per non-zero block cut from a single sync-flushed zlib
// stream, header copy. A test-only writer.
func build(t testing.TB, origSize int64, blocks map[uint32][]byte) []byte {
	t.Helper()
	d := &vhdspec.Descriptor{
		Features: vhdspec.Features, FormatVersion: vhdspec.FormatVersion, DataOffset: ^uint64(0),
		Timestamp: 820000000, CreatorVersion: vhdspec.CreatorVersion,
		OrigSize: uint64(origSize), CurrSize: vhdspec.CeilDiv(uint64(origSize), vhdspec.CurrSizeAlign) * vhdspec.CurrSizeAlign,
		Geometry: vhdspec.PackedGeometry(uint64(origSize)), DiskType: vhdspec.DiskType,
		UUID: [16]byte{9, 8, 7, 6, 5, 4, 3, 2, 1},
	}
	copy(d.Cookie[:], vhdspec.CookieZVHD)
	copy(d.CreatorApp[:], vhdspec.CreatorApp)
	slot := make([]byte, vhdspec.SlotSize)
	d.Encode(slot)
	vhdspec.SetChecksum(slot)
	var out, stream bytes.Buffer
	out.Write(slot)
	zw, _ := zlib.NewWriterLevel(&stream, 1)
	for b := uint32(0); int64(b)*bs < origSize; b++ {
		data, ok := blocks[b]
		if !ok {
			continue
		}
		block := make([]byte, bs)
		copy(block, data)
		zw.Write(block)
		zw.Flush()
		payload := bytes.Clone(stream.Bytes())
		stream.Reset()
		rec := make([]byte, vhdspec.RecordLen(int64(len(payload))))
		vhdspec.EncodeRecordHeader(rec, vhdspec.RecordHeader{PayloadLen: uint32(len(payload)), Block: b})
		copy(rec[vhdspec.RecordHeaderLen:], payload)
		copy(rec[len(rec)-vhdspec.RecordEndLen:], vhdspec.RecordEnd)
		out.Write(rec)
	}
	out.Write(slot)
	return out.Bytes()
}

func TestT1(t *testing.T) {
	raw := vhdspectest.ReadVector(t, "t1.raw")
	size := int64(len(raw))
	img := formattest.OpenPolicy(t, vhdspectest.VectorPath(t, "t1.zvhd"), "", format.Policy{Untrusted: true})
	z, ok := format.TopLayer(img).(*Image)
	if !ok {
		t.Fatalf("probed as %s", img.Info().Format)
	}
	if img.Size() != size {
		t.Fatalf("size %d, want %d", img.Size(), size)
	}
	if !bytes.Equal(vhdspectest.ReadAll(t, img), raw) {
		t.Fatal("bytes differ from t1.raw")
	}
	vhdspectest.WantExtents(t, img, format.Data, 2*mib, 4*mib, size)
	// Backwards: block 2 then block 0 then block 2 again.
	vhdspectest.WantReads(t, img, raw, 64, 4*mib+10, 100, 4*mib+200, 4*mib+10)
	d := *z.d
	file := vhdspectest.ReadVector(t, "t1.zvhd")
	if string(d.Cookie[:]) != "stream\x00\x00" || d.OrigSize != 5243392 || d.CurrSize != 1<<30 ||
		d.Geometry != 0x00960411 || d.Features != 2 || d.FormatVersion != 0x10000 || d.DiskType != 4 ||
		d.CreatorVersion != 0x10004 || string(d.CreatorApp[:]) != "tap\x00" || d.Version != 0 || d.BlockSize != 0 ||
		d.Checksum != vhdspec.DescriptorChecksum(file) {
		t.Errorf("descriptor %+v", d)
	}
	if !bytes.Equal(file[:vhdspec.SlotSize], file[len(file)-vhdspec.SlotSize:]) {
		t.Errorf("trailer slot is not a byte copy of the header slot")
	}
	if len(z.records) != 2 || z.records[0].block != 0 || z.records[1].block != 2 || z.records[0].off != 4096 {
		t.Errorf("records %+v", z.records)
	}
	js, _ := json.Marshal(img.Info().Specific)
	var m map[string]any
	json.Unmarshal(js, &m)
	if m["sequential"] != true || m["compression"] != "zlib" || m["current-size"] != float64(1<<30) || m["stored-blocks"] != float64(2) {
		t.Errorf("format-specific %s", js)
	}
	if img.Info().Format != Name || img.Info().VirtualSize != size {
		t.Errorf("info %+v", img.Info())
	}
	buf := make([]byte, 4096)
	if n, err := img.ReadAt(buf, size-100); n != 100 || err != io.EOF {
		t.Errorf("ReadAt across the end = %d, %v", n, err)
	}
}

// TestBuilt reads an image of many runs from the test writer, forwards,
// backwards and in scattered order.
func TestBuilt(t *testing.T) {
	blocks, want := vhdspectest.ManyRuns()
	img, err := openBytes(build(t, vhdspectest.ManyRunsSize, blocks))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	vhdspectest.WantManyRuns(t, img, want)
	// An empty disk is header and trailer only.
	empty, err := openBytes(build(t, 3*mib, nil))
	if err != nil {
		t.Fatal(err)
	}
	vhdspectest.WantExtents(t, empty, format.Zero, 3*mib)
}

func mustFail(t *testing.T, b []byte, field string) {
	t.Helper()
	img, err := openBytes(b)
	if err == nil {
		_, err = io.ReadAll(io.NewSectionReader(img, 0, img.Size()))
		img.Close()
	}
	vhdspectest.MustFailAs(t, err, Name, field)
}

func TestHostile(t *testing.T) {
	t1 := vhdspectest.ReadVector(t, "t1.zvhd")
	const rec2 = 2105344 // second record (12,288 bytes): after the 2,101,248-byte first one
	both := func(fn func(slot []byte)) func([]byte) []byte {
		return func(b []byte) []byte {
			for _, s := range [][]byte{b[:vhdspec.SlotSize], b[len(b)-vhdspec.SlotSize:]} {
				fn(s)
				vhdspec.SetChecksum(s)
			}
			return b
		}
	}
	put32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte {
			b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
			return b
		}
	}
	if string(t1[rec2:rec2+8]) != "hwstream" {
		t.Fatalf("no record at %d", rec2)
	}
	for _, c := range []struct {
		name, field string
		patch       func([]byte) []byte
	}{
		{"checksum", "checksum", func(b []byte) []byte { b[40]++; return b }},
		{"truncated mid-slot", "file size", func(b []byte) []byte { return b[:len(b)-100] }},
		{"header only", "file size", func(b []byte) []byte { return b[:4096] }},
		{"truncated by a slot", "trailer", func(b []byte) []byte { return b[:len(b)-vhdspec.SlotSize] }},
		{"trailer differs", "trailer", func(b []byte) []byte { b[len(b)-vhdspec.SlotSize+70]++; return b }},
		{"orig_size odd", "orig_size", both(func(s []byte) { s[40]++ })},
		{"orig_size absurd", "orig_size", both(func(s []byte) { s[47] = 0x40 })},
		{"curr_size", "curr_size", both(func(s []byte) { s[48+4] = 0x80 })},
		{"orig_size too small for the blocks", "record block", both(func(s []byte) { s[42] = 0x20; s[41] = 0; s[40] = 0 })},
		{"record magic", "record magic", func(b []byte) []byte { b[rec2] = 'H'; return b }},
		{"payload length absurd", "record payload length", put32(rec2+12, 0x7fffffff)},
		{"payload length zero", "record payload length", put32(rec2+12, 0)},
		{"payload length past trailer", "record payload length", put32(rec2+12, 20000)},
		{"block past orig_size", "record block", put32(rec2+16, 3)},
		{"blocks out of order", "record block", put32(rec2+16, 0)},
		{"end marker", "record end marker", func(b []byte) []byte { b[rec2+12287] = 'x'; return b }},
		{"payload corrupt", "record payload", func(b []byte) []byte {
			copy(b[rec2+vhdspec.RecordHeaderLen:], bytes.Repeat([]byte{0xff}, 8))
			return b
		}},
		{"first payload corrupt", "record payload", func(b []byte) []byte { b[4096+vhdspec.RecordHeaderLen] = 0x12; return b }},
	} {
		t.Run(c.name, func(t *testing.T) {
			mustFail(t, c.patch(bytes.Clone(t1)), c.field)
		})
	}
	b := bytes.Clone(t1)
	b[0] = 'S'
	if _, err := openBytes(b); !errors.Is(err, format.ErrWrongType) {
		t.Errorf("wrong cookie: %v", err)
	}
	if _, err := openBytes(vhdspectest.ReadVector(t, "t1.zvhd2")); !errors.Is(err, format.ErrWrongType) {
		t.Errorf("ZVHD2 opened as ZVHD: %v", err)
	}
}

// TestHostileStream checks streams that end before a block is complete,
// and that a stream producing more than the blocks is never read past.
func TestHostileStream(t *testing.T) {
	// The second record's payload cut short: its block cannot be filled.
	b := build(t, 4*mib, map[uint32][]byte{0: []byte("x"), 1: bytes.Repeat([]byte("ab"), 10000)})
	rec2 := 4096 + int(vhdspec.RecordLen(int64(le32(b[4096+12:]))))
	p := le32(b[rec2+12:])
	copy(b[rec2+12:], []byte{byte(p / 2), byte(p / 2 >> 8), 0, 0})
	mustFail(t, b, "record payload")

	// A record whose payload inflates to two blocks: the next block would
	// come out of it, and is refused.
	var stream bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&stream, 9)
	var payloads [][]byte
	for _, n := range []int{2 * bs, bs} {
		zw.Write(make([]byte, n))
		zw.Flush()
		payloads = append(payloads, bytes.Clone(stream.Bytes()))
		stream.Reset()
	}
	frame := build(t, 4*mib, nil)
	file := bytes.Clone(frame[:4096])
	for i, p := range payloads {
		rec := make([]byte, vhdspec.RecordLen(int64(len(p))))
		vhdspec.EncodeRecordHeader(rec, vhdspec.RecordHeader{PayloadLen: uint32(len(p)), Block: uint32(i)})
		copy(rec[vhdspec.RecordHeaderLen:], p)
		copy(rec[len(rec)-4:], vhdspec.RecordEnd)
		file = append(file, rec...)
	}
	file = append(file, frame[4096:]...)
	img, err := openBytes(file)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, bs)
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatalf("block 0: %v", err)
	}
	_, err = img.ReadAt(buf, bs)
	var fe *format.FormatError
	if !errors.As(err, &fe) || fe.Field != "record payload" {
		t.Errorf("block 1 read from record 0's payload: %v", err)
	}
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func FuzzZVHD(f *testing.F) {
	formattest.FuzzOpen(f, Name, "../../testdata/zvhd")
}

// TestSeeds checks that the seeds open; ZVHD_WRITE_SEEDS=1 regenerates
// them with the test writer (t1.zvhd holds a random block: too big).
func TestSeeds(t *testing.T) {
	dir := "../../testdata/zvhd"
	if os.Getenv("ZVHD_WRITE_SEEDS") == "1" {
		formattest.WriteFiles(t, dir, map[string][]byte{
			"three-blocks.zvhd": build(t, 5*mib+512, map[uint32][]byte{0: []byte("hello"), 1: {1}, 2: bytes.Repeat([]byte{1, 2, 3}, 300)}),
			"empty.zvhd":        build(t, 3*mib, nil),
			"t1-header.zvhd":    vhdspectest.ReadVector(t, "t1.zvhd")[:4096+512],
		})
	}
	opened := 0
	for _, s := range formattest.Seeds(t, dir) {
		if img, err := openBytes(s.Data); err == nil {
			vhdspectest.ReadAll(t, img)
			opened++
		}
	}
	if opened < 2 {
		t.Errorf("only %d seeds open", opened)
	}
}

// BenchmarkOpenEmpty1TiB opens an empty 1 TiB image and walks its map.
func BenchmarkOpenEmpty1TiB(b *testing.B) {
	path := filepath.Join(b.TempDir(), "empty.zvhd")
	formattest.WriteFile(b, path, build(b, 1<<40, nil))
	formattest.BenchOpenEmpty(b, path, Name, 1)
}

// BenchmarkT1 opens t1.zvhd, walks its map and reads every stored block.
func BenchmarkT1(b *testing.B) {
	path := vhdspectest.VectorPath(b, "t1.zvhd")
	buf := make([]byte, bs)
	for b.Loop() {
		img, err := format.Open(path, Name, format.Policy{})
		if err != nil {
			b.Fatal(err)
		}
		err = format.Walk(img, 0, func(e format.Extent) error {
			for off := e.Start; e.Status == format.Data && off < e.End(); off += bs {
				if _, err := img.ReadAt(buf[:min(bs, e.End()-off)], off); err != nil && err != io.EOF {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		img.Close()
	}
}
