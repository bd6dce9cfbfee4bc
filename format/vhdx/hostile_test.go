package vhdx

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// baseImage makes a 16 MiB dynamic image with 1 MiB blocks whose blocks 1
// and 3 hold data, and returns its bytes.
func baseImage(t *testing.T, opts string) []byte {
	t.Helper()
	return makeImage(t, opts, "16M", "write -P 0x5a 1M 4k", "write -P 0x6b 3M 1M")
}

// makeImage creates an image of size with options opts and runs the
// qemu-io commands cmds on it.
func makeImage(t *testing.T, opts, size string, cmds ...string) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "base.vhdx")
	formattest.Create(t, path, Name, size, "-o", opts)
	args := []string{"-f", Name}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func openBytes(data []byte) (*Image, error) {
	return Open(&formattest.MemFile{Data: data, Path: "/nonexistent/x.vhdx"}, format.NewOpener(format.Policy{Untrusted: true}))
}

func le32(b []byte, off int64) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func le64(b []byte, off int64) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

// fixHeaders recomputes both header checksums after a patch.
func fixHeaders(b []byte) {
	for _, o := range []int64{header1Offset, header2Offset} {
		h := b[o : o+headerSize]
		binary.LittleEndian.PutUint32(h[hdrChecksum:], checksum(h, hdrChecksum))
	}
}

// fixRegionTables recomputes both region table checksums after a patch.
func fixRegionTables(b []byte) {
	for _, o := range []int64{regionTable1Offset, regionTable2Offset} {
		r := b[o : o+regionTableSize]
		binary.LittleEndian.PutUint32(r[rtChecksum:], checksum(r, rtChecksum))
	}
}

// regionOffset returns the file offset of the region with id, from the
// first region table.
func regionOffset(t *testing.T, b []byte, id guid) (entry int64, off int64) {
	t.Helper()
	n := int64(le32(b, regionTable1Offset+rtEntryCount))
	for i := range n {
		e := int64(regionTable1Offset + rtEntries + i*rtEntrySize)
		if guid(b[e:e+16]) == id {
			return e, int64(le64(b, e+rteFileOffset))
		}
	}
	t.Fatalf("no region %x", id)
	return 0, 0
}

// metaEntry returns the file offset of the metadata table entry for id
// and of its item.
func metaEntry(t *testing.T, b []byte, id guid) (entry, item int64) {
	t.Helper()
	_, m := regionOffset(t, b, metadataGUID)
	n := int64(binary.LittleEndian.Uint16(b[m+mtEntryCount:]))
	for i := range n {
		e := m + mtEntries + i*mtEntrySize
		if guid(b[e:e+16]) == id {
			return e, m + int64(le32(b, e+mteOffset))
		}
	}
	t.Fatalf("no metadata item %x", id)
	return 0, 0
}

// hostile is a patched image and the error it must give.
type hostile formattest.Hostile

