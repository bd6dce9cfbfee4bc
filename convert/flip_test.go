package convert_test

// Byte flips in the metadata of every output format diskimg writes: each
// flip must be caught by --verify (convert.Verify: contents and the
// structural check), or else qemu-img check and qemu-img compare must both
// still pass on the flipped file (the flip is harmless). The files are our
// own outputs with one byte changed, so running qemu-img check and compare
// on them is safe.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// structure is one metadata structure of an output file.
type structure struct {
	name   string
	off, n int64
}

var (
	be = binary.BigEndian
	le = binary.LittleEndian
)

// flipOutputs are the outputs walked, with the function that lists their
// metadata structures. qemu-img checks the formats with qemuCheck (for the
// others it says it cannot, exit 63). It reads none of Huawei's: for
// those, harmless lists the structures docs/ZVHD2.md says no reader looks
// at, with the section that says so; a flip verify does not catch must
// lie in one of them (verify has already re-read the flipped file with our
// reader and compared its contents).
var flipOutputs = []struct {
	name, fmt, opts string
	compress        bool
	qemuCheck       bool
	structures      func(t *testing.T, b []byte) []structure
	harmless        map[string]string
}{
	{"qcow2", "qcow2", "", false, true, qcow2Structures, nil},
	{"qcow2-c", "qcow2", "", true, true, qcow2Structures, nil},
	{"qcow2-v2-4k", "qcow2", "compat=0.10,cluster_size=4096", false, true, qcow2Structures, nil},
	{"vmdk", "vmdk", "", false, true, vmdkStructures, nil},
	{"vmdk-stream", "vmdk", "subformat=streamOptimized", false, true, vmdkStreamStructures, nil},
	{"vpc", "vpc", "", false, false, vhdStructures, nil},
	{"vpc-fixed", "vpc", "subformat=fixed", false, false, vhdStructures, nil},
	{"vhdx", "vhdx", "", false, true, vhdxStructures, nil},
	{"vhdx-fixed", "vhdx", "subformat=fixed,block_size=1M", false, true, vhdxStructures, nil},
	{"zvhd2", "zvhd2", "", false, false, zvhd2Structures, zvhdHarmless},
	{"zvhd2-zlib", "zvhd2", "compression_type=zlib", false, false, zvhd2Structures, zvhdHarmless},
	{"zvhd", "zvhd", "", false, false, zvhdStructures, zvhdHarmless},
}

// zvhdHarmless are the bytes of a ZVHD2 or ZVHD file no reader looks at
// and whose content the writers do not agree on, so that the check cannot
// warn about them either.
var zvhdHarmless = map[string]string{
	"record filler": "docs/ZVHD2.md §1.4: the filler up to the end marker; the C writer leaves stale bytes there: write zeros, ignore it when reading",
}

func qcow2Structures(t *testing.T, b []byte) []structure {
	cs := int64(1) << be.Uint32(b[20:])
	hdrLen := int64(72)
	if be.Uint32(b[4:]) >= 3 {
		hdrLen = int64(be.Uint32(b[100:]))
	}
	s := []structure{{"header", 0, hdrLen}}
	// Header extensions, up to and including the end marker.
	ext := hdrLen
	for ext+8 <= cs {
		typ, n := be.Uint32(b[ext:]), int64(be.Uint32(b[ext+4:]))
		end := ext + 8 + (n+7)/8*8
		s = append(s, structure{fmt.Sprintf("header extension 0x%x", typ), ext, end - ext})
		if typ == 0 {
			break
		}
		ext = end
	}
	l1Off, l1Size := int64(be.Uint64(b[40:])), int64(be.Uint32(b[36:]))
	s = append(s, structure{"L1 table", l1Off, l1Size * 8})
	for i := range l1Size {
		if l2 := int64(be.Uint64(b[l1Off+i*8:]) & 0x00fffffffffffe00); l2 != 0 {
			s = append(s, structure{fmt.Sprintf("L2 table %d", i), l2, cs})
		}
	}
	rtOff, rtClusters := int64(be.Uint64(b[48:])), int64(be.Uint32(b[56:]))
	s = append(s, structure{"refcount table", rtOff, rtClusters * cs})
	for i := range rtClusters * cs / 8 {
		if rb := int64(be.Uint64(b[rtOff+i*8:])) &^ (cs - 1); rb != 0 {
			s = append(s, structure{fmt.Sprintf("refcount block %d", i), rb, cs})
		}
	}
	return s
}

