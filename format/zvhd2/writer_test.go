package zvhd2

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	"github.com/diskimg/diskimg/format/internal/vhdspec/vhdspectest"
	_ "github.com/diskimg/diskimg/format/raw"
	_ "github.com/diskimg/diskimg/format/vhd"
	_ "github.com/diskimg/diskimg/format/vhdx"
)

// ---------------------------------------------------------------------
// An independent parser, written from docs/ZVHD2.md (§1, §2, §5) with literal
// offsets and its own decoders: it shares no code with the package, so
// it checks the writer without trusting the reader's constants.
// ---------------------------------------------------------------------

// pField is one descriptor field: name as in docs/ZVHD2.md, offset, size.
type pField struct {
	name      string
	off, size int
}

var pFields = []pField{
	{"cookie", 0, 8}, {"features", 8, 4}, {"format version", 12, 4}, {"data offset", 16, 8},
	{"timestamp", 24, 4}, {"creator app", 28, 4}, {"creator version", 32, 4}, {"creator OS", 36, 4},
	{"orig_size", 40, 8}, {"curr_size", 48, 8}, {"geometry", 56, 4}, {"disk type", 60, 4},
	{"checksum", 64, 4}, {"uuid", 68, 16}, {"saved", 84, 1}, {"hidden", 85, 1}, {"align_64", 86, 1},
	{"zvhd2_version", 87, 1}, {"block_size", 88, 4}, {"max_blk_num", 92, 4}, {"index_lba", 96, 8},
	{"bitmap_lba", 104, 8}, {"index_size", 112, 4}, {"bitmap_size", 116, 4}, {"index_seg_size", 120, 4},
	{"bitmap_seg_size", 124, 4}, {"index_seg_num", 128, 4}, {"bitmap_seg_num", 132, 4},
	{"non_zero_blk_num", 136, 4}, {"index_contains_zero_blk", 140, 1}, {"compress_method", 141, 1},
	{"reserved", 142, 370},
}

// pDesc is a 512-byte descriptor.
type pDesc []byte

func (d pDesc) raw(name string) []byte {
	for _, f := range pFields {
		if f.name == name {
			return d[f.off : f.off+f.size]
		}
	}
	panic("no field " + name)
}

