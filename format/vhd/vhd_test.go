package vhd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// qemu-img does not probe fixed VHDs (it looks for the cookie at offset 0
// only), so they are checked with the format forced on both sides.
var (
	dynamicVariants = []formattest.Variant{
		{Name: "default"},
		{Name: "dynamic", Args: []string{"-o", "subformat=dynamic"}},
		{Name: "dynamic-force-size", Args: []string{"-o", "subformat=dynamic,force_size=on"}},
	}
	fixedVariants = []formattest.Variant{
		{Name: "fixed", Args: []string{"-o", "subformat=fixed"}},
		{Name: "fixed-force-size", Args: []string{"-o", "subformat=fixed,force_size=on"}},
	}
)

func TestConformance(t *testing.T) {
	formattest.Run(t, Name, dynamicVariants, formattest.Options{})
	// 2040 GiB is the largest disk qemu-img creates as vpc.
	formattest.RunEmptyHuge(t, Name, "2040G", dynamicVariants, formattest.Options{})
}

// TestConformanceFixed forces the format on both tools: qemu-img probes a
// fixed VHD as raw (it looks for the footer only at offset 0).
func TestConformanceFixed(t *testing.T) {
	o := formattest.Options{Format: Name}
	formattest.Run(t, Name, fixedVariants, o)
	formattest.RunEmptyHuge(t, Name, "2040G", fixedVariants, o)
}

// TestInterleavedBlocks checks a write pattern that leaves allocated and
// unallocated blocks interleaved.
func TestInterleavedBlocks(t *testing.T) {
	dir := formattest.QemuDir(t)
	path := filepath.Join(dir, "img.vhd")
	formattest.Convert(t, writePattern(t, dir, 21<<20), path, Name)
	formattest.Check(t, path, formattest.Options{})
	img := openPath(t, path, format.Policy{})
	defer img.Close()
	// Blocks 0 and 1 hold data, 2..4 none, 5 data: the walk merges the
	// hole but never two blocks (a bitmap separates them).
	var got []format.Extent
	format.Walk(img, 0, func(e format.Extent) error { got = append(got, e); return nil })
	if len(got) < 4 || got[0].Status != format.Data || got[0].Length != 2<<20 || got[1].Status != format.Data ||
		got[2].Status != format.Zero || got[2].Start != 4<<20 || got[2].Length != 6<<20 {
		t.Errorf("extents %+v", got)
	}
	if got[1].Offset != got[0].Offset+2<<20+512 {
		t.Errorf("second block at host %d, first at %d", got[1].Offset, got[0].Offset)
	}
}

// writePattern writes a raw file with data in 2 MiB blocks 0, 1 and 5.
func writePattern(t *testing.T, dir string, size int64) string {
	p := filepath.Join(dir, "pattern.raw")
	b := make([]byte, size)
	rng := rand.New(rand.NewSource(7))
	rng.Read(b[:4<<20])
	rng.Read(b[10<<20 : 10<<20+777])
	formattest.WriteFile(t, p, b)
	return p
}

func openPath(t testing.TB, path string, p format.Policy) format.Image {
	t.Helper()
	img, err := format.Open(path, "", p)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// qemuImage makes an image with qemu-img and returns its bytes.
func qemuImage(t *testing.T, size string, args ...string) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img.vhd")
	formattest.Create(t, path, Name, size, args...)
	b := formattest.ReadFile(t, path)
	return b
}

// fixFooter recomputes the checksum of the footer at off.
func fixFooter(b []byte, off int) { fixSum(b[off:off+vhdspec.FooterSize], vhdspec.OffChecksum) }

func fixHeader(b []byte, off int) { fixSum(b[off:off+dynHeaderSize], dynChecksum) }

func fixSum(b []byte, field int) {
	binary.BigEndian.PutUint32(b[field:], 0)
	var sum uint32
	for _, c := range b {
		sum += uint32(c)
	}
	binary.BigEndian.PutUint32(b[field:], ^sum)
}

func openMem(data []byte, name string, p format.Policy) (format.Image, error) {
	if name == "" {
		name = filepath.Join(os.TempDir(), "mem.vhd")
	}
	f := &formattest.MemFile{Data: data, Path: name}
	return format.NewOpener(p).OpenImage(f, Name)
}

