package zvhd

import (
	"bytes"
	stdzlib "compress/zlib"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec/vhdspectest"
	_ "github.com/diskimg/diskimg/format/raw"
	_ "github.com/diskimg/diskimg/format/vhd"
	_ "github.com/diskimg/diskimg/format/vhdx"
)

// zParsed is a ZVHD file as the independent parser below sees it.
type zParsed struct {
	desc    []byte // the 512-byte descriptor
	blocks  map[uint32][]byte
	records [][2]int64 // offset, length
	first2  [2][]byte  // the first two payloads
}

// parseZVHD checks a ZVHD file against §3 of docs/ZVHD2.md with literal
// offsets and the standard library's zlib, sharing no code with the
// package: header and trailer slots equal, cookie, checksum, the ZVHD2-only
// bytes zero, records framed and ascending, and the payloads one zlib
// stream that inflates to exactly 2 MiB per record.
func parseZVHD(t testing.TB, file []byte, strict bool) *zParsed {
	t.Helper()
	n := int64(len(file))
	if n%4096 != 0 || n < 2*4096 {
		t.Fatalf("file size %d", n)
	}
	hdr, trl := file[:4096], file[n-4096:]
	d := hdr[:512]
	var sum uint32
	for i, c := range d {
		if i < 64 || i >= 68 {
			sum += uint32(c)
		}
	}
	orig := binary.LittleEndian.Uint64(d[40:])
	switch {
	case !bytes.Equal(hdr, trl):
		t.Fatal("trailer slot is not a copy of the header slot")
	case string(d[:8]) != "stream\x00\x00":
		t.Fatalf("cookie %q", d[:8])
	case ^sum != binary.LittleEndian.Uint32(d[64:]):
		t.Fatal("checksum")
	case binary.LittleEndian.Uint32(d[8:]) != 2 || binary.LittleEndian.Uint32(d[12:]) != 0x10000 ||
		binary.LittleEndian.Uint64(d[16:]) != ^uint64(0) || string(d[28:32]) != "tap\x00" ||
		binary.LittleEndian.Uint32(d[32:]) != 0x10004 || binary.LittleEndian.Uint32(d[36:]) != 0 ||
		binary.LittleEndian.Uint32(d[60:]) != 4:
		t.Fatalf("fixed fields % x", d[8:64])
	case orig%512 != 0 || binary.LittleEndian.Uint64(d[48:]) != (orig+1<<30-1)/(1<<30)*(1<<30):
		t.Fatalf("orig_size %d, curr_size %d", orig, binary.LittleEndian.Uint64(d[48:]))
	case !isZero(d[84:]) || !isZero(hdr[512:]):
		t.Fatal("bytes 84.. of the descriptor slot are not zero")
	}
	p := &zParsed{desc: d, blocks: map[uint32][]byte{}}
	var stream []byte
	prev := int64(-1)
	for off := int64(4096); off < n-4096; {
		r := file[off:]
		plen := int64(binary.LittleEndian.Uint32(r[12:]))
		l := (48 + plen + 4 + 4095) / 4096 * 4096
		blk := int64(binary.LittleEndian.Uint32(r[16:]))
		switch {
		case string(r[:12]) != "hwstream bg\x00" || !isZero(r[20:48]):
			t.Fatalf("record at %d: header % x", off, r[:48])
		case off+l > n-4096 || string(r[l-4:l]) != "end\x00":
			t.Fatalf("record at %d: length %d or end marker", off, l)
		case strict && !isZero(r[48+plen:l-4]):
			t.Fatalf("record at %d: filler not zero", off)
		case blk <= prev || uint64(blk)*(2<<20) >= orig:
			t.Fatalf("record at %d: block %d after %d, orig_size %d", off, blk, prev, orig)
		}
		prev = blk
		if len(p.records) < 2 {
			p.first2[len(p.records)] = r[48 : 48+plen]
		}
		p.records = append(p.records, [2]int64{off, l})
		stream = append(stream, r[48:48+plen]...)
		off += l
	}
	if len(p.records) == 0 {
		return p
	}
	// One stream: a zlib header on the first payload only, each record
	// ending on a sync flush, and no end of stream.
	if stream[0] != 0x78 || (uint(stream[0])<<8|uint(stream[1]))%31 != 0 {
		t.Fatalf("zlib header % x", stream[:2])
	}
	for i := range p.records {
		r := file[p.records[i][0]:]
		plen := binary.LittleEndian.Uint32(r[12:])
		if !bytes.HasSuffix(r[48:48+plen], []byte{0, 0, 0xff, 0xff}) {
			t.Fatalf("record %d does not end on a sync flush", i)
		}
	}
	zr, err := stdzlib.NewReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range p.records {
		block := make([]byte, 2<<20)
		if _, err := io.ReadFull(zr, block); err != nil {
			t.Fatalf("record at %d: %v", rec[0], err)
		}
		if isZero(block) {
			t.Fatalf("record at %d stores a zero block", rec[0])
		}
		p.blocks[binary.LittleEndian.Uint32(file[rec[0]+16:])] = block
	}
	if n, err := zr.Read(make([]byte, 1)); n != 0 || err != io.ErrUnexpectedEOF {
		t.Fatalf("stream goes on past the last block: %d, %v", n, err)
	}
	return p
}

func isZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

func convertTo(t testing.TB, src format.Image, wf string, dst format.Target, opts convert.Options) {
	t.Helper()
	if _, err := convert.Convert(context.Background(), src, formattest.Writer(t, wf), dst, opts); err != nil {
		t.Fatalf("convert to %s: %v", wf, err)
	}
}

func convertFile(t testing.TB, src, srcFmt, dst, wf string) {
	t.Helper()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	convertTo(t, formattest.Open(t, src, srcFmt), wf, f, convert.Options{})
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWriterParserOnVector proves the parser on the driver's t1.zvhd.
func TestWriterParserOnVector(t *testing.T) {
	p := parseZVHD(t, vhdspectest.ReadVector(t, "t1.zvhd"), false)
	raw := vhdspectest.ReadVector(t, "t1.raw")
	if got := vhdspectest.Disk(p.blocks, int64(len(raw))); !bytes.Equal(got, raw) {
		t.Errorf("parsed t1.zvhd differs at %d", formattest.FirstDiff(got, raw))
	}
}

// TestWriterVector converts t1.raw and compares the descriptor with the
// driver's t1.zvhd field by field (all but timestamp, checksum and uuid),
// and the record layout.
func TestWriterVector(t *testing.T) {
	out := filepath.Join(t.TempDir(), "t1.zvhd")
	convertFile(t, vhdspectest.VectorPath(t, "t1.raw"), "raw", out, Name)
	data, _ := os.ReadFile(out)
	ours := parseZVHD(t, data, true)
	ref := parseZVHD(t, vhdspectest.ReadVector(t, "t1.zvhd"), false)
	for _, f := range []struct {
		name      string
		off, size int
	}{
		{"cookie", 0, 8}, {"features", 8, 4}, {"format version", 12, 4}, {"data offset", 16, 8},
		{"creator app", 28, 4}, {"creator version", 32, 4}, {"creator OS", 36, 4}, {"orig_size", 40, 8},
		{"curr_size", 48, 8}, {"geometry", 56, 4}, {"disk type", 60, 4}, {"saved..reserved", 84, 428},
	} {
		if a, b := ours.desc[f.off:f.off+f.size], ref.desc[f.off:f.off+f.size]; !bytes.Equal(a, b) {
			t.Errorf("%s: ours % x, driver's % x", f.name, a, b)
		}
	}
	if u := ours.desc[68:84]; u[6]>>4 != 4 {
		t.Errorf("uuid % x is not v4", u)
	}
	ts := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(binary.LittleEndian.Uint32(ours.desc[24:])) * time.Second)
	if d := time.Since(ts); d < -time.Minute || d > time.Hour {
		t.Errorf("timestamp %v", ts)
	}
	if len(ours.records) != 2 || ours.records[0][0] != 4096 {
		t.Errorf("records %v", ours.records)
	}
	// Like the driver's, the second payload continues the stream: it has
	// no zlib header of its own.
	if _, err := stdzlib.NewReader(bytes.NewReader(ours.first2[1])); err == nil {
		t.Error("the second payload decodes as a zlib stream on its own")
	}
	raw := vhdspectest.ReadVector(t, "t1.raw")
	if got := vhdspectest.Disk(ours.blocks, int64(len(raw))); !bytes.Equal(got, raw) {
		t.Errorf("data differs at %d", formattest.FirstDiff(got, raw))
	}
	t.Logf("ours %d bytes, driver's %d", len(data), len(vhdspectest.ReadVector(t, "t1.zvhd")))
}