// u returns a numeric field (little-endian, up to 8 bytes).
func (d pDesc) u(name string) uint64 {
	var v uint64
	b := d.raw(name)
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func (d pDesc) sumOK() bool {
	var s uint32
	for i, c := range d[:512] {
		if i < 64 || i >= 68 {
			s += uint32(c)
		}
	}
	return ^s == uint32(d.u("checksum"))
}

// pRecord is one data record as found in the file.
type pRecord struct {
	off, length int64
	block       uint32
	payload     []byte
}

// pFile is a parsed ZVHD2 file.
type pFile struct {
	header, mid, trailer pDesc
	records              []pRecord
	blocks               map[uint32][]byte // decoded stored blocks
}

// pStrict asks the parser to check what our writer promises beyond the
// reference driver: zero record filler and a valid mid-footer checksum.
type pStrict = bool

func u32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

func roundUp(n, a uint64) uint64 { return (n + a - 1) / a * a }

// parseZVHD2 checks file against every invariant of §5 and decodes its
// blocks.
func parseZVHD2(t testing.TB, file []byte, strict pStrict) *pFile {
	t.Helper()
	fail := func(format string, args ...any) *pFile {
		t.Helper()
		t.Fatalf("parse: "+format, args...)
		return nil
	}
	n := int64(len(file))
	if n%4096 != 0 || n < 3*4096 {
		return fail("file size %d", n)
	}
	p := &pFile{header: pDesc(file[:512]), trailer: pDesc(file[n-4096 : n-4096+512]), blocks: map[uint32][]byte{}}
	h, tr := p.header, p.trailer
	for _, d := range []struct {
		name string
		d    pDesc
	}{{"header", h}, {"trailer", tr}} {
		if string(d.d.raw("cookie")) != "z2strm\x00\x00" {
			return fail("%s cookie %q", d.name, d.d.raw("cookie"))
		}
		if !d.d.sumOK() {
			return fail("%s checksum", d.name)
		}
	}
	// Header fields known before the data; index fields zero.
	for _, f := range pFields {
		if f.off >= 96 && f.off < 140 && h.u(f.name) != 0 {
			return fail("header %s = %d, want 0", f.name, h.u(f.name))
		}
	}
	for _, f := range pFields {
		if f.off >= 96 && f.off < 140 || f.name == "checksum" {
			continue
		}
		if !bytes.Equal(h.raw(f.name), tr.raw(f.name)) {
			return fail("header and trailer differ in %s", f.name)
		}
	}
	// Fixed values (§1.2).
	want := map[string]uint64{
		"features": 2, "format version": 0x00010000, "data offset": ^uint64(0), "creator version": 0x00010004,
		"creator OS": 0, "disk type": 4, "saved": 0, "hidden": 0, "align_64": 0, "zvhd2_version": 1,
		"block_size": 2 << 20, "index_seg_size": 512 << 10, "bitmap_seg_size": 4096, "index_contains_zero_blk": 0,
	}
	for name, v := range want {
		if got := tr.u(name); got != v {
			return fail("trailer %s = %#x, want %#x", name, got, v)
		}
	}
	if string(tr.raw("creator app")) != "tap\x00" || !allZero(tr.raw("reserved")) {
		return fail("creator app %q or reserved bytes", tr.raw("creator app"))
	}
	orig := tr.u("orig_size")
	maxBlk := roundUp(orig, 2<<20) / (2 << 20)
	switch {
	case orig%512 != 0:
		return fail("orig_size %d", orig)
	case tr.u("curr_size") != roundUp(orig, 1<<30):
		return fail("curr_size %d for orig_size %d", tr.u("curr_size"), orig)
	case tr.u("max_blk_num") != maxBlk:
		return fail("max_blk_num %d, want %d", tr.u("max_blk_num"), maxBlk)
	case tr.u("geometry") != uint64(vhdspec.PackedGeometry(orig)): // pinned by TestGeometry
		return fail("geometry %#x, want %#x", tr.u("geometry"), vhdspec.PackedGeometry(orig))
	case tr.u("compress_method") > 1:
		return fail("compress_method %d", tr.u("compress_method"))
	}
	for _, slot := range [][]byte{file[512:4096], file[n-4096+512:]} {
		if !allZero(slot) {
			return fail("bytes after a descriptor in its slot are not zero")
		}
	}
	// Records, from 4096 up to the mid-footer.
	zdec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zdec.Close()
	off := int64(4096)
	for string(file[off:off+6]) != "z2strm" {
		r := file[off:]
		plen := int64(u32(r[12:]))
		l := int64(roundUp(uint64(48+plen+4), 4096))
		blk := u32(r[16:])
		switch {
		case string(r[:12]) != "hwstream bg\x00":
			return fail("record at %d: magic %q", off, r[:12])
		case !allZero(r[20:48]):
			return fail("record at %d: header bytes 20..47 not zero", off)
		case off+l > n-3*4096:
			return fail("record at %d: length %d runs into the tail", off, l)
		case string(r[l-4:l]) != "end\x00":
			return fail("record at %d: end marker %q", off, r[l-4:l])
		case strict && !allZero(r[48+plen:l-4]):
			return fail("record at %d: filler not zero", off)
		case len(p.records) > 0 && blk <= p.records[len(p.records)-1].block:
			return fail("record at %d: block %d not ascending", off, blk)
		case uint64(blk) >= maxBlk:
			return fail("record at %d: block %d past max_blk_num", off, blk)
		}
		payload := r[48 : 48+plen]
		var block []byte
		if tr.u("compress_method") == 1 {
			// §2.3: one zstd frame, single segment, content size 2 MiB.
			if string(payload[:4]) != "\x28\xb5\x2f\xfd" || payload[4]&0x20 == 0 {
				return fail("record at %d: zstd frame header % x", off, payload[:6])
			}
			block, err = zdec.DecodeAll(payload, nil)
		} else {
			// §2.3: level-1 zlib, sync-flushed, never finished.
			if string(payload[:2]) != "\x78\x01" || string(payload[plen-4:]) != "\x00\x00\xff\xff" {
				return fail("record at %d: zlib framing % x … % x", off, payload[:2], payload[plen-4:])
			}
			var zr io.ReadCloser
			if zr, err = zlib.NewReader(bytes.NewReader(payload)); err == nil {
				block = make([]byte, 2<<20)
				_, err = io.ReadFull(zr, block)
			}
		}
		if err != nil || len(block) != 2<<20 {
			return fail("record at %d: payload decodes to %d bytes: %v", off, len(block), err)
		}
		if allZero(block) {
			return fail("record at %d: stores an all-zero block", off)
		}
		p.blocks[blk] = block
		p.records = append(p.records, pRecord{off: off, length: l, block: blk, payload: payload})
		off += l
	}
	// Mid-footer: the header with non_zero_blk_num.
	p.mid = pDesc(file[off : off+512])
	nz := uint64(len(p.records))
	for _, f := range pFields {
		switch f.name {
		case "checksum":
			if strict && !p.mid.sumOK() {
				return fail("mid-footer checksum")
			}
		case "non_zero_blk_num":
			if p.mid.u(f.name) != nz {
				return fail("mid-footer non_zero_blk_num %d, want %d", p.mid.u(f.name), nz)
			}
		default:
			if !bytes.Equal(p.mid.raw(f.name), h.raw(f.name)) {
				return fail("mid-footer %s differs from the header", f.name)
			}
		}
	}
	// Index (§2.4) and bitmap (§2.5).
	idxSegs, bmSegs := roundUp(nz, 32768)/32768, roundUp(maxBlk, 32768)/32768
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"non_zero_blk_num", tr.u("non_zero_blk_num"), nz},
		{"index_lba", tr.u("index_lba"), uint64(off) + 4096},
		{"index_seg_num", tr.u("index_seg_num"), idxSegs},
		{"index_size", tr.u("index_size"), idxSegs * 524288},
		{"bitmap_lba", tr.u("bitmap_lba"), tr.u("index_lba") + tr.u("index_size")},
		{"bitmap_seg_num", tr.u("bitmap_seg_num"), bmSegs},
		{"bitmap_size", tr.u("bitmap_size"), bmSegs * 4096},
		{"file size", uint64(n), tr.u("bitmap_lba") + tr.u("bitmap_size") + 4096},
	}
	for _, c := range checks {
		if c.got != c.want {
			return fail("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	index := file[tr.u("index_lba"):tr.u("bitmap_lba")]
	for k := range int(idxSegs * 32768) {
		e := index[16*k : 16*k+16]
		if k >= len(p.records) {
			if !allZero(e) {
				return fail("unused index entry %d not zero", k)
			}
			continue
		}
		r := p.records[k]
		if binary.LittleEndian.Uint64(e) != uint64(r.off) || u32(e[8:]) != r.block || int64(u32(e[12:])) != r.length {
			return fail("index entry %d = % x, record at %d block %d length %d", k, e, r.off, r.block, r.length)
		}
	}
	bitmap := file[tr.u("bitmap_lba") : tr.u("bitmap_lba")+tr.u("bitmap_size")]
	pop := 0
	for _, c := range bitmap {
		pop += bits.OnesCount8(c)
	}
	if pop != len(p.records) {
		return fail("bitmap popcount %d, %d records", pop, len(p.records))
	}
	for _, r := range p.records {
		if bitmap[r.block/8]>>(r.block%8)&1 == 0 {
			return fail("bitmap bit for block %d clear", r.block)
		}
	}
	return p
}

// ---------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------

// convertTo converts src to format wf on dst through the engine.
func convertTo(t testing.TB, src format.Image, wf string, dst format.Target, opts convert.Options) *convert.Result {
	t.Helper()
	res, err := convert.Convert(context.Background(), src, formattest.Writer(t, wf), dst, opts)
	if err != nil {
		t.Fatalf("convert to %s: %v", wf, err)
	}
	return res
}

// convertFile converts the image at src (format srcFmt) into a new file.
func convertFile(t testing.TB, src, srcFmt, dst, wf string, opts convert.Options) {
	t.Helper()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	convertTo(t, formattest.Open(t, src, srcFmt), wf, f, opts)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// fixedIdentity makes the descriptor's timestamp and uuid constant.
func fixedIdentity(t testing.TB) {
	oldClock, oldUUID := vhdspec.Clock, vhdspec.UUIDSource
	vhdspec.Clock = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }
	vhdspec.UUIDSource = zeroReader{}
	t.Cleanup(func() { vhdspec.Clock, vhdspec.UUIDSource = oldClock, oldUUID })
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func methodOpts(m string) map[string]string {
	if m == "" {
		return nil
	}
	return map[string]string{OptCompressionType: m}
}

// ---------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------

// TestParserOnVectors proves the independent parser on the driver's own
// files (lenient: the driver leaves garbage filler and a stale mid-footer
// checksum), so that it can be trusted on ours.
func TestParserOnVectors(t *testing.T) {
	for _, v := range []struct {
		name  string
		raw   string
		nz    int
		bmSeg uint64
	}{
		{"t1.zvhd2", "t1.raw", 2, 1}, {"t1z.zvhd2", "t1.raw", 2, 1},
		{"t3.zvhd2", "t3.raw", 0, 1}, {"t4.zvhd2", "t4.raw", 1, 1},
	} {
		p := parseZVHD2(t, vhdspectest.ReadVector(t, v.name), false)
		raw := vhdspectest.ReadVector(t, v.raw)
		if len(p.records) != v.nz || p.trailer.u("bitmap_seg_num") != v.bmSeg {
			t.Errorf("%s: %d records, %d bitmap segments", v.name, len(p.records), p.trailer.u("bitmap_seg_num"))
		}
		if got := vhdspectest.Disk(p.blocks, int64(len(raw))); !bytes.Equal(got, raw) {
			t.Errorf("%s: parsed data differs from %s at %d", v.name, v.raw, formattest.FirstDiff(got, raw))
		}
	}
	p := parseZVHD2(t, vhdspectest.ReadVector(t, "t2.zvhd2"), false)
	if p.trailer.u("bitmap_seg_num") != 2 || len(p.records) != 4 {
		t.Errorf("t2: %d bitmap segments, %d records", p.trailer.u("bitmap_seg_num"), len(p.records))
	}
}

// TestVectorsFieldByField converts the reference inputs with our writer
// and compares every descriptor field of header, mid-footer and trailer
// with the driver's file for the same input. Only timestamp, uuid and
// checksum may differ, and the table offsets where the codecs' record
// lengths differ.
func TestVectorsFieldByField(t *testing.T) {
	for _, v := range []struct{ ref, raw, method string }{
		{"t1.zvhd2", "t1.raw", CompressionZstd},
		{"t1z.zvhd2", "t1.raw", CompressionZlib},
		{"t3.zvhd2", "t3.raw", ""},
		{"t4.zvhd2", "t4.raw", ""},
	} {
		t.Run(v.ref, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.zvhd2")
			convertFile(t, vhdspectest.VectorPath(t, v.raw), "raw", out, Name, convert.Options{WriterOptions: methodOpts(v.method)})
			data := formattest.ReadFile(t, out)
			ours := parseZVHD2(t, data, true)
			ref := parseZVHD2(t, vhdspectest.ReadVector(t, v.ref), false)
			sameLayout := len(ours.records) == len(ref.records)
			for i := range ours.records {
				if sameLayout && (ours.records[i].length != ref.records[i].length || ours.records[i].block != ref.records[i].block) {
					sameLayout = false
				}
			}
			for _, d := range []struct {
				name      string
				ours, ref pDesc
			}{{"header", ours.header, ref.header}, {"mid-footer", ours.mid, ref.mid}, {"trailer", ours.trailer, ref.trailer}} {
				for _, f := range pFields {
					switch f.name {
					case "timestamp", "uuid", "checksum":
						continue
					case "index_lba", "bitmap_lba":
						if !sameLayout {
							continue // checked by the parser's invariants
						}
					}
					if !bytes.Equal(d.ours.raw(f.name), d.ref.raw(f.name)) {
						t.Errorf("%s %s: ours % x, driver's % x", d.name, f.name, d.ours.raw(f.name), d.ref.raw(f.name))
					}
				}
			}
			if sameLayout && len(data) != len(vhdspectest.ReadVector(t, v.ref)) {
				t.Errorf("file size %d, driver's %d", len(data), len(vhdspectest.ReadVector(t, v.ref)))
			}
			// Identity fields are fresh: a recent timestamp, a v4 uuid.
			ts := vhdspec.Epoch.Add(time.Duration(ours.trailer.u("timestamp")) * time.Second)
			if d := time.Since(ts); d < -time.Minute || d > time.Hour {
				t.Errorf("timestamp %v is not now", ts)
			}
			if u := ours.trailer.raw("uuid"); u[6]>>4 != 4 || allZero(u) {
				t.Errorf("uuid % x is not a random v4 uuid", u)
			}
			raw := vhdspectest.ReadVector(t, v.raw)
			if got := vhdspectest.Disk(ours.blocks, int64(len(raw))); !bytes.Equal(got, raw) {
				t.Errorf("data differs at %d", formattest.FirstDiff(got, raw))
			}
			t.Logf("%s: ours %d bytes, driver's %d", v.ref, len(data), len(vhdspectest.ReadVector(t, v.ref)))
		})
	}
}

// TestRoundTrip converts raw sources of every content and odd sizes, and
// the same data as vpc and vhdx sources, to ZVHD2 (zstd and zlib), then
// checks the file with the independent parser, reads it back with the
// reader, compares it with the source through the engine's Compare, and
// converts it back to raw byte for byte.
func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	sizes := append([]int64{1000}, formattest.Sizes...)
	for _, size := range sizes {
		for _, c := range []formattest.Content{formattest.Empty, formattest.Sparse, formattest.Dense, formattest.Zeros} {
			src := filepath.Join(dir, fmt.Sprintf("%s-%d.raw", c, size))
			formattest.MakeRaw(t, src, size, c)
			for _, m := range []string{CompressionZstd, CompressionZlib} {
				t.Run(fmt.Sprintf("raw/%s/%d/%s", c, size, m), func(t *testing.T) {
					roundTrip(t, src, "raw", src, m)
				})
			}
		}
	}
	// Other source formats (qemu-img makes them from raw).
	size := int64(9<<20 + 1536)
	for _, c := range []formattest.Content{formattest.Sparse, formattest.Dense} {
		src := filepath.Join(dir, fmt.Sprintf("%s-%d.raw", c, size))
		for _, sf := range []string{"vpc", "vhdx"} {
			formattest.RequireQemu(t)
			img := filepath.Join(dir, fmt.Sprintf("%s-%d.%s", c, size, sf))
			formattest.Convert(t, src, img, sf)
			t.Run(fmt.Sprintf("%s/%s", sf, c), func(t *testing.T) { roundTrip(t, img, sf, src, CompressionZstd) })
		}
	}
}

func roundTrip(t *testing.T, src, srcFmt, rawPath, method string) {
	dir := t.TempDir()
	want := formattest.ReadFile(t, rawPath)
	out := filepath.Join(dir, "out.zvhd2")
	convertFile(t, src, srcFmt, out, Name, convert.Options{WriterOptions: methodOpts(method)})
	data := formattest.ReadFile(t, out)
	p := parseZVHD2(t, data, true)
	srcImg := formattest.Open(t, src, srcFmt)
	if got, w := p.trailer.u("orig_size"), roundUp(uint64(srcImg.Size()), 512); got != w {
		t.Errorf("orig_size %d, want %d", got, w)
	}
	if got := vhdspectest.Disk(p.blocks, int64(len(want))); !bytes.Equal(got, want) {
		t.Fatalf("parsed data differs at %d", formattest.FirstDiff(got, want))
	}
	// The reader under test.
	img := formattest.Open(t, out, Name)
	if img.Size() != int64(p.trailer.u("orig_size")) {
		t.Errorf("reader size %d, orig_size %d", img.Size(), p.trailer.u("orig_size"))
	}
	same, diff, err := convert.Compare(context.Background(), srcImg, img)
	if err != nil || !same {
		t.Fatalf("compare with the source: same=%v first difference %d, %v", same, diff, err)
	}
	// Back to raw, byte for byte (the raw output is whole sectors).
	back := filepath.Join(dir, "back.raw")
	convertFile(t, out, Name, back, "raw", convert.Options{})
	got := formattest.ReadFile(t, back)
	// The source's virtual size may exceed the raw file's (vpc rounds up
	// to its CHS geometry); the rest reads as zeros.
	padded := append(bytes.Clone(want), make([]byte, int(roundUp(uint64(srcImg.Size()), 512))-len(want))...)
	if !bytes.Equal(got, padded) {
		t.Fatalf("raw → zvhd2 → raw differs at %d (%d vs %d bytes)", formattest.FirstDiff(got, padded), len(got), len(padded))
	}
	// Measure is an upper bound of what was written.
	m, err := convert.Measure(srcImg, 0, formattest.Writer(t, Name), convert.Options{WriterOptions: methodOpts(method)})
	if err != nil {
		t.Fatal(err)
	}
	if m.Required < int64(len(data)) || m.FullyAllocated < m.Required {
		t.Errorf("measure %+v, file %d bytes", m, len(data))
	}
}

// TestFullyAllocated converts with -S 0: the engine hands every block as
// data, zeros included, and the writer still stores no zero block.
func TestFullyAllocated(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 9<<20+1536, formattest.Sparse)
	var sparse, full bytes.Buffer
	fixedIdentity(t)
	convertTo(t, formattest.Open(t, src, "raw"), Name, &sparse, convert.Options{})
	convertTo(t, formattest.Open(t, src, "raw"), Name, &full, convert.Options{SparseSize: convert.NoSparse, ChunkSize: 8 << 20})
	if !bytes.Equal(sparse.Bytes(), full.Bytes()) {
		t.Errorf("-S 0 output differs from the sparse conversion (%d vs %d bytes)", full.Len(), sparse.Len())
	}
	p := parseZVHD2(t, full.Bytes(), true)
	if len(p.records) != 4 {
		t.Errorf("%d records, want 4 (blocks 0, 1, 2 and the last)", len(p.records))
	}
}