// dynImage is a qemu-made 10 MiB dynamic image with its first block
// written, and the offsets of its structures.
func dynImage(t *testing.T) (b []byte, hdr, bat int) {
	t.Helper()
	path := filepath.Join(formattest.QemuDir(t), "img.vhd")
	formattest.Create(t, path, Name, "10M")
	formattest.QemuIO(t, Name, path, "write -P 0x5a 0 4k")
	b = formattest.ReadFile(t, path)
	hdr = int(binary.BigEndian.Uint64(b[vhdspec.OffDataOffset:]))
	bat = int(binary.BigEndian.Uint64(b[hdr+dynTableOffset:]))
	return b, hdr, bat
}

// hostile is a case of formattest.RunHostileOn.
type hostile formattest.Hostile

func TestHostile(t *testing.T) {
	orig, hdr, bat := dynImage(t)
	fixed := qemuImage(t, "1M", "-o", "subformat=fixed")
	fend := len(fixed) - vhdspec.FooterSize
	put32 := func(b []byte, off int, v uint32) { binary.BigEndian.PutUint32(b[off:], v) }
	put64 := func(b []byte, off int, v uint64) { binary.BigEndian.PutUint64(b[off:], v) }
	seeds := map[string][]byte{"dyn": orig, "fixed": fixed}
	formattest.RunHostileOn(t, Name, func(name string) []byte { return seeds[name] }, []hostile{
		{"wrong magic", "dyn", func(b []byte) []byte {
			copy(b, "xonectix")
			copy(b[len(b)-vhdspec.FooterSize:], "xonectix")
			return b
		}, "wrong image type", formattest.AtOpen},
		{"tiny file", "dyn", func(b []byte) []byte { return b[:5] }, "wrong image type", formattest.AtOpen},
		{"footer checksum", "dyn", func(b []byte) []byte { b[vhdspec.OffCurrentSize] ^= 1; return b }, "footer checksum", formattest.AtOpen},
		{"truncated to 100 bytes", "dyn", func(b []byte) []byte { return b[:100] }, "footer data offset", formattest.AtOpen},
		{"truncated block", "dyn", func(b []byte) []byte { return b[:len(b)-4096] }, "bat entry 0", formattest.AtOpen},
		{"disk type", "dyn", func(b []byte) []byte { put32(b, vhdspec.OffDiskType, 7); fixFooter(b, 0); return b }, "footer disk type", formattest.AtOpen},
		{"header offset past EOF", "dyn", func(b []byte) []byte {
			put64(b, vhdspec.OffDataOffset, 1<<40)
			fixFooter(b, 0)
			return b
		}, "footer data offset", formattest.AtOpen},
		{"header cookie", "dyn", func(b []byte) []byte { copy(b[hdr:], "xxsparse"); return b }, "dynamic disk header cookie", formattest.AtOpen},
		{"header checksum", "dyn", func(b []byte) []byte { b[hdr+dynParentName] = 1; return b }, "dynamic disk header checksum", formattest.AtOpen},
		{"block size 0", "dyn", func(b []byte) []byte { put32(b, hdr+dynBlockSize, 0); fixHeader(b, hdr); return b }, "block size", formattest.AtOpen},
		{"block size 3000", "dyn", func(b []byte) []byte { put32(b, hdr+dynBlockSize, 3000); fixHeader(b, hdr); return b }, "block size", formattest.AtOpen},
		{"block size 2 GiB", "dyn", func(b []byte) []byte { put32(b, hdr+dynBlockSize, 1<<31); fixHeader(b, hdr); return b }, "bat entry 0", formattest.AtOpen},
		{"max table entries too small", "dyn", func(b []byte) []byte { put32(b, hdr+dynMaxEntries, 2); fixHeader(b, hdr); return b }, "max table entries", formattest.AtOpen},
		{"max table entries absurd", "dyn", func(b []byte) []byte {
			put32(b, hdr+dynMaxEntries, 0xFFFFFFF0)
			fixHeader(b, hdr)
			return b
		}, "table offset (BAT)", formattest.AtOpen},
		{"BAT past EOF", "dyn", func(b []byte) []byte { put64(b, hdr+dynTableOffset, 1<<50); fixHeader(b, hdr); return b }, "table offset", formattest.AtOpen},
		{"BAT at end of file", "dyn", func(b []byte) []byte {
			put64(b, hdr+dynTableOffset, uint64(len(b)-8))
			fixHeader(b, hdr)
			return b
		}, "table offset (BAT)", formattest.AtOpen},
		{"BAT entry past EOF", "dyn", func(b []byte) []byte { put32(b, bat+8, 0x10000000); return b }, "bat entry 2", formattest.AtOpen},
		{"BAT entry at the end", "dyn", func(b []byte) []byte { put32(b, bat+4, uint32(len(b)/512-1)); return b }, "bat entry 1", formattest.AtOpen},
		{"absurd current size", "dyn", func(b []byte) []byte {
			copy(b[vhdspec.OffCreatorApp:], "qem2")
			put64(b, vhdspec.OffCurrentSize, 1<<60)
			fixFooter(b, 0)
			return b
		}, "footer current size", formattest.AtOpen},
		{"absurd geometry", "fixed", func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[fend+vhdspec.OffGeometry:], 65535)
			b[fend+footerHeads], b[fend+footerSectors] = 16, 254
			fixFooter(b, fend)
			return b
		}, "footer disk geometry", formattest.AtOpen},
		{"fixed size beyond file", "fixed", func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[fend+vhdspec.OffGeometry:], 1000)
			fixFooter(b, fend)
			return b
		}, "footer disk geometry", formattest.AtOpen},
		{"dynamic footer only at end", "dyn", func(b []byte) []byte { copy(b, "xonectix"); return b }, "footer disk type", formattest.AtOpen},
		{"fixed footer checksum", "fixed", func(b []byte) []byte { b[fend+vhdspec.OffCurrentSize] ^= 1; return b }, "footer checksum", formattest.AtOpen},
		{"fixed truncated", "fixed", func(b []byte) []byte { return b[:len(b)-600] }, "wrong image type", formattest.AtOpen},
	})
}

