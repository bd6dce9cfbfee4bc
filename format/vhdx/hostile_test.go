package vhdx

import (
	"encoding/binary"
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
	formattest.QemuIO(t, Name, path, cmds...)
	data := formattest.ReadFile(t, path)
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

// moveRegion returns a patch that gives the region id the file offset off
// in both region tables.
func moveRegion(t *testing.T, id guid, off uint64) func([]byte) []byte {
	return func(b []byte) []byte {
		e, _ := regionOffset(t, b, id)
		for _, d := range []int64{0, regionTable2Offset - regionTable1Offset} {
			binary.LittleEndian.PutUint64(b[e+d+rteFileOffset:], off)
		}
		fixRegionTables(b)
		return b
	}
}

// bump returns a patch that adds one to the bytes at offs.
func bump(offs ...int64) func([]byte) []byte {
	return func(b []byte) []byte {
		for _, o := range offs {
			b[o]++
		}
		return b
	}
}

// put returns a patch that writes v (a fixed-size integer) little-endian
// at the offset where finds in the image.
func put(where func(b []byte) int64, v any) func([]byte) []byte {
	return func(b []byte) []byte {
		if _, err := binary.Encode(b[where(b):], binary.LittleEndian, v); err != nil {
			panic(err)
		}
		return b
	}
}

// at finds a fixed offset.
func at(off int64) func([]byte) int64 { return func([]byte) int64 { return off } }

// itemAt finds the metadata item id.
func itemAt(t *testing.T, id guid) func([]byte) int64 {
	return func(b []byte) int64 { _, it := metaEntry(t, b, id); return it }
}

// entryAt finds a field of the metadata table entry for id.
func entryAt(t *testing.T, id guid, field int64) func([]byte) int64 {
	return func(b []byte) int64 { e, _ := metaEntry(t, b, id); return e + field }
}

// tableAt finds a field of the metadata table header.
func tableAt(t *testing.T, field int64) func([]byte) int64 {
	return func(b []byte) int64 { _, m := regionOffset(t, b, metadataGUID); return m + field }
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
		{"bad header CRCs", bump(header1Offset+100, header2Offset+100), "header checksum"},
		{"bad header versions", func(b []byte) []byte {
			b[header1Offset+hdrVersion] = 2
			b[header2Offset+hdrVersion] = 2
			fixHeaders(b)
			return b
		}, "header Version"},
		{"bad region table CRCs", bump(regionTable1Offset+200, regionTable2Offset+200), "region table checksum"},
		{"region entry count", func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[regionTable1Offset+rtEntryCount:], 5000)
			binary.LittleEndian.PutUint32(b[regionTable2Offset+rtEntryCount:], 5000)
			fixRegionTables(b)
			return b
		}, "region table EntryCount"},
		{"region overlapping headers", moveRegion(t, batGUID, 0), "overlaps the header section"},
		{"region past EOF", moveRegion(t, metadataGUID, 1<<40), "region table entry"},
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
		{"BAT entry past EOF", put(at(batOff), uint64(1000<<20|blockFullyPresent)), "BAT entry 0 at offset"},
		{"BAT entry in metadata", func(b []byte) []byte {
			_, m := regionOffset(t, b, metadataGUID)
			binary.LittleEndian.PutUint64(b[batOff:], uint64(m)|blockFullyPresent)
			return b
		}, "overlaps the metadata"},
		{"BAT entry partially present", put(at(batOff), uint64(blockPartiallyPresent)), "partially present"},
		{"BAT entry invalid state", put(at(batOff+8), uint64(4)), "BAT entry 1"},
		{"block size not a power of two", put(itemAt(t, fileParamsGUID), uint32(3<<20)), "BlockSize"},
		{"block size too large", put(itemAt(t, fileParamsGUID), uint32(512<<20)), "BlockSize"},
		{"metadata entry count", put(tableAt(t, mtEntryCount), uint16(5000)), "metadata table EntryCount"},
		{"metadata item out of bounds", put(entryAt(t, virtualSizeGUID, mteOffset), uint32(0xFFFFFFF0)), "Offset"},
		{"metadata item inside table", put(entryAt(t, virtualSizeGUID, mteOffset), uint32(8)), "Offset"},
		{"metadata item missing", func(b []byte) []byte {
			e, _ := metaEntry(t, b, logicalSectGUID)
			b[e]++
			b[e+mteFlags] &^= mteIsRequired
			return b
		}, "Logical Sector Size is missing"},
		{"logical sector size", put(itemAt(t, logicalSectGUID), uint32(1000)), "Logical Sector Size"},
		{"absurd virtual size", put(itemAt(t, virtualSizeGUID), uint64(1<<62)), "Virtual Disk Size"},
		{"BAT too small for virtual size", put(itemAt(t, virtualSizeGUID), uint64(1<<40)), "BAT region"},
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
	err := openPatched(base, func(b []byte) { writeLogEntry(t, b, true) })
	if err == nil || !strings.Contains(err.Error(), "vhdx: log must be replayed (image was not closed cleanly)") {
		t.Fatalf("open with a log to replay: %v", err)
	}
	// A log GUID whose entries are all invalid leaves nothing to replay.
	if err := openPatched(base, func(b []byte) { writeLogEntry(t, b, false) }); err != nil {
		t.Fatalf("open with an invalid log entry: %v", err)
	}
}

// openPatched opens a copy of base with patch applied, and closes it.
func openPatched(base []byte, patch func(b []byte)) error {
	b := append([]byte(nil), base...)
	patch(b)
	img, err := openBytes(b)
	if err == nil {
		img.Close()
	}
	return err
}

// TestHeaderChoice checks that the valid header with the higher sequence
// number wins and that one corrupt header is survivable.
func TestHeaderChoice(t *testing.T) {
	formattest.RequireQemu(t)
	base := baseImage(t, "subformat=dynamic,block_size=1M")
	for _, bad := range []int64{header1Offset, header2Offset} {
		if err := openPatched(base, func(b []byte) { b[bad+200]++ }); err != nil {
			t.Fatalf("header at %d corrupt: %v", bad, err)
		}
	}
	// Equal sequence numbers on differing headers are invalid.
	err := openPatched(base, func(b []byte) {
		binary.LittleEndian.PutUint64(b[header2Offset+hdrSequence:], le64(b, header1Offset+hdrSequence))
		fixHeaders(b)
	})
	if err == nil || !strings.Contains(err.Error(), "SequenceNumber") {
		t.Fatalf("equal sequence numbers: %v", err)
	}
	// A corrupt first region table falls back to the second.
	if err := openPatched(base, func(b []byte) { b[regionTable1Offset+300]++ }); err != nil {
		t.Fatalf("first region table corrupt: %v", err)
	}
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
