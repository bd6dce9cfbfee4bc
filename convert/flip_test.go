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
// metadata structures.
var flipOutputs = []struct {
	name, fmt, opts string
	compress        bool
	structures      func(t *testing.T, b []byte) []structure
}{
	{"qcow2", "qcow2", "", false, qcow2Structures},
	{"qcow2-c", "qcow2", "", true, qcow2Structures},
	{"qcow2-v2-4k", "qcow2", "compat=0.10,cluster_size=4096", false, qcow2Structures},
	{"vmdk", "vmdk", "", false, vmdkStructures},
	{"vmdk-stream", "vmdk", "subformat=streamOptimized", false, vmdkStreamStructures},
	{"vpc", "vpc", "", false, vhdStructures},
	{"vpc-fixed", "vpc", "subformat=fixed", false, vhdStructures},
	{"vhdx", "vhdx", "", false, vhdxStructures},
	{"vhdx-fixed", "vhdx", "subformat=fixed,block_size=1M", false, vhdxStructures},
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

// flipCounts are one output's results.
type flipCounts struct{ tried, caught, qemuOK, instances int }

// lastOfKind reports whether all[j] is the last structure of its kind.
func lastOfKind(all []structure, j int, kind string) bool {
	for _, s := range all[j+1:] {
		if strings.TrimRight(strings.Split(s.name, " at ")[0], " 0123456789") == kind {
			return false
		}
	}
	return true
}

// TestByteFlips flips bytes in every metadata structure of every output
// format diskimg writes: every byte of a structure up to 256 bytes, a sample
// of larger ones (the first 64 bytes and 32 spread ones; -short: 32 and 8). Each flip is
// caught by convert.Verify, or qemu-img check and compare both pass on it.
func TestByteFlips(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 6<<20+1536, formattest.Sparse)
	srcImg := formattest.Open(t, src, "raw")
	head, samples := int64(64), int64(32)
	if testing.Short() {
		head, samples = 32, 8
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
			orig, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if err := verifyFile(srcImg, out, o.fmt); err != nil {
				t.Fatalf("the unflipped output fails verify: %v", err)
			}
			flipped := filepath.Join(t.TempDir(), "flipped."+o.fmt)
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
				kind := strings.TrimRight(strings.Split(s.name, " at ")[0], " 0123456789")
				if per[kind] == nil {
					per[kind] = &flipCounts{}
				}
				// Of many tables of a kind, the first two and the last.
				per[kind].instances++
				if per[kind].instances > 2 && !lastOfKind(all, j, kind) {
					continue
				}
				for _, i := range flipOffsets(s.n, head, samples) {
					at := s.off + i
					b := bytes.Clone(orig)
					b[at] ^= 1 << (at % 8)
					if err := os.WriteFile(flipped, b, 0o644); err != nil {
						t.Fatal(err)
					}
					c.tried++
					per[kind].tried++
					if verifyFile(srcImg, flipped, o.fmt) != nil {
						c.caught++
						per[kind].caught++
						continue
					}
					if msg := qemuAccepts(src, flipped, o.fmt); msg != "" {
						t.Errorf("%s byte %d (file offset %d, bit %d): verify passes but %s", s.name, i, at, at%8, msg)
						continue
					}
					c.qemuOK++
					per[kind].qemuOK++
				}
			}
			for k, v := range per {
				t.Logf("%s: %d flips, %d caught by verify, %d harmless by qemu-img check and compare", k, v.tried, v.caught, v.qemuOK)
			}
			mu.Lock()
			report = append(report, fmt.Sprintf("%s: %d flips, %d caught by verify, %d harmless by qemu-img check and compare", o.name, c.tried, c.caught, c.qemuOK))
			mu.Unlock()
		})
	}
}

// flipOffsets are the bytes of an n-byte structure to flip: all of them
// up to 256 bytes, else the first head bytes (where the fields are) and
// samples spread over the rest.
func flipOffsets(n, head, samples int64) []int64 {
	var offs []int64
	if n <= 256 {
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

// qemuAccepts returns "" when qemu-img check (where it supports the
// format) and qemu-img compare with the source both pass on path, else
// what failed.
func qemuAccepts(src, path, fmtName string) string {
	chk, err := exec.Command("qemu-img", "check", "-f", fmtName, path).CombinedOutput()
	if code := exitCode(err); code != 0 && code != 63 { // 63: no check for the format
		return fmt.Sprintf("qemu-img check exits %d: %s", code, strings.TrimSpace(string(chk)))
	}
	cmp, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", fmtName, src, path).CombinedOutput()
	if code := exitCode(err); code != 0 {
		return fmt.Sprintf("qemu-img compare exits %d: %s", code, strings.TrimSpace(string(cmp)))
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