// TestVirtualSize checks qemu's size rule on footers from other creators:
// CHS geometry unless the creator uses the current size or the geometry
// is the maximum.
func TestVirtualSize(t *testing.T) {
	orig, _, _ := dynImage(t)
	const cur = 10 << 20
	chs := int64(0x12e) * 4 * 17 * 512 // the geometry qemu-img chose for 10M
	cases := []struct {
		app      string
		geometry [3]int
		want     int64
	}{
		{"vpc ", [3]int{0x12e, 4, 17}, chs},
		{"qemu", [3]int{0x12e, 4, 17}, chs},
		{"vs  ", [3]int{0x12e, 4, 17}, chs},
		{"qem2", [3]int{0x12e, 4, 17}, cur},
		{"win ", [3]int{0x12e, 4, 17}, cur},
		{"d2v ", [3]int{0x12e, 4, 17}, cur},
		{"CTXS", [3]int{0x12e, 4, 17}, cur},
		{"tap\x00", [3]int{0x12e, 4, 17}, cur},
		{"tap ", [3]int{0x12e, 4, 17}, chs},
		{"vpc ", [3]int{65535, 16, 255}, cur},
		{"vpc ", [3]int{100, 4, 17}, 100 * 4 * 17 * 512},
	}
	for _, c := range cases {
		b := bytes.Clone(orig)
		copy(b[vhdspec.OffCreatorApp:], c.app)
		binary.BigEndian.PutUint64(b[vhdspec.OffCurrentSize:], cur)
		binary.BigEndian.PutUint16(b[vhdspec.OffGeometry:], uint16(c.geometry[0]))
		b[footerHeads], b[footerSectors] = byte(c.geometry[1]), byte(c.geometry[2])
		fixFooter(b, 0)
		img, err := openMem(b, "", format.Policy{})
		if err != nil {
			t.Errorf("%q %v: %v", c.app, c.geometry, err)
			continue
		}
		if img.Size() != c.want || img.Info().VirtualSize != c.want {
			t.Errorf("%q %v: size %d, want %d", c.app, c.geometry, img.Size(), c.want)
		}
		img.Close()
	}
}