func TestHostile(t *testing.T) {
	formattest.RequireQemu(t)
	base := baseImage(t, "subformat=dynamic,block_size=1M")
	if _, err := openBytes(base); err != nil {
		t.Fatalf("unpatched image: %v", err)
	}
	_, batOff := regionOffset(t, base, batGUID)
	var cases []hostile
	for _, c := range []struct {
		name  string
		patch func(b []byte) []byte
		want  string
	}{
		{"wrong magic", func(b []byte) []byte { b[0] = 'X'; return b }, "wrong image type"},
		{"truncated to header", func(b []byte) []byte { return b[:200<<10] }, "header section"},
		{"truncated before data", func(b []byte) []byte { return b[:len(b)-512<<10] }, "extends past the end of the file"},
		{"bad header CRCs", func(b []byte) []byte {
			b[header1Offset+100]++
			b[header2Offset+100]++
			return b
		}, "header checksum"},
		{"bad header versions", func(b []byte) []byte {
			b[header1Offset+hdrVersion] = 2
			b[header2Offset+hdrVersion] = 2
			fixHeaders(b)
			return b
		}, "header Version"},
		{"bad region table CRCs", func(b []byte) []byte {
			b[regionTable1Offset+200]++
			b[regionTable2Offset+200]++
			return b
		}, "region table checksum"},
		{"region entry count", func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[regionTable1Offset+rtEntryCount:], 5000)
			binary.LittleEndian.PutUint32(b[regionTable2Offset+rtEntryCount:], 5000)
			fixRegionTables(b)
			return b
		}, "region table EntryCount"},
		{"region overlapping headers", func(b []byte) []byte {
			e, _ := regionOffset(t, b, batGUID)
			for _, d := range []int64{0, regionTable2Offset - regionTable1Offset} {
				binary.LittleEndian.PutUint64(b[e+d+rteFileOffset:], 0)
			}
			fixRegionTables(b)
			return b
		}, "overlaps the header section"},
		{"region past EOF", func(b []byte) []byte {
			e, _ := regionOffset(t, b, metadataGUID)
			for _, d := range []int64{0, regionTable2Offset - regionTable1Offset} {
				binary.LittleEndian.PutUint64(b[e+d+rteFileOffset:], 1<<40)
			}
			fixRegionTables(b)
			return b
		}, "region table entry"},
		{"unknown required region", func(b []byte) []byte {
			for _, o := range []int64{regionTable1Offset, regionTable2Offset} {
				n := int64(le32(b, o+rtEntryCount))
				e := o + rtEntries + n*rtEntrySize
				copy(b[e:], "unknown region..")
				binary.LittleEndian.PutUint64(b[e+rteFileOffset:], uint64(len(b)-1<<20))
				binary.LittleEndian.PutUint32(b[e+rteLength:], 1<<20)
				binary.LittleEndian.PutUint32(b[e+rteFlags:], rteRequired)
				binary.LittleEndian.PutUint32(b[o+rtEntryCount:], uint32(n+1))
			}
			fixRegionTables(b)
			return b
		}, "required region of unknown type"},
		{"BAT entry past EOF", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[batOff:], 1000<<20|blockFullyPresent)
			return b
		}, "BAT entry 0 at offset"},
		{"BAT entry in metadata", func(b []byte) []byte {
			_, m := regionOffset(t, b, metadataGUID)
			binary.LittleEndian.PutUint64(b[batOff:], uint64(m)|blockFullyPresent)
			return b
		}, "overlaps the metadata"},
		{"BAT entry partially present", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[batOff:], blockPartiallyPresent)
			return b
		}, "partially present"},
		{"BAT entry invalid state", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[batOff+8:], 4)
			return b
		}, "BAT entry 1"},
		{"block size not a power of two", func(b []byte) []byte {
			_, it := metaEntry(t, b, fileParamsGUID)
			binary.LittleEndian.PutUint32(b[it:], 3<<20)
			return b
		}, "BlockSize"},
		{"block size too large", func(b []byte) []byte {
			_, it := metaEntry(t, b, fileParamsGUID)
			binary.LittleEndian.PutUint32(b[it:], 512<<20)
			return b
		}, "BlockSize"},
		{"metadata entry count", func(b []byte) []byte {
			_, m := regionOffset(t, b, metadataGUID)
			binary.LittleEndian.PutUint16(b[m+mtEntryCount:], 5000)
			return b
		}, "metadata table EntryCount"},
		{"metadata item out of bounds", func(b []byte) []byte {
			e, _ := metaEntry(t, b, virtualSizeGUID)
			binary.LittleEndian.PutUint32(b[e+mteOffset:], 0xFFFFFFF0)
			return b
		}, "Offset"},
		{"metadata item inside table", func(b []byte) []byte {
			e, _ := metaEntry(t, b, virtualSizeGUID)
			binary.LittleEndian.PutUint32(b[e+mteOffset:], 8)
			return b
		}, "Offset"},
		{"metadata item missing", func(b []byte) []byte {
			e, _ := metaEntry(t, b, logicalSectGUID)
			b[e]++
			b[e+mteFlags] &^= mteIsRequired
			return b
		}, "Logical Sector Size is missing"},
		{"logical sector size", func(b []byte) []byte {
			_, it := metaEntry(t, b, logicalSectGUID)
			binary.LittleEndian.PutUint32(b[it:], 1000)
			return b
		}, "Logical Sector Size"},
		{"absurd virtual size", func(b []byte) []byte {
			_, it := metaEntry(t, b, virtualSizeGUID)
			binary.LittleEndian.PutUint64(b[it:], 1<<62)
			return b
		}, "Virtual Disk Size"},
		{"BAT too small for virtual size", func(b []byte) []byte {
			_, it := metaEntry(t, b, virtualSizeGUID)
			binary.LittleEndian.PutUint64(b[it:], 1<<40)
			return b
		}, "BAT region"},
		{"differencing", func(b []byte) []byte {
			_, it := metaEntry(t, b, fileParamsGUID)
			b[it+4] |= hasParent
			return b
		}, "differencing VHDX without a parent locator item"},
		{"log past EOF", func(b []byte) []byte {
			for _, o := range []int64{header1Offset, header2Offset} {
				binary.LittleEndian.PutUint64(b[o+hdrLogOffset:], 1<<40)
			}
			fixHeaders(b)
			return b
		}, "LogOffset"},
	} {
		cases = append(cases, hostile{c.name, "base", c.patch, c.want, formattest.AtOpen})
	}
	formattest.RunHostileOn(t, Name, func(string) []byte { return base }, cases)
}