// TestPipe streams through an os.Pipe and compares with the file output.
func TestPipe(t *testing.T) {
	fixedIdentity(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 33<<20+4096, formattest.Sparse)
	for _, m := range []string{CompressionZstd, CompressionZlib} {
		file := filepath.Join(dir, m+".zvhd2")
		convertFile(t, src, "raw", file, Name, convert.Options{WriterOptions: methodOpts(m)})
		var res *convert.Result
		got := formattest.Piped(t, func(w *os.File) error {
			res = convertTo(t, formattest.Open(t, src, "raw"), Name, w, convert.Options{WriterOptions: methodOpts(m), Checksum: true})
			return nil
		})
		want, _ := os.ReadFile(file)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: piped output differs from the file at %d (%d vs %d bytes)", m, formattest.FirstDiff(got, want), len(got), len(want))
		}
		if len(res.SHA256) == 0 {
			t.Errorf("%s: no streamed checksum", m)
		}
	}
}

// TestOver64GiB writes the t2 vector's disk (68,723,684,385 bytes, data in
// blocks 0, 32767, 32768 and 32770) from a sparse raw file: two bitmap
// segments. Compared field by field with the driver's t2.zvhd2, and round
// tripped.
func TestOver64GiB(t *testing.T) {
	const size = 68723684385
	dir := t.TempDir()
	src := filepath.Join(dir, "t2.raw")
	chunks := vhdspectest.ReadVector(t, "t2-blocks.bin")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for i, b := range []int64{0, 32767, 32768, 32770} {
		if _, err := f.WriteAt(chunks[i*16384:(i+1)*16384], b*vhdspec.BlockSize); err != nil {
			t.Fatal(err)
		}
	}
	// Block 32770 is the last and partial: the chunk's tail is past the end.
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, m := range []string{CompressionZstd, CompressionZlib} {
		out := filepath.Join(dir, m+".zvhd2")
		start := time.Now()
		convertFile(t, src, "raw", out, Name, convert.Options{WriterOptions: methodOpts(m)})
		t.Logf("%s: converted in %v", m, time.Since(start))
		data, _ := os.ReadFile(out)
		p := parseZVHD2(t, data, true)
		ref := parseZVHD2(t, vhdspectest.ReadVector(t, "t2.zvhd2"), false)
		for _, name := range []string{"orig_size", "curr_size", "geometry", "max_blk_num", "index_size", "bitmap_size",
			"index_seg_num", "bitmap_seg_num", "non_zero_blk_num"} {
			if p.trailer.u(name) != ref.trailer.u(name) {
				t.Errorf("%s: %s %d, driver's %d", m, name, p.trailer.u(name), ref.trailer.u(name))
			}
		}
		if p.trailer.u("bitmap_seg_num") != 2 {
			t.Errorf("%s: %d bitmap segments", m, p.trailer.u("bitmap_seg_num"))
		}
		bm := data[p.trailer.u("bitmap_lba"):]
		if bm[0] != 1 || bm[4095] != 0x80 || bm[4096] != 5 {
			t.Errorf("%s: bitmap bytes %#x %#x %#x, want 0x1 0x80 0x5", m, bm[0], bm[4095], bm[4096])
		}
		for i, b := range []uint32{0, 32767, 32768, 32770} {
			blk := p.blocks[b]
			n := min(16384, size-int64(b)*vhdspec.BlockSize)
			if !bytes.Equal(blk[:n], chunks[int64(i)*16384:int64(i)*16384+n]) || !allZero(blk[n:]) {
				t.Errorf("%s: block %d differs", m, b)
			}
		}
		img := formattest.Open(t, out, Name)
		same, diff, err := convert.Compare(context.Background(), formattest.Open(t, src, "raw"), img)
		if err != nil || !same {
			t.Errorf("%s: compare: same=%v at %d, %v", m, same, diff, err)
		}
	}
}