// TestShortFooter: qemu pads a file to whole sectors, so a fixed image
// whose last byte is missing (the 511-byte footer) still opens.
func TestShortFooter(t *testing.T) {
	dir := formattest.QemuDir(t)
	path := formattest.Generate(t, dir, "img", Name, 1<<20, formattest.Dense, "-o", "subformat=fixed")
	full := formattest.ReadFile(t, path)
	ref := filepath.Join(dir, "ref.raw")
	formattest.Qemu(t, "convert", "-f", Name, "-O", "raw", path, ref)
	want, _ := os.ReadFile(ref)
	img, err := openMem(full[:len(full)-1], "", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got := make([]byte, img.Size())
	if n, err := img.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes differ from qemu-img convert of the whole image")
	}
}

// diffChain makes a parent image and a differencing child by patching a
// qemu-made dynamic image: type 4, the parent's unique id, the given
// locators, and some sectors of an allocated block marked as the parent's.
// It returns the child's path and the guest bytes it must read as.
func diffChain(t *testing.T, locators map[string]string) (string, []byte) {
	dir := formattest.QemuDir(t)
	const size = 10 << 20
	parent := formattest.Generate(t, dir, "parent", Name, size, formattest.Dense)
	childPath := filepath.Join(dir, "child.vhd")
	formattest.Create(t, childPath, Name, "10M")
	// Block 0 partly written, block 2 whole, the rest from the parent.
	formattest.QemuIO(t, Name, childPath, "write -P 0x11 0 64k", "write -P 0x22 4M 2M")
	ref := func(p string) []byte {
		out := filepath.Join(dir, filepath.Base(p)+".raw")
		formattest.Qemu(t, "convert", "-f", Name, "-O", "raw", p, out)
		b := formattest.ReadFile(t, out)
		return b
	}
	parentRaw, childRaw := ref(parent), ref(childPath)
	pb := formattest.ReadFile(t, parent)
	b := formattest.ReadFile(t, childPath)
	hdr := int(binary.BigEndian.Uint64(b[vhdspec.OffDataOffset:]))
	bat := int(binary.BigEndian.Uint64(b[hdr+dynTableOffset:]))
	binary.BigEndian.PutUint32(b[vhdspec.OffDiskType:], typeDifferencing)
	fixFooter(b, 0)
	copy(b[hdr+dynParentID:hdr+dynParentID+16], pb[vhdspec.OffUniqueID:vhdspec.OffUniqueID+16])
	// Block 0's bitmap: sectors 0..127 (64 KiB) are the child's, 128..135
	// are marked the parent's, then the child's again up to sector 300.
	bm := int(binary.BigEndian.Uint32(b[bat:])) * 512
	clear(b[bm : bm+512])
	for s := 0; s < 300; s++ {
		if s < 128 || s >= 136 {
			b[bm+s/8] |= 0x80 >> (s % 8)
		}
	}
	// Locator data goes before the trailing footer.
	tail := bytes.Clone(b[len(b)-vhdspec.FooterSize:])
	b = b[:len(b)-vhdspec.FooterSize]
	i := 0
	for _, platform := range []string{platformW2ru, platformW2ku} {
		name, ok := locators[platform]
		if !ok {
			continue
		}
		name = strings.ReplaceAll(name, "{dir}", dir)
		var data []byte
		for _, u := range utf16.Encode([]rune(name)) {
			data = binary.LittleEndian.AppendUint16(data, u)
		}
		loc := b[hdr+dynLocators+i*locatorSize:]
		copy(loc[locPlatform:], platform)
		binary.BigEndian.PutUint32(loc[4:], 1) // data space: one sector
		binary.BigEndian.PutUint32(loc[locDataLength:], uint32(len(data)))
		binary.BigEndian.PutUint64(loc[locDataOffset:], uint64(len(b)))
		b = append(b, data...)
		b = append(b, make([]byte, 512-len(data)%512)...)
		i++
	}
	fixHeader(b, hdr)
	b = append(b, tail...)
	formattest.WriteFile(t, childPath, b)
	want := bytes.Clone(parentRaw)
	copy(want[:300*512], childRaw[:300*512])
	copy(want[128*512:136*512], parentRaw[128*512:136*512])
	copy(want[4<<20:6<<20], childRaw[4<<20:6<<20])
	return childPath, want
}