// vmdkTables lists a grain directory of gds entries at sector gd and the
// grain tables it names.
func vmdkTables(b []byte, what string, gd, gds, gtBytes int64) []structure {
	s := []structure{{what + " directory", gd * 512, gds * 4}}
	for i := range gds {
		if sec := int64(le.Uint32(b[gd*512+i*4:])); sec != 0 {
			s = append(s, structure{fmt.Sprintf("%s table %d", what, i), sec * 512, gtBytes})
		}
	}
	return s
}

func vmdkGDs(b []byte) (gds, gtBytes int64) {
	capacity, grain, gtes := int64(le.Uint64(b[12:])), int64(le.Uint64(b[20:])), int64(le.Uint32(b[44:]))
	return (capacity/grain + gtes - 1) / gtes, gtes * 4
}

// vmdkHeader is a sparse header at off: its fields, then its padding.
func vmdkHeader(name string, off int64) []structure {
	return []structure{{name, off, 80}, {name + " padding", off + 80, 512 - 80}}
}

func vmdkStructures(t *testing.T, b []byte) []structure {
	s := append(vmdkHeader("header", 0), structure{"descriptor", int64(le.Uint64(b[28:])) * 512, int64(le.Uint64(b[36:])) * 512})
	gds, gtBytes := vmdkGDs(b)
	s = append(s, vmdkTables(b, "redundant grain", int64(le.Uint64(b[48:])), gds, gtBytes)...)
	return append(s, vmdkTables(b, "grain", int64(le.Uint64(b[56:])), gds, gtBytes)...)
}

func vmdkStreamStructures(t *testing.T, b []byte) []structure {
	size := int64(len(b))
	footer := size - 1024
	// A marker is 16 bytes: value, size, type; the rest of its sector is
	// padding.
	s := append(vmdkHeader("header", 0), vmdkHeader("footer", footer)...)
	s = append(s, structure{"descriptor", int64(le.Uint64(b[28:])) * 512, int64(le.Uint64(b[36:])) * 512},
		structure{"footer marker", footer - 512, 16}, structure{"end-of-stream marker", size - 512, 16})
	gds, gtBytes := vmdkGDs(b[footer:])
	gd := int64(le.Uint64(b[footer+56:]))
	s = append(s, structure{"grain directory marker", (gd - 1) * 512, 16})
	for _, x := range vmdkTables(b, "grain", gd, gds, gtBytes) {
		s = append(s, x)
		if x.name == "grain directory" {
			continue
		}
		s = append(s, structure{x.name + " marker", x.off - 512, 16})
		// The markers of the grains the table maps: LBA and size.
		for k := int64(0); k < gtBytes; k += 4 {
			if sec := int64(le.Uint32(b[x.off+k:])); sec != 0 {
				s = append(s, structure{fmt.Sprintf("grain marker at sector %d", sec), sec * 512, 12})
			}
		}
	}
	return s
}

func vhdStructures(t *testing.T, b []byte) []structure {
	size := int64(len(b))
	s := []structure{{"footer", size - 512, 512}}
	if be.Uint32(b[size-512+60:]) == 2 { // fixed
		return s
	}
	hdr := int64(be.Uint64(b[16:]))
	bat, entries, blockSize := int64(be.Uint64(b[hdr+16:])), int64(be.Uint32(b[hdr+28:])), int64(be.Uint32(b[hdr+32:]))
	s = append(s, structure{"footer copy", 0, 512}, structure{"dynamic disk header", hdr, 1024},
		structure{"BAT", bat, entries * 4}, structure{"BAT padding", bat + entries*4, (entries*4+511)/512*512 - entries*4})
	bitmap := (blockSize/512/8 + 511) / 512 * 512
	for i := range entries {
		if e := be.Uint32(b[bat+i*4:]); e != 0xffffffff {
			s = append(s, structure{fmt.Sprintf("block bitmap %d", i), int64(e) * 512, bitmap})
		}
	}
	return s
}