// TestOptions: options are checked before any byte is written.
func TestOptions(t *testing.T) {
	wf := formattest.Writer(t, Name)
	for _, c := range []struct {
		opts map[string]string
		want string
	}{
		{map[string]string{"cluster_size": "65536"}, "valid options: compression_type"},
		{map[string]string{OptCompressionType: "lz4"}, "must be one of zstd, zlib"},
	} {
		if err := wf.Validate(format.WriteOptions{Size: 1 << 20, Options: c.opts}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.opts, err, c.want)
		}
	}
	if err := wf.Validate(format.WriteOptions{Size: vhdspec.MaxSize + 1}); err == nil {
		t.Error("a disk past the last u32 block number was accepted")
	}
	if err := wf.Validate(format.WriteOptions{Size: 1 << 20, Compress: true}); err != nil {
		t.Errorf("-c refused: %v", err)
	}
	src := filepath.Join(t.TempDir(), "src.raw")
	formattest.MakeRaw(t, src, 1<<20, formattest.Dense)
	var buf bytes.Buffer
	_, err := convert.Convert(context.Background(), formattest.Open(t, src, "raw"), wf, &buf,
		convert.Options{WriterOptions: map[string]string{"compression_type": "none"}})
	if err == nil || buf.Len() != 0 {
		t.Errorf("bad option: %v, %d bytes written", err, buf.Len())
	}
}

