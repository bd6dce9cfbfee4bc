package parallels

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// hostile lets the case table list its fields unkeyed.
type hostile formattest.Hostile

// extAt returns the file offset of the format extension of d.
func extAt(d []byte) int { return int(binary.LittleEndian.Uint64(d[hdrExtOff:])) * sectorSize }

// resum recomputes the format extension's checksum after a patch.
func resum(d []byte) []byte {
	e := extAt(d)
	cs := int(binary.LittleEndian.Uint32(d[hdrTracks:])) * sectorSize
	sum := md5.Sum(d[e+extHeaderLen : e+cs])
	copy(d[e+8:], sum[:])
	return d
}

// feature returns the offset of the first feature's data in extension.hds.
func feature(d []byte) int { return extAt(d) + extHeaderLen + featHeaderLen }

func TestHostile(t *testing.T) {
	cases := []hostile{
		{"wrong magic", "data.hds", func(d []byte) []byte { d[0] = 'w'; return d }, "wrong image type", formattest.AtOpen},
		{"version 3", "data.hds", func(d []byte) []byte { put32(d, hdrVersion, 3); return d }, "wrong image type", formattest.AtOpen},
		{"truncated header", "data.hds", func(d []byte) []byte { return d[:40] }, "header", formattest.AtOpen},
		{"zero tracks", "data.hds", func(d []byte) []byte { put32(d, hdrTracks, 0); return d }, "tracks at offset 28: zero sectors per cluster", formattest.AtOpen},
		{"huge tracks", "data.hds", func(d []byte) []byte { put32(d, hdrTracks, 1<<30); return d }, "tracks at offset 28", formattest.AtOpen},
		{"huge catalog", "data.hds", func(d []byte) []byte { put32(d, hdrBATEntries, 0xffffffff); return d }, "bat_entries at offset 32", formattest.AtOpen},
		{"catalog past EOF", "data.hds", func(d []byte) []byte { put32(d, hdrBATEntries, 1<<20); return d }, "bat_entries (catalog)", formattest.AtOpen},
		{"huge disk", "data.hds", func(d []byte) []byte { put64(d, hdrNbSectors, 1<<60); return d }, "nb_sectors at offset 36", formattest.AtOpen},
		{"cluster past EOF", "data.hds", func(d []byte) []byte { put32(d, headerSize+4*3, 100); return d }, "catalog entry 3 at offset 76: cluster at sector 800", formattest.AtOpen},
		{"cluster at 2^32-1", "data.hds", func(d []byte) []byte { put32(d, headerSize+4*3, 0xffffffff); return d }, "catalog entry 3", formattest.AtOpen},
		{"sectors cluster at 2^32-1", "sectors.hds", func(d []byte) []byte { put32(d, headerSize+4*3, 0xffffffff); return d }, "catalog entry 3", formattest.AtOpen},
		{"last cluster cut", "data.hds", func(d []byte) []byte { return d[:len(d)-1] }, "extends past the end of the file", formattest.AtOpen},
		{"ext_off past EOF", "data.hds", func(d []byte) []byte { put64(d, hdrExtOff, 1000); return d }, "ext_off at offset 56", formattest.AtOpen},
		{"ext_off huge", "data.hds", func(d []byte) []byte { put64(d, hdrExtOff, 1<<62); return d }, "ext_off at offset 56", formattest.AtOpen},
		{"ext cluster cut", "extension.hds", func(d []byte) []byte { return d[:extAt(d)+100] }, "ext_off (format extension)", formattest.AtOpen},
		{"ext magic", "extension.hds", func(d []byte) []byte { d[extAt(d)]++; return d }, "format extension magic", formattest.AtOpen},
		{"ext checksum", "extension.hds", func(d []byte) []byte { d[extAt(d)+100]++; return d }, "format extension checksum", formattest.AtOpen},
		{"feature flags", "extension.hds", func(d []byte) []byte { d[extAt(d)+extHeaderLen+8] = 1; return resum(d) }, "has flags 0x1", formattest.AtOpen},
		{"feature unknown", "extension.hds", func(d []byte) []byte { d[extAt(d)+extHeaderLen]++; return resum(d) }, "unknown feature", formattest.AtOpen},
		{"feature overrun", "extension.hds", func(d []byte) []byte { put32(d, extAt(d)+extHeaderLen+16, 1<<20); return resum(d) }, "overrun the cluster", formattest.AtOpen},
		{"no end marker", "extension.hds", func(d []byte) []byte {
			put32(d, extAt(d)+extHeaderLen+16, 4096-extHeaderLen-featHeaderLen) // the bitmap's data fills the cluster
			return resum(d)
		}, "no end-of-features marker", formattest.AtOpen},
		{"bitmap size", "extension.hds", func(d []byte) []byte { put64(d, feature(d), 7); return resum(d) }, "bitmap of 7 sectors on a disk of 128", formattest.AtOpen},
		{"bitmap granularity", "extension.hds", func(d []byte) []byte { put32(d, feature(d)+24, 3); return resum(d) }, "granularity of 3 sectors", formattest.AtOpen},
		{"bitmap l1 size", "extension.hds", func(d []byte) []byte { put32(d, feature(d)+28, 1000); return resum(d) }, "l1_size 1000 overruns", formattest.AtOpen},
		{"bitmap l1 entry", "extension.hds", func(d []byte) []byte { put64(d, feature(d)+bitmapFeatLen, 1<<40); return resum(d) }, "l1 entry 0", formattest.AtOpen},
		{"bitmap twice", "extension.hds", func(d []byte) []byte {
			f := feature(d)
			size := int(binary.LittleEndian.Uint32(d[f-8:]))
			first := bytes.Clone(d[f-featHeaderLen : f+size])
			copy(d[f+((size+7)&^7):], first)
			return resum(d)
		}, "appears twice", formattest.AtOpen},
	}
	formattest.RunHostile(t, Name, seeds, cases)
}

// TestHugeDiskSmallCatalog: a disk far larger than its catalog maps the
// rest as one unallocated run, at once (the fuzzer found a walk cluster
// by cluster).
func TestHugeDiskSmallCatalog(t *testing.T) {
	d := seed(t, "data.hds")
	put64(d, hdrNbSectors, 1<<46) // 32 PiB of 4 KiB clusters, a 16-entry catalog
	img, err := formattest.OpenMem(t, Name, d)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	e, err := img.Extent(1 << 20)
	if err != nil || e.Status != format.Unallocated || e.End() != img.Size() {
		t.Fatalf("Extent = %+v, %v", e, err)
	}
	formattest.ExerciseImage(t, img)
}