func vhdxStructures(t *testing.T, b []byte) []structure {
	s := []structure{{"file type identifier", 0, 64 << 10}, {"header 1", 64 << 10, 4096}, {"header 2", 128 << 10, 4096},
		{"region table 1", 192 << 10, 64 << 10}, {"region table 2", 256 << 10, 64 << 10}}
	cur := int64(64 << 10)
	if le.Uint64(b[128<<10+8:]) > le.Uint64(b[64<<10+8:]) {
		cur = 128 << 10
	}
	if n := int64(le.Uint32(b[cur+68:])); n > 0 {
		s = append(s, structure{"log", int64(le.Uint64(b[cur+72:])), n})
	}
	rt := int64(192 << 10)
	batGUID := []byte{0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08}
	for i := range int64(le.Uint32(b[rt+8:])) {
		e := rt + 16 + i*32
		off, n := int64(le.Uint64(b[e+16:])), int64(le.Uint32(b[e+24:]))
		if bytes.Equal(b[e:e+16], batGUID) {
			s = append(s, structure{"BAT", off, n})
			continue
		}
		// The metadata region: its table, then the items it lists.
		s = append(s, structure{"metadata table", off, 64 << 10})
		for k := range int64(le.Uint16(b[off+10:])) {
			m := off + 32 + k*32
			s = append(s, structure{fmt.Sprintf("metadata item %d", k), off + int64(le.Uint32(b[m+16:])), int64(le.Uint32(b[m+20:]))})
		}
	}
	return s
}

// zvhdSlot is a descriptor slot of ZVHD2 or ZVHD (docs/ZVHD2.md §1.2):
// the descriptor, then padding.
func zvhdSlot(name string, off int64) []structure {
	return []structure{{name + " descriptor", off, 512}, {name + " slot padding", off + 512, 4096 - 512}}
}

// zvhdRecord lists the parts of the record at off (§1.4): header, the
// payload's codec framing, filler and end marker. A ZVHD2 zstd payload is
// one frame: its header and every block header (§2.3); a zlib payload
// starts with the zlib header (for ZVHD only the first, §3.2) and ends in
// a sync flush.
func zvhdRecord(b []byte, off int64, zstd, zlibHeader bool) []structure {
	p := int64(le.Uint32(b[off+12:]))
	l := (48 + p + 4 + 4095) / 4096 * 4096
	payload := off + 48
	s := []structure{{fmt.Sprintf("record header at %d", off), off, 48}}
	if zstd {
		fhd := b[payload+4]
		hdr := int64(5 + [4]int{0, 2, 4, 8}[fhd>>6])
		if fhd&0x20 != 0 && fhd>>6 == 0 {
			hdr++
		}
		if fhd&0x20 == 0 {
			hdr++ // window descriptor
		}
		s = append(s, structure{fmt.Sprintf("zstd frame header at %d", payload), payload, hdr})
		for pos := payload + hdr; ; {
			h := int64(b[pos]) | int64(b[pos+1])<<8 | int64(b[pos+2])<<16
			s = append(s, structure{fmt.Sprintf("zstd block header at %d", pos), pos, 3})
			size := h >> 3
			if h>>1&3 == 1 {
				size = 1 // RLE: one byte
			}
			pos += 3 + size
			if h&1 != 0 {
				break
			}
		}
	} else {
		if zlibHeader {
			s = append(s, structure{fmt.Sprintf("zlib header at %d", payload), payload, 2})
		}
		s = append(s, structure{fmt.Sprintf("zlib sync flush at %d", payload+p-4), payload + p - 4, 4})
	}
	return append(s, structure{fmt.Sprintf("record filler at %d", payload+p), payload + p, l - 48 - p - 4},
		structure{fmt.Sprintf("record end marker at %d", off+l-4), off + l - 4, 4})
}