// TestWriterContract drives the writer by hand: out-of-order and
// unencoded blocks, a short disk, and a data block off the grid.
func TestWriterContract(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, format.WriteOptions{Size: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(&format.Block{Start: 2 << 20, Length: 2 << 20, Status: format.Zero}); err == nil {
		t.Error("a block past the next offset was accepted")
	}
	if err := w.Write(&format.Block{Start: 0, Length: 2 << 20, Status: format.Data, Data: make([]byte, 2<<20)}); err == nil {
		t.Error("an unencoded data block was accepted")
	}
	if err := w.Encode(&format.Block{Start: 4096, Length: 4096, Status: format.Data, Data: make([]byte, 4096)}); err == nil {
		t.Error("a data block off the 2 MiB grid was accepted")
	}
	w, _ = NewWriter(&buf, format.WriteOptions{Size: 5 << 20})
	w.Write(&format.Block{Start: 0, Length: 2 << 20, Status: format.Zero})
	if err := w.Close(); err == nil {
		t.Error("Close before the last block succeeded")
	}
	if err := w.Write(&format.Block{Start: 2 << 20, Length: 4 << 20, Status: format.Zero}); err == nil {
		t.Error("a block past the disk size was accepted")
	}
	// A multi-block data block (a large -S) with a zero block inside.
	data := make([]byte, 5<<20)
	data[0], data[4<<20+100] = 1, 2
	buf.Reset()
	w, _ = NewWriter(&buf, format.WriteOptions{Size: 5 << 20})
	b := &format.Block{Start: 0, Length: 5 << 20, Status: format.Data, Data: data}
	if err := w.Encode(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	p := parseZVHD2(t, buf.Bytes(), true)
	if len(p.records) != 2 || p.records[1].block != 2 || !bytes.Equal(vhdspectest.Disk(p.blocks, 5<<20), data) {
		t.Errorf("multi-block data: %d records", len(p.records))
	}
}

// TestMeasure checks the figures on an empty disk (exact) and a dense one
// (bounds), with and without a source.
func TestMeasure(t *testing.T) {
	wf := formattest.Writer(t, Name)
	m, err := wf.Measure(format.WriteOptions{Size: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	// Empty 1 TiB: three slots and 16 bitmap segments.
	if want := int64(3*4096 + 16*4096); m.Required != want {
		t.Errorf("empty 1 TiB: required %d, want %d", m.Required, want)
	}
	if want := int64(3*4096+16*4096+16*524288) + 524288*vhdspec.RecordLen(vhdspec.PayloadBound); m.FullyAllocated != want {
		t.Errorf("1 TiB: fully allocated %d, want %d", m.FullyAllocated, want)
	}
	const size = 9<<20 + 1536
	src := filepath.Join(t.TempDir(), "dense.raw")
	formattest.MakeRaw(t, src, size, formattest.Dense)
	img := formattest.Open(t, src, "raw")
	for _, m := range []string{CompressionZstd, CompressionZlib} {
		var buf bytes.Buffer
		convertTo(t, img, Name, &buf, convert.Options{WriterOptions: methodOpts(m)})
		got, err := convert.Measure(img, 0, wf, convert.Options{WriterOptions: methodOpts(m)})
		if err != nil {
			t.Fatal(err)
		}
		// Random data does not compress: the bound is within 1%.
		if got.Required < int64(buf.Len()) || got.Required > int64(buf.Len())*102/100 || got.FullyAllocated != got.Required {
			t.Errorf("%s dense: measure %+v, file %d bytes", m, got, buf.Len())
		}
		t.Logf("%s dense %d bytes: measure %+v, file %d bytes", m, size, got, buf.Len())
	}
}

// ---------------------------------------------------------------------
// Benchmarks.
// ---------------------------------------------------------------------

const benchSize = 256 << 20

// benchSource writes 256 MiB of random or compressible data.
func benchSource(b *testing.B, compressible bool) string {
	src := filepath.Join(b.TempDir(), "src.raw")
	// Compressible data is text of words drawn at random from a small
	// vocabulary, numbers among them: repeats to match and skewed
	// literals, about 3x with zlib, like logs and source trees.
	words := strings.Fields("the of and to in is that for it as was with be by on not he this are or his from at " +
		"which but have an they you were her she there been one all we their has would when if so no will more " +
		"disk image block sector cluster table index bitmap header footer offset length extent")
	x := uint64(1)
	next := func() uint64 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		return x
	}
	formattest.WriteSource(b, src, benchSize, func(buf []byte, _ int64) {
		if !compressible {
			for j := 0; j < len(buf); j += 8 {
				binary.LittleEndian.PutUint64(buf[j:], next())
			}
		} else {
			text := buf[:0]
			for len(text) < len(buf) {
				r := next()
				if r%7 == 0 {
					text = fmt.Appendf(text, "%d ", r>>40)
				} else {
					text = append(append(text, words[r%uint64(len(words))]...), " \n"[r>>60&1])
				}
			}
			copy(buf, text)
		}
	})
	return src
}

// benchConvert times our conversion and qemu-img convert -O qcow2 -c of
// the same file alternately and reports the ratio (qemu time / ours).
func benchConvert(b *testing.B, compressible bool, opts map[string]string) {
	src := benchSource(b, compressible)
	dir := filepath.Dir(src)
	img := formattest.Open(b, src, "raw")
	wf := formattest.Writer(b, Name)
	dst := filepath.Join(dir, "dst.zvhd2")
	_, qerr := exec.LookPath("qemu-img")
	var ours, qemu time.Duration
	var outSize, qemuSize int64
	b.SetBytes(benchSize)
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		f, err := os.Create(dst)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := convert.Convert(context.Background(), img, wf, f, convert.Options{WriterOptions: opts}); err != nil {
			b.Fatal(err)
		}
		f.Close()
		ours += time.Since(start)
		fi, _ := os.Stat(dst)
		outSize = fi.Size()
		os.Remove(dst)
		if qerr == nil {
			qdst := filepath.Join(dir, "dst.qcow2")
			start = time.Now()
			if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", src, qdst).CombinedOutput(); err != nil {
				b.Fatalf("qemu-img: %v: %s", err, out)
			}
			qemu += time.Since(start)
			fi, _ := os.Stat(qdst)
			qemuSize = fi.Size()
			os.Remove(qdst)
		}
	}
	b.ReportMetric(ours.Seconds()/float64(b.N), "ours-s/op")
	if qerr == nil {
		b.ReportMetric(qemu.Seconds()/float64(b.N), "qemu-s/op")
		b.ReportMetric(float64(qemu)/float64(ours), "qemu/ours")
		b.ReportMetric(float64(qemuSize)/float64(outSize), "qemusize/oursize")
	}
	b.ReportMetric(float64(outSize), "outbytes")
}

// BenchmarkConvertRandom256M: raw → zvhd2 (zstd) of random data, against
// qemu-img convert -O qcow2 -c, the closest compressed conversion.
func BenchmarkConvertRandom256M(b *testing.B) { benchConvert(b, false, nil) }

// BenchmarkConvertCompressible256M: the same with compressible data.
func BenchmarkConvertCompressible256M(b *testing.B) { benchConvert(b, true, nil) }

// BenchmarkConvertCompressible256MZlib: the same with the zlib codec.
func BenchmarkConvertCompressible256MZlib(b *testing.B) {
	benchConvert(b, true, map[string]string{OptCompressionType: CompressionZlib})
}

// BenchmarkConvertEmpty1TiB converts an empty 1 TiB raw file: metadata
// only (a header, 16 bitmap segments, two more slots).
func BenchmarkConvertEmpty1TiB(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(b, src, 1<<40, formattest.Empty)
	img := formattest.Open(b, src, "raw")
	wf := formattest.Writer(b, Name)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := convert.Convert(context.Background(), img, wf, io.Discard, convert.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func allZero(b []byte) bool { return format.IsZero(b) }

// TestWriterSeeds: with ZVHD2_WRITE_SEEDS=1, adds our writer's output (a
// small sparse disk, both codecs) to the fuzz seeds in compact form.
func TestWriterSeeds(t *testing.T) {
	if os.Getenv("ZVHD2_WRITE_SEEDS") != "1" {
		t.Skip("set ZVHD2_WRITE_SEEDS=1 to regenerate")
	}
	src := vhdspectest.SeedSource(t, Name)
	fixedIdentity(t)
	seeds := map[string][]byte{}
	for _, m := range []string{CompressionZstd, CompressionZlib} {
		var out bytes.Buffer
		convertTo(t, formattest.Open(t, src, "raw"), Name, &out, convert.Options{WriterOptions: methodOpts(m)})
		seeds["writer-"+m+".sparse"] = out.Bytes()
	}
	sparse.WriteSeeds(t, "../../testdata/zvhd2", seeds)
}
