package vmdk_test

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/vmdk"
)

// sparseSpec describes a compact hand-made sparse extent: 4 KiB grains, 8
// entries per grain table, so a few KiB hold a multi-table disk.
type sparseSpec struct {
	capacity   uint64 // sectors
	grains     map[int][]byte
	zero       []int // zeroed grains (sets the zero-grain flag)
	compressed bool
	footer     bool // stream-optimized with the header in a footer
}

const (
	tGrainSectors = 2
	tGrain        = tGrainSectors * 512
	tGTEs         = 8
	// Layout, in sectors: header 0, descriptor 1-2, grain directory 3,
	// grain tables from 4 (one sector each), grains after.
	tDescSector = 1
	tGDSector   = 3
)

func (s sparseSpec) build() []byte {
	le := binary.LittleEndian
	nGT := int((s.capacity + tGrainSectors*tGTEs - 1) / (tGrainSectors * tGTEs))
	gtStart := tGDSector + 1 + (nGT*4-1)/512
	dataStart := gtStart + nGT
	img := make([]byte, dataStart*512)
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=%q\n\nRW %d SPARSE \"x.vmdk\"\n",
		map[bool]string{false: "monolithicSparse", true: "streamOptimized"}[s.compressed], s.capacity)
	copy(img[tDescSector*512:], desc)
	for i := 0; i < nGT; i++ {
		le.PutUint32(img[tGDSector*512+i*4:], uint32(gtStart+i))
	}
	setGTE := func(g int, v uint32) { le.PutUint32(img[(gtStart+g/tGTEs)*512+(g%tGTEs)*4:], v) }
	for _, g := range s.zero {
		setGTE(g, 1)
	}
	for g := 0; g < nGT*tGTEs; g++ {
		data, ok := s.grains[g]
		if !ok {
			continue
		}
		sec := uint32(len(img) / 512)
		setGTE(g, sec)
		if !s.compressed {
			img = append(img, data...)
		} else {
			var z bytes.Buffer
			w := zlib.NewWriter(&z)
			w.Write(data)
			w.Close()
			m := make([]byte, 12)
			le.PutUint64(m, uint64(g*tGrainSectors))
			le.PutUint32(m[8:], uint32(z.Len()))
			img = append(append(img, m...), z.Bytes()...)
		}
		img = append(img, make([]byte, (512-len(img)%512)%512)...)
	}
	hdr := make([]byte, 512)
	copy(hdr, "KDMV")
	flags := uint32(3)
	if len(s.zero) > 0 {
		flags |= 4
	}
	version := uint32(1)
	if s.compressed {
		flags |= 3 << 16
		version = 3
		le.PutUint16(hdr[77:], 1)
	}
	le.PutUint32(hdr[4:], version)
	le.PutUint32(hdr[8:], flags)
	le.PutUint64(hdr[12:], s.capacity)
	le.PutUint64(hdr[20:], tGrainSectors)
	le.PutUint64(hdr[28:], tDescSector)
	le.PutUint64(hdr[36:], 2)
	le.PutUint32(hdr[44:], tGTEs)
	le.PutUint64(hdr[56:], tGDSector)
	le.PutUint64(hdr[64:], uint64(dataStart))
	copy(hdr[73:], "\n \r\n")
	copy(img, hdr)
	if s.footer {
		le.PutUint64(img[56:], 0xffffffffffffffff)
		marker := make([]byte, 512)
		le.PutUint64(marker, 1)
		le.PutUint32(marker[12:], 3)
		img = append(append(append(img, marker...), hdr...), make([]byte, 512)...)
	}
	return img
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// sample is a disk of 100 grains (13 grain tables, the last grain short)
func sample(compressed, footer bool) (sparseSpec, []byte) {
	s := sparseSpec{capacity: 100*tGrainSectors - 1, compressed: compressed, footer: footer,
		grains: map[int][]byte{}}
	want := make([]byte, s.capacity*512)
	for _, g := range []int{0, 1, 2, 9, 40, 99} {
		n := min(tGrain, len(want)-g*tGrain)
		s.grains[g] = pattern(n, byte(g))
		copy(want[g*tGrain:], s.grains[g])
	}
	if !compressed {
		s.zero = []int{5, 6}
	}
	return s, want
}

func openMem(t *testing.T, data []byte) (format.Image, error) {
	t.Helper()
	f := &formattest.MemFile{Data: data, Path: filepath.Join(t.TempDir(), "x.vmdk")}
	return format.NewOpener(format.Policy{Untrusted: true}).OpenImage(f, "vmdk")
}