func zvhd2Structures(t *testing.T, b []byte) []structure {
	tr := int64(len(b)) - 4096
	index, bitmap := int64(le.Uint64(b[tr+96:])), int64(le.Uint64(b[tr+104:]))
	indexSize, bitmapSize := int64(le.Uint32(b[tr+112:])), int64(le.Uint32(b[tr+116:]))
	n := int64(le.Uint32(b[tr+136:]))
	s := append(zvhdSlot("header", 0), zvhdSlot("mid-footer", index-4096)...)
	s = append(s, zvhdSlot("trailer", tr)...)
	s = append(s, structure{"index entries", index, n * 16}, structure{"index padding", index + n*16, indexSize - n*16},
		structure{"bitmap", bitmap, bitmapSize})
	for k := range n {
		s = append(s, zvhdRecord(b, int64(le.Uint64(b[index+16*k:])), b[tr+141] == 1, true)...)
	}
	return s
}

func zvhdStructures(t *testing.T, b []byte) []structure {
	end := int64(len(b)) - 4096
	s := append(zvhdSlot("header", 0), zvhdSlot("header copy", end)...)
	for off := int64(4096); off < end; {
		s = append(s, zvhdRecord(b, off, false, off == 4096)...)
		off += (48 + int64(le.Uint32(b[off+12:])) + 4 + 4095) / 4096 * 4096
	}
	return s
}

// flipCounts are one output's results: flips tried, caught by verify,
// passed by qemu-img check and compare, and in a structure documented as
// unused.
type flipCounts struct{ tried, caught, qemuOK, documented, instances int }

func (c flipCounts) String() string {
	s := fmt.Sprintf("%d flips, %d caught by verify", c.tried, c.caught)
	if c.qemuOK > 0 {
		s += fmt.Sprintf(", %d harmless by qemu-img check and compare", c.qemuOK)
	}
	if c.documented > 0 {
		s += fmt.Sprintf(", %d in bytes documented as unused", c.documented)
	}
	return s
}

// kindOf is a structure's kind: its name without where it is or which of
// many it is.
func kindOf(name string) string {
	return strings.TrimRight(strings.Split(name, " at ")[0], " 0123456789")
}

// lastOfKind reports whether all[j] is the last structure of its kind.
func lastOfKind(all []structure, j int, kind string) bool {
	for _, s := range all[j+1:] {
		if kindOf(s.name) == kind {
			return false
		}
	}
	return true
}