// TestWriterRoundTrip: raw (and vpc, vhdx) → zvhd → raw, byte for byte,
// for every content and odd sizes; read back with the reader too.
func TestWriterRoundTrip(t *testing.T) {
	dir := t.TempDir()
	type src struct{ path, fmt, raw string }
	var srcs []src
	for _, size := range append([]int64{1000}, formattest.Sizes...) {
		for _, c := range []formattest.Content{formattest.Empty, formattest.Sparse, formattest.Dense, formattest.Zeros} {
			p := filepath.Join(dir, fmt.Sprintf("%s-%d.raw", c, size))
			formattest.MakeRaw(t, p, size, c)
			srcs = append(srcs, src{p, "raw", p})
			if size == 9<<20+1536 && (c == formattest.Sparse || c == formattest.Dense) {
				formattest.RequireQemu(t)
				for _, f := range []string{"vpc", "vhdx"} {
					img := strings.TrimSuffix(p, ".raw") + "." + f
					formattest.Convert(t, p, img, f)
					srcs = append(srcs, src{img, f, p})
				}
			}
		}
	}
	for _, s := range srcs {
		t.Run(filepath.Base(s.path), func(t *testing.T) {
			want, _ := os.ReadFile(s.raw)
			out := filepath.Join(t.TempDir(), "out.zvhd")
			convertFile(t, s.path, s.fmt, out, Name)
			data, _ := os.ReadFile(out)
			p := parseZVHD(t, data, true)
			srcImg := formattest.Open(t, s.path, s.fmt)
			if got := vhdspectest.Disk(p.blocks, int64(len(want))); !bytes.Equal(got, want) {
				t.Fatalf("parsed data differs at %d", formattest.FirstDiff(got, want))
			}
			img := formattest.Open(t, out, Name)
			if same, at, err := convert.Compare(context.Background(), srcImg, img); err != nil || !same {
				t.Fatalf("compare: same=%v at %d, %v", same, at, err)
			}
			back := filepath.Join(t.TempDir(), "back.raw")
			convertFile(t, out, Name, back, "raw")
			got, _ := os.ReadFile(back)
			padded := append(bytes.Clone(want), make([]byte, int((srcImg.Size()+511)/512*512)-len(want))...)
			if !bytes.Equal(got, padded) {
				t.Fatalf("zvhd → raw differs at %d (%d vs %d bytes)", formattest.FirstDiff(got, padded), len(got), len(padded))
			}
			m, err := convert.Measure(srcImg, 0, formattest.Writer(t, Name), convert.Options{})
			if err != nil || m.Required < int64(len(data)) || m.FullyAllocated < m.Required {
				t.Errorf("measure %+v, %v; file %d bytes", m, err, len(data))
			}
		})
	}
}

// TestWriterOver64GiB: a sparse disk past 64 GiB with data in a few
// blocks streams through and reads back.
func TestWriterOver64GiB(t *testing.T) {
	const size = 68723684385
	src := filepath.Join(t.TempDir(), "big.raw")
	f, _ := os.Create(src)
	f.Truncate(size)
	for _, b := range []int64{0, 32767, 32768, 32770} {
		f.WriteAt([]byte(fmt.Sprintf("block %d", b)), b*bs+100)
	}
	f.Close()
	var out bytes.Buffer
	convertTo(t, formattest.Open(t, src, "raw"), Name, &out, convert.Options{})
	p := parseZVHD(t, out.Bytes(), true)
	if len(p.records) != 4 {
		t.Fatalf("%d records", len(p.records))
	}
	for _, b := range []int64{0, 32767, 32768, 32770} {
		if want := fmt.Sprintf("block %d", b); string(p.blocks[uint32(b)][100:100+len(want)]) != want {
			t.Errorf("block %d: %q", b, p.blocks[uint32(b)][100:120])
		}
	}
	img, err := Open(&formattest.MemFile{Data: out.Bytes(), Path: "big.zvhd"})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if same, at, err := convert.Compare(context.Background(), formattest.Open(t, src, "raw"), img); err != nil || !same {
		t.Errorf("compare: same=%v at %d, %v", same, at, err)
	}
}