func readAll(t *testing.T, img format.Image) ([]byte, error) {
	got := make([]byte, img.Size())
	n, err := img.ReadAt(got, 0)
	if err == io.EOF && int64(n) == img.Size() {
		err = nil
	}
	return got, err
}

// TestHandMade reads compact hand-made sparse, compressed and footer
// extents and checks bytes and map against what was written.
func TestHandMade(t *testing.T) {
	for _, c := range []struct {
		name               string
		compressed, footer bool
	}{{"sparse", false, false}, {"compressed", true, false}, {"footer", true, true}} {
		t.Run(c.name, func(t *testing.T) {
			s, want := sample(c.compressed, c.footer)
			img, err := openMem(t, s.build())
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if img.Size() != int64(len(want)) {
				t.Fatalf("size %d, want %d", img.Size(), len(want))
			}
			got, err := readAll(t, img)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read: %v, equal %v", err, bytes.Equal(got, want))
			}
			var data [][2]int64
			err = format.Walk(img, 0, func(e format.Extent) error {
				if e.Status == format.Data {
					if e.Compressed != c.compressed || (c.compressed && e.Offset != -1) {
						t.Errorf("extent %+v: compressed flag or offset wrong", e)
					}
					data = append(data, [2]int64{e.Start / tGrain, e.End()})
				}
				if e.Status == format.Zero && (e.Start != 5*tGrain || e.Length != 2*tGrain) {
					t.Errorf("zero extent %+v, want grains 5-6", e)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(data) != fmt.Sprintf("[[0 %d] [9 %d] [40 %d] [99 %d]]", 3*tGrain, 10*tGrain, 41*tGrain, len(want)) {
				t.Errorf("data runs %v", data)
			}
			sp := img.Info().Specific.(*vmdk.Specific)
			if sp.CID != 0x12345678 || sp.ParentCID != 0xffffffff || len(sp.Extents) != 1 {
				t.Errorf("specific %+v", sp)
			}
		})
	}
}

// TestHostile patches headers and tables of a valid image; each must give
// an error naming the field, never a panic or made-up zeros.
// hostile is a patched sample and the error it must give.
type hostile formattest.Hostile

func TestHostile(t *testing.T) {
	le := binary.LittleEndian
	s, _ := sample(false, false)
	good := s.build()
	cs, _ := sample(true, false)
	goodC := cs.build()
	fs, _ := sample(true, true)
	goodF := fs.build()
	gt := func(b []byte, g int) int { return int(le.Uint32(b[tGDSector*512+g/tGTEs*4:]))*512 + g%tGTEs*4 }
	// restream replaces compressed grain g's stream with one of payload
	// (short enough to fit where the old one was).
	restream := func(b []byte, g int, payload []byte) []byte {
		var z bytes.Buffer
		w := zlib.NewWriter(&z)
		w.Write(payload)
		w.Close()
		off := int(le.Uint32(b[gt(b, g):])) * 512
		le.PutUint32(b[off+8:], uint32(z.Len()))
		copy(b[off+12:], z.Bytes())
		return b
	}
	seeds := map[string][]byte{"good": good, "goodC": goodC, "goodF": goodF}
	formattest.RunHostileOn(t, "vmdk", func(name string) []byte { return seeds[name] }, []hostile{
		{"wrong magic", "good", func(b []byte) []byte { copy(b, "KDMX"); return b }, "wrong image type", formattest.AtOpen},
		{"truncated header", "good", func(b []byte) []byte { return b[:300] }, "sparse extent header", formattest.AtOpen},
		{"version", "good", func(b []byte) []byte { le.PutUint32(b[4:], 9); return b }, "version", formattest.AtOpen},
		{"capacity", "good", func(b []byte) []byte { le.PutUint64(b[12:], 1<<62); return b }, "capacity", formattest.AtOpen},
		{"grain size zero", "good", func(b []byte) []byte { le.PutUint64(b[20:], 0); return b }, "grainSize", formattest.AtOpen},
		{"grain size odd", "good", func(b []byte) []byte { le.PutUint64(b[20:], 12); return b }, "grainSize", formattest.AtOpen},
		{"grain size huge", "good", func(b []byte) []byte { le.PutUint64(b[20:], 1<<40); return b }, "grainSize", formattest.AtOpen},
		{"gtes zero", "good", func(b []byte) []byte { le.PutUint32(b[44:], 0); return b }, "numGTEsPerGT", formattest.AtOpen},
		{"gtes huge", "good", func(b []byte) []byte { le.PutUint32(b[44:], 1<<20); return b }, "numGTEsPerGT", formattest.AtOpen},
		{"gd past EOF", "good", func(b []byte) []byte { le.PutUint64(b[56:], 1<<40); return b }, "gdOffset", formattest.AtOpen},
		{"gd table past EOF", "good", func(b []byte) []byte { le.PutUint64(b[56:], uint64(len(b)/512)); return b }, "grain directory", formattest.AtOpen},
		{"overhead", "good", func(b []byte) []byte { le.PutUint64(b[64:], 1<<50); return b }, "overHead", formattest.AtOpen},
		{"compress algorithm", "good", func(b []byte) []byte { le.PutUint16(b[77:], 7); return b }, "compressAlgorithm", formattest.AtOpen},
		{"descriptor past EOF", "good", func(b []byte) []byte { le.PutUint64(b[28:], 1<<30); return b }, "descriptorOffset", formattest.AtOpen},
		{"no CID", "good", func(b []byte) []byte { copy(b[512:], "# Disk DescriptorFile\nversion=1\n\x00"); return b }, "CID", formattest.AtOpen},
		{"grain table past EOF", "good", func(b []byte) []byte {
			le.PutUint32(b[tGDSector*512+4:], 1<<30)
			return b
		}, "grain directory entry 1", formattest.AtOpenOrRead},
		{"grain past EOF", "good", func(b []byte) []byte { le.PutUint32(b[gt(b, 9):], uint32(len(b)/512)); return b }, "grain table entry", formattest.AtOpenOrRead},
		{"grain past EOF, walk", "good", func(b []byte) []byte { le.PutUint32(b[gt(b, 40):], 1<<31); return b }, "grain table entry", formattest.AtOpenOrRead},
		{"truncated data", "good", func(b []byte) []byte { return b[:len(b)-100] }, "grain table entry", formattest.AtOpenOrRead},
		{"marker size huge", "goodC", func(b []byte) []byte {
			le.PutUint32(b[int(le.Uint32(b[gt(b, 9):]))*512+8:], 1<<30)
			return b
		}, "grain marker size", formattest.AtOpenOrRead},
		{"marker size past EOF", "goodC", func(b []byte) []byte {
			le.PutUint32(b[int(le.Uint32(b[gt(b, 99):]))*512+8:], 8000)
			return b
		}, "grain marker size", formattest.AtOpenOrRead},
		{"corrupt deflate", "goodC", func(b []byte) []byte {
			off := int(le.Uint32(b[gt(b, 1):]))*512 + 12
			copy(b[off:], "garbage!")
			return b
		}, "compressed grain", formattest.AtOpenOrRead},
		{"grain inflates short", "goodC", func(b []byte) []byte { return restream(b, 1, make([]byte, 100)) }, "inflates to 100 bytes", formattest.AtOpenOrRead},
		{"last grain inflates short", "goodC", func(b []byte) []byte { return restream(b, 99, make([]byte, 100)) }, "inflates to 100 bytes", formattest.AtOpenOrRead},
		{"grain inflates long", "goodC", func(b []byte) []byte { return restream(b, 2, make([]byte, tGrain+1)) }, "inflates beyond", formattest.AtOpenOrRead},
		{"grain checksum", "goodC", func(b []byte) []byte {
			b = restream(b, 9, make([]byte, tGrain))
			off := int(le.Uint32(b[gt(b, 9):])) * 512
			b[off+12+int(le.Uint32(b[off+8:]))-1] ^= 1
			return b
		}, "checksum", formattest.AtOpenOrRead},
		{"footer marker", "goodF", func(b []byte) []byte { le.PutUint32(b[len(b)-1536+12:], 2); return b }, "footer marker", formattest.AtOpen},
		{"footer magic", "goodF", func(b []byte) []byte { copy(b[len(b)-1024:], "XXXX"); return b }, "footer magic", formattest.AtOpen},
		{"footer eos", "goodF", func(b []byte) []byte { b[len(b)-500] = 0; b[len(b)-512] = 1; return b }, "end-of-stream", formattest.AtOpen},
		{"footer truncated", "goodF", func(b []byte) []byte { return b[:len(b)-512] }, "footer", formattest.AtOpen},
	})
}

// TestHostileDescriptor feeds bad descriptor files.
func TestHostileDescriptor(t *testing.T) {
	dir := t.TempDir()
	formattest.WriteFile(t, filepath.Join(dir, "ext.raw"), make([]byte, 4096))
	head := "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n"
	for _, c := range []struct{ name, text, want string }{
		{"no create type", head + "RW 8 FLAT \"ext.raw\" 0\n", "createType"},
		{"bad create type", head + "createType=\"weird\"\nRW 8 FLAT \"ext.raw\" 0\n", "createType"},
		{"no extents", head + "createType=\"monolithicFlat\"\n", "extent"},
		{"flat without offset", head + "createType=\"monolithicFlat\"\nRW 8 FLAT \"ext.raw\"\n", "extent description"},
		{"flat past EOF", head + "createType=\"monolithicFlat\"\nRW 16 FLAT \"ext.raw\" 0\n", "past the end"},
		{"flat offset past EOF", head + "createType=\"monolithicFlat\"\nRW 8 FLAT \"ext.raw\" 1\n", "past the end"},
		{"huge extent", head + "createType=\"monolithicFlat\"\nRW 999999999999999999 FLAT \"ext.raw\" 0\n", "too large"},
		{"sparse not sparse", head + "createType=\"twoGbMaxExtentSparse\"\nRW 8 SPARSE \"ext.raw\"\n", "magic"},
		{"missing file", head + "createType=\"monolithicFlat\"\nRW 8 FLAT \"nope.raw\" 0\n", "nope.raw"},
		{"protocol", head + "createType=\"monolithicFlat\"\nRW 8 FLAT \"nbd://host/x\" 0\n", "protocol"},
		{"parent outside", strings.Replace(head, "CID=1\n", "CID=1\nparentFileNameHint=\"/etc/passwd\"\n", 1) +
			"createType=\"monolithicFlat\"\nRW 8 FLAT \"ext.raw\" 0\n", "outside"},
		{"no CID", "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"ext.raw\" 0\n", "CID"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, "d.vmdk")
			formattest.WriteFile(t, p, []byte(c.text))
			img, err := format.Open(p, "vmdk", format.Policy{})
			if err == nil {
				img.Close()
				t.Fatalf("opened; want an error naming %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not name %q", err, c.want)
			}
		})
	}
	// A good one for contrast, with an ignored ZERO line as qemu ignores it.
	p := filepath.Join(dir, "ok.vmdk")
	text := head + "createType=\"monolithicFlat\"\nRW 8 FLAT \"ext.raw\" 0\nRW 8 ZERO\nRDONLY 8 FLAT \"ext.raw\" 0\n"
	formattest.WriteFile(t, p, []byte(text))
	img := open(t, p, format.Policy{})
	if img.Size() != 4096 {
		t.Errorf("size %d, want 4096", img.Size())
	}
}