// writeLogEntry makes the image look like one closed uncleanly: the
// current header names a log GUID and the log holds a valid entry of it.
func writeLogEntry(t *testing.T, b []byte, valid bool) {
	t.Helper()
	id := parseGUID("01234567-89AB-CDEF-0123-456789ABCDEF")
	var logOff int64
	for _, o := range []int64{header1Offset, header2Offset} {
		copy(b[o+hdrLogGUID:], id[:])
		logOff = int64(le64(b, o+hdrLogOffset))
	}
	fixHeaders(b)
	e := b[logOff : logOff+logEntryAlign]
	clear(e)
	copy(e, logEntrySignature)
	binary.LittleEndian.PutUint32(e[8:], logEntryAlign) // EntryLength
	binary.LittleEndian.PutUint64(e[16:], 1)            // SequenceNumber
	copy(e[32:], id[:])
	binary.LittleEndian.PutUint32(e[4:], checksum(e, 4))
	if !valid {
		e[100]++
	}
}

func TestLogReplay(t *testing.T) {
	formattest.RequireQemu(t)
	base := baseImage(t, "subformat=dynamic,block_size=1M")

	b := append([]byte(nil), base...)
	writeLogEntry(t, b, true)
	_, err := openBytes(b)
	if err == nil || !strings.Contains(err.Error(), "vhdx: log must be replayed (image was not closed cleanly)") {
		t.Fatalf("open with a log to replay: %v", err)
	}

	// A log GUID whose entries are all invalid leaves nothing to replay.
	b = append([]byte(nil), base...)
	writeLogEntry(t, b, false)
	img, err := openBytes(b)
	if err != nil {
		t.Fatalf("open with an invalid log entry: %v", err)
	}
	img.Close()
}

// TestHeaderChoice checks that the valid header with the higher sequence
// number wins and that one corrupt header is survivable.
func TestHeaderChoice(t *testing.T) {
	formattest.RequireQemu(t)
	base := baseImage(t, "subformat=dynamic,block_size=1M")
	for _, bad := range []int64{header1Offset, header2Offset} {
		b := append([]byte(nil), base...)
		b[bad+200]++
		img, err := openBytes(b)
		if err != nil {
			t.Fatalf("header at %d corrupt: %v", bad, err)
		}
		img.Close()
	}
	// Equal sequence numbers on differing headers are invalid.
	b := append([]byte(nil), base...)
	binary.LittleEndian.PutUint64(b[header2Offset+hdrSequence:], le64(b, header1Offset+hdrSequence))
	fixHeaders(b)
	if _, err := openBytes(b); err == nil || !strings.Contains(err.Error(), "SequenceNumber") {
		t.Fatalf("equal sequence numbers: %v", err)
	}
	// A corrupt first region table falls back to the second.
	b = append([]byte(nil), base...)
	b[regionTable1Offset+300]++
	img, err := openBytes(b)
	if err != nil {
		t.Fatalf("first region table corrupt: %v", err)
	}
	img.Close()
}

// TestAllocation checks the BAT's own view against what qemu-io wrote.
func TestAllocation(t *testing.T) {
	formattest.RequireQemu(t)
	for _, c := range []struct {
		opts  string
		empty format.Status
	}{
		{"subformat=dynamic,block_size=1M", format.Zero},
		{"subformat=dynamic,block_size=1M,block_state_zero=off", format.Unallocated},
	} {
		img, err := openBytes(baseImage(t, c.opts))
		if err != nil {
			t.Fatal(err)
		}
		var got []format.Extent
		for off := int64(0); off < img.Size(); {
			e, err := img.Extent(off)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, e)
			off = e.End()
		}
		want := []struct {
			start, length int64
			st            format.Status
		}{{0, 1 << 20, c.empty}, {1 << 20, 1 << 20, format.Data}, {2 << 20, 1 << 20, c.empty}, {3 << 20, 1 << 20, format.Data}, {4 << 20, 12 << 20, c.empty}}
		if len(got) != len(want) {
			t.Fatalf("%s: allocation %v", c.opts, got)
		}
		for i, w := range want {
			g := got[i]
			if g.Start != w.start || g.Length != w.length || g.Status != w.st || (w.st == format.Data) != (g.Offset >= 0) {
				t.Errorf("%s: extent %d = %+v, want %+v", c.opts, i, g, w)
			}
		}
		img.Close()
	}
}