func readAll(t *testing.T, img format.Image) []byte {
	t.Helper()
	got := make([]byte, img.Size())
	for off := int64(0); off < img.Size(); off += 100000 {
		n := min(100000, img.Size()-off)
		if m, err := img.ReadAt(got[off:off+n], off); int64(m) != n || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d) = %d, %v", off, m, err)
		}
	}
	return got
}

func TestDifferencing(t *testing.T) {
	child, want := diffChain(t, map[string]string{platformW2ru: `.\parent.vpc`, platformW2ku: `C:\images\parent.vpc`})
	img := openPath(t, child, format.Policy{})
	defer img.Close()
	info := img.Info()
	if info.BackingFile != "./parent.vpc" || info.Backing == nil || info.ClusterSize != 2<<20 {
		t.Errorf("info %+v", info)
	}
	if got := readAll(t, img); !bytes.Equal(got, want) {
		t.Fatalf("bytes differ from the expected merge at %d", formattest.FirstDiff(got, want))
	}
	var got []format.Extent
	if err := format.Walk(img, 0, func(e format.Extent) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	// Own data in sectors 0..127 and 136..299, the parent's elsewhere.
	exp := []struct{ start, length int64 }{{0, 128 * 512}, {136 * 512, 164 * 512}, {4 << 20, 2 << 20}}
	var own []format.Extent
	for _, e := range got {
		if e.Depth == 0 && e.Status == format.Data {
			own = append(own, e)
		} else if e.Depth != 1 || e.Status == format.Data && e.Offset < 0 {
			t.Errorf("extent %+v: want the parent's", e)
		}
	}
	if len(own) != len(exp) {
		t.Fatalf("own extents %+v, want %v", own, exp)
	}
	for i, e := range own {
		if e.Start != exp[i].start || e.Length != exp[i].length || e.Offset < 0 {
			t.Errorf("own extent %d = %+v, want %v", i, e, exp[i])
		}
	}
}

func TestDifferencingPolicy(t *testing.T) {
	// Only an absolute locator: refused unless outside references are
	// allowed.
	child, want := diffChain(t, map[string]string{platformW2ku: "{dir}/parent.vpc"})
	if _, err := format.Open(child, "", format.Policy{}); !errors.Is(err, format.ErrOutsideDirectory) {
		t.Fatalf("parent named by an absolute path: %v", err)
	}
	img0 := openPath(t, child, format.Policy{AllowOutside: true})
	if got := readAll(t, img0); !bytes.Equal(got, want) {
		t.Fatalf("absolute parent: bytes differ at %d", formattest.FirstDiff(got, want))
	}
	img0.Close()
	child2, want2 := diffChain(t, map[string]string{platformW2ru: "parent.vpc"})
	img := openPath(t, child2, format.Policy{NoBacking: true})
	defer img.Close()
	got := readAll(t, img)
	for s := 0; s < len(got)/512; s++ {
		sec := got[s*512 : s*512+512]
		own := s < 300 && (s < 128 || s >= 136) || s >= 8192 && s < 12288
		if own && !bytes.Equal(sec, want2[s*512:s*512+512]) || !own && !bytes.Equal(sec, make([]byte, 512)) {
			t.Fatalf("sector %d wrong without the parent", s)
		}
	}
	if _, err := format.Open(child2, "", format.Policy{Untrusted: true}); !errors.Is(err, format.ErrOutsideDirectory) {
		t.Fatalf("untrusted open: %v", err)
	}
	// A parent with another unique id is refused.
	b, _ := os.ReadFile(child2)
	hdr := int(binary.BigEndian.Uint64(b[vhdspec.OffDataOffset:]))
	b[hdr+dynParentID] ^= 0xff
	fixHeader(b, hdr)
	os.WriteFile(child2, b, 0o644)
	if _, err := format.Open(child2, "", format.Policy{}); err == nil || !strings.Contains(err.Error(), "parent unique id") {
		t.Fatalf("mismatched parent: %v", err)
	}
}

func BenchmarkOpenEmpty1TiB(b *testing.B) {
	formattest.RequireQemu(b)
	formattest.BenchOpenEmpty(b, formattest.CreateEmpty(b, Name, "1T"), "", 1)
}

// TestSeeds opens the fuzz seeds: hand-patched images with 4 KiB blocks
// (blocks 0, 1 and 100 allocated; the differencing one's block 1 has only
// its first four sectors) and a fixed image with a 511-byte footer.
func TestSeeds(t *testing.T) {
	want := map[string][]int64{ // data extents: start, length
		"dynamic-4k-blocks.vhd":      {0, 4096, 4096, 4096, 409600, 4096},
		"differencing-4k-blocks.vhd": {0, 4096, 4096, 2048, 409600, 4096},
		"dynamic-empty-1m.vhd":       {},
		"fixed-34k.vhd":              {0, 34816},
		"fixed-34k-511-footer.vhd":   {0, 34816},
	}
	for name, exp := range want {
		data := formattest.ReadFile(t, filepath.Join("../../testdata/vhd", name))
		img, err := openMem(data, "", format.Policy{NoBacking: true})
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var got []int64
		format.Walk(img, 0, func(e format.Extent) error {
			if e.Status == format.Data {
				got = append(got, e.Start, e.Length)
			}
			return nil
		})
		if !reflect.DeepEqual(got, exp) && !(len(got) == 0 && len(exp) == 0) {
			t.Errorf("%s: data extents %v, want %v", name, got, exp)
		}
		readAll(t, img)
		img.Close()
	}
}

func FuzzVHD(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/vhd")
	f.Fuzz(func(t *testing.T, data []byte) {
		formattest.Exercise(t, data, Name)
		// Exercise refuses every parent; without backing files a
		// differencing disk opens and its sector bitmaps get exercised.
		exerciseNoBacking(t, data)
	})
}

func exerciseNoBacking(t *testing.T, data []byte) {
	img, err := openMem(data, "/nonexistent/fuzz.vhd", format.Policy{NoBacking: true})
	if err != nil {
		return
	}
	defer img.Close()
	formattest.ExerciseImage(t, img)
}

func TestProbe(t *testing.T) {
	for name, want := range map[string]bool{
		"dynamic-empty-1m.vhd":     true,
		"fixed-34k.vhd":            true,
		"fixed-34k-511-footer.vhd": true,
	} {
		data := formattest.ReadFile(t, filepath.Join("../../testdata/vhd", name))
		f := &formattest.MemFile{Data: data, Path: name}
		if Probe(f) != want {
			t.Errorf("Probe(%s) = %v", name, !want)
		}
		if ft, err := format.Probe(f); err != nil || ft.Name != Name {
			t.Errorf("registry probe of %s: %v, %v", name, ft, err)
		}
	}
	for _, data := range [][]byte{nil, []byte("conecti"), make([]byte, 4096), append(make([]byte, 600), "conectix"...)} {
		if Probe(&formattest.MemFile{Data: data}) {
			t.Errorf("Probe matched %d bytes without a footer", len(data))
		}
		if _, err := Open(&formattest.MemFile{Data: data}); !errors.Is(err, format.ErrWrongType) {
			t.Errorf("Open of %d bytes: %v, want ErrWrongType", len(data), err)
		}
	}
}

func TestUnusedOnly(t *testing.T) {
	ff := bytes.Repeat([]byte{0xff}, 64)
	if !unusedOnly(nil) || !unusedOnly(ff[:4]) || !unusedOnly(ff) {
		t.Error("all-unused pieces not recognised")
	}
	// Any entry in use, wherever it is, even one differing in a single
	// bit, makes the piece not unused.
	for i := range ff {
		b := bytes.Clone(ff)
		b[i] = 0xfe
		if unusedOnly(b) {
			t.Errorf("entry %d in use not seen", i/4)
		}
	}
	if unusedOnly(make([]byte, 64)) {
		t.Error("zero entries seen as unused")
	}
}