// TestExtentsShareFiles: a descriptor naming one file in thousands of
// extents, under several spellings, holds one descriptor open for it,
// and reads each extent at its own offset.
func TestExtentsShareFiles(t *testing.T) {
	dir := t.TempDir()
	const n = 3000
	data := make([]byte, n*512)
	for i := range n {
		data[i*512] = byte(i) | 1
	}
	formattest.WriteFile(t, filepath.Join(dir, "ext.raw"), data)
	var b strings.Builder
	b.WriteString("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n")
	for i := range n {
		name := []string{"ext.raw", "./ext.raw", ".//ext.raw"}[i%3]
		fmt.Fprintf(&b, "RW 1 FLAT %q %d\n", name, n-1-i)
	}
	p := filepath.Join(dir, "d.vmdk")
	formattest.WriteFile(t, p, []byte(b.String()))
	fds := func() int { e, _ := os.ReadDir("/proc/self/fd"); return len(e) }
	before := fds()
	img := open(t, p, format.Policy{})
	if d := fds() - before; d > 4 {
		t.Errorf("%d descriptors open for %d extents of one file", d, n)
	}
	sector := make([]byte, 512)
	for _, i := range []int{0, 1, 2, n / 2, n - 1} {
		if _, err := img.ReadAt(sector, int64(i)*512); err != nil {
			t.Fatal(err)
		}
		if want := data[(n-1-i)*512]; sector[0] != want {
			t.Errorf("extent %d reads %#x, want %#x", i, sector[0], want)
		}
	}
}

// TestWriteSeeds regenerates the fuzz seeds in testdata/vmdk when
// VMDK_WRITE_SEEDS=1.
func TestWriteSeeds(t *testing.T) {
	if os.Getenv("VMDK_WRITE_SEEDS") != "1" {
		t.Skip("set VMDK_WRITE_SEEDS=1 to rewrite testdata/vmdk")
	}
	desc := "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"x-flat.vmdk\" 0\n\n#DDB\nddb.adapterType = \"ide\"\n"
	seeds := map[string][]byte{"descriptor.vmdk": []byte(desc)}
	for name, c := range map[string][2]bool{"sparse.vmdk": {false, false}, "stream.vmdk": {true, false}, "footer.vmdk": {true, true}} {
		s, _ := sample(c[0], c[1])
		seeds[name] = s.build()
	}
	formattest.WriteFiles(t, "../../testdata/vmdk", seeds)
}