// TestByteFlips flips bytes in every metadata structure of every output
// format diskimg writes: every byte of a structure up to 256 bytes, a
// sample of larger ones (the first 64 bytes and 32 spread ones), in the
// first two and the last structure of each kind. -short flips every byte
// of structures up to 8 bytes, 4 and 2 spread of larger ones, in the
// first and last structure of each kind. Each flip is caught by
// convert.Verify, or qemu-img check and compare both pass on it, or (for
// the formats qemu-img cannot read) it lies in a structure listed as
// harmless.
func TestByteFlips(t *testing.T) {
	formattest.RequireQemu(t)
	dir, src := rawSource(t, 6<<20+1536, formattest.Sparse)
	srcImg := formattest.Open(t, src, "raw")
	every, head, samples, firsts := int64(256), int64(64), int64(32), 2
	if testing.Short() {
		every, head, samples, firsts = 8, 4, 2, 1
	}
	var mu sync.Mutex
	var report []string
	t.Cleanup(func() {
		sort.Strings(report)
		t.Log("byte flips:\n" + strings.Join(report, "\n"))
	})
	for _, o := range flipOutputs {
		t.Run(o.name, func(t *testing.T) {
			t.Parallel()
			out := filepath.Join(dir, o.name+"."+o.fmt)
			matrixConvert(t, src, "raw", out, matrixOutput{fmt: o.fmt, opts: o.opts, compress: o.compress})
			orig := formattest.ReadFile(t, out)
			if err := verifyFile(srcImg, out, o.fmt); err != nil {
				t.Fatalf("the unflipped output fails verify: %v", err)
			}
			// One copy, each flip written into it and undone after.
			flipped := filepath.Join(t.TempDir(), "flipped."+o.fmt)
			formattest.WriteFile(t, flipped, orig)
			f, err := os.OpenFile(flipped, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			poke := func(at int64, b byte) {
				if _, err := f.WriteAt([]byte{b}, at); err != nil {
					t.Fatal(err)
				}
			}
			var c flipCounts
			per := map[string]*flipCounts{}
			all := o.structures(t, orig)
			for j, s := range all {
				if s.n == 0 {
					continue
				}
				if s.off < 0 || s.n < 0 || s.off+s.n > int64(len(orig)) {
					t.Fatalf("%s at %d+%d outside the %d-byte file", s.name, s.off, s.n, len(orig))
				}
				kind := kindOf(s.name)
				if per[kind] == nil {
					per[kind] = &flipCounts{}
				}
				// Of many structures of a kind, the first ones and the last.
				per[kind].instances++
				if per[kind].instances > firsts && !lastOfKind(all, j, kind) {
					continue
				}
				for _, i := range flipOffsets(s.n, every, head, samples) {
					at := s.off + i
					poke(at, orig[at]^1<<(at%8))
					c.tried++
					per[kind].tried++
					switch {
					case verifyFile(srcImg, flipped, o.fmt) != nil:
						c.caught++
						per[kind].caught++
					case o.harmless != nil:
						if o.harmless[kind] == "" {
							t.Errorf("%s byte %d (file offset %d, bit %d): verify passes, and no reader is documented to ignore it", s.name, i, at, at%8)
							break
						}
						c.documented++
						per[kind].documented++
					default:
						if msg := qemuAccepts(src, flipped, o.fmt, o.qemuCheck); msg != "" {
							t.Errorf("%s byte %d (file offset %d, bit %d): verify passes but %s", s.name, i, at, at%8, msg)
							break
						}
						c.qemuOK++
						per[kind].qemuOK++
					}
					poke(at, orig[at])
				}
			}
			for k, v := range per {
				t.Logf("%s: %v", k, v)
			}
			mu.Lock()
			report = append(report, fmt.Sprintf("%s: %v", o.name, c))
			mu.Unlock()
		})
	}
}

// flipOffsets are the bytes of an n-byte structure to flip: all of them
// up to every bytes, else the first head bytes (where the fields are) and
// samples spread over the rest.
func flipOffsets(n, every, head, samples int64) []int64 {
	var offs []int64
	if n <= every {
		for i := range n {
			offs = append(offs, i)
		}
		return offs
	}
	for i := range head {
		offs = append(offs, i)
	}
	for k := range samples {
		offs = append(offs, head+(n-head-1)*k/(samples-1))
	}
	return offs
}

// verifyFile runs convert.Verify on the file at path.
func verifyFile(src format.Image, path, fmtName string) error {
	f, err := format.OpenFile(path)
	if err != nil {
		return err
	}
	return convert.Verify(context.Background(), src, f, fmtName, false)
}

// qemuAccepts returns "" when qemu-img check (when it checks the format)
// and qemu-img compare with the source both pass on path, else what
// failed.
func qemuAccepts(src, path, fmtName string, check bool) string {
	if check {
		out, err := exec.Command("qemu-img", "check", "-f", fmtName, path).CombinedOutput()
		if code := exitCode(err); code != 0 {
			return fmt.Sprintf("qemu-img check exits %d: %s", code, strings.TrimSpace(string(out)))
		}
	}
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", fmtName, src, path).CombinedOutput()
	if code := exitCode(err); code != 0 {
		return fmt.Sprintf("qemu-img compare exits %d: %s", code, strings.TrimSpace(string(out)))
	}
	return ""
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if e, ok := err.(*exec.ExitError); ok {
		return e.ExitCode()
	}
	return -1
}