// TestWriterPipe streams into an os.Pipe: the bytes equal the file's but
// for the descriptor's timestamp, uuid and checksum.
func TestWriterPipe(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 33<<20+4096, formattest.Sparse)
	file := filepath.Join(dir, "out.zvhd")
	convertFile(t, src, "raw", file, Name)
	got := formattest.Piped(t, func(w *os.File) error {
		convertTo(t, formattest.Open(t, src, "raw"), Name, w, convert.Options{})
		return nil
	})
	want, _ := os.ReadFile(file)
	mask := func(b []byte) []byte {
		b = bytes.Clone(b)
		for _, slot := range []int{0, len(b) - 4096} {
			clear(b[slot+24 : slot+28]) // timestamp
			clear(b[slot+64 : slot+84]) // checksum, uuid
		}
		return b
	}
	if len(want) < 8192 || !bytes.Equal(mask(got), mask(want)) {
		t.Errorf("piped output differs from the file at %d (%d vs %d bytes)", formattest.FirstDiff(mask(got), mask(want)), len(got), len(want))
	}
	parseZVHD(t, got, true)
}

// TestWriterOptions: no -o options; -c accepted; checked before writing.
func TestWriterOptions(t *testing.T) {
	wf := formattest.Writer(t, Name)
	if err := wf.Validate(format.WriteOptions{Size: 1 << 20, Options: map[string]string{"compression_type": "zstd"}}); err == nil ||
		!strings.Contains(err.Error(), "valid options: none") {
		t.Errorf("unknown option: %v", err)
	}
	if err := wf.Validate(format.WriteOptions{Size: 1 << 20, Compress: true}); err != nil {
		t.Errorf("-c: %v", err)
	}
	m, err := wf.Measure(format.WriteOptions{Size: 1 << 40})
	if err != nil || m.Required != 8192 {
		t.Errorf("empty 1 TiB: %+v, %v", m, err)
	}
}

// BenchmarkWriterRandom256M converts 256 MiB of random data raw → zvhd
// and times qemu-img convert -O qcow2 -c of the same file alongside.
func BenchmarkWriterRandom256M(b *testing.B) {
	const size = 256 << 20
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(b, src, size, formattest.Dense)
	img := formattest.Open(b, src, "raw")
	wf := formattest.Writer(b, Name)
	_, qerr := exec.LookPath("qemu-img")
	var ours, qemu time.Duration
	b.SetBytes(size)
	for b.Loop() {
		start := time.Now()
		if _, err := convert.Convert(context.Background(), img, wf, io.Discard, convert.Options{}); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(start)
		if qerr == nil {
			start = time.Now()
			q := filepath.Join(dir, "q.qcow2")
			if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", src, q).CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
			qemu += time.Since(start)
			os.Remove(q)
		}
	}
	b.ReportMetric(ours.Seconds()/float64(b.N), "ours-s/op")
	if qerr == nil {
		b.ReportMetric(qemu.Seconds()/float64(b.N), "qemu-s/op")
		b.ReportMetric(float64(qemu)/float64(ours), "qemu/ours")
	}
}

// TestWriterSeeds: with ZVHD_WRITE_SEEDS=1, adds our writer's output for a
// small, compressible disk to the fuzz seeds.
func TestWriterSeeds(t *testing.T) {
	if os.Getenv("ZVHD_WRITE_SEEDS") != "1" {
		t.Skip("set ZVHD_WRITE_SEEDS=1 to regenerate")
	}
	src := vhdspectest.SeedSource(t, Name)
	var out bytes.Buffer
	convertTo(t, formattest.Open(t, src, "raw"), Name, &out, convert.Options{})
	formattest.WriteFiles(t, "../../testdata/zvhd", map[string][]byte{"writer.zvhd": out.Bytes()})
}
