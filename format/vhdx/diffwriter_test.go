package vhdx

// A test-only writer of differencing VHDX files, which qemu-img cannot
// make: it follows [MS-VHDX] to put a parent locator, sector bitmaps and
// partially present blocks over a parent the tests make with qemu-img.

import (
	"crypto/rand"
	"encoding/binary"
	"os"
	"sort"
	"testing"
	"unicode/utf16"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// diffSpec describes a differencing VHDX.
type diffSpec struct {
	size, blockSize int64
	logical         int64              // logical sector size: 512 or 4096
	dataWrite       guid               // this file's DataWriteGuid
	locator         [][2]string        // parent locator key-value entries, in order
	writes          []formattest.Write // sectors the file holds
	zero            []int64            // payload blocks in the ZERO state
	unmapped        []int64            // payload blocks in the UNMAPPED state
}

func randomGUID(t testing.TB) guid {
	var g guid
	if _, err := rand.Read(g[:]); err != nil {
		t.Fatal(err)
	}
	return g
}

// linkage is the parent_linkage locator entry naming id.
func linkage(id guid) [2]string { return [2]string{"parent_linkage", id.String()} }

// dataWriteOf returns the DataWriteGuid of the VHDX file at path.
func dataWriteOf(t testing.TB, path string) guid {
	t.Helper()
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr, _, err := readHeaders(f)
	if err != nil {
		t.Fatal(err)
	}
	return guid(hdr[hdrDataWriteGUID:])
}

// writeDiff writes the differencing VHDX s describes at path: the header
// section, the metadata region at 1 MiB, the BAT at 2 MiB, then a payload
// block for each block a write touches (fully present when every sector
// of it is written, else partially present) and a sector bitmap block for
// each chunk holding a partially present block.
func writeDiff(t testing.TB, path string, s diffSpec) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	put := func(off int64, b []byte) {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	le32 := binary.LittleEndian.AppendUint32
	const metaOff, batOff = 1 << 20, 2 << 20
	blocks := (s.size + s.blockSize - 1) / s.blockSize
	ratio := sectorsPerBitmap * s.logical / s.blockSize
	chunks := (blocks + ratio - 1) / ratio
	entries := chunks * (ratio + 1)
	batLen := (entries*batEntrySize + alignment - 1) / alignment * alignment

	// Header section.
	put(0, []byte(fileSignature))
	fileWrite := randomGUID(t)
	for i, off := range []int64{header1Offset, header2Offset} {
		h := make([]byte, headerSize)
		copy(h, headerSignature)
		binary.LittleEndian.PutUint64(h[hdrSequence:], uint64(i+1))
		copy(h[hdrFileWriteGUID:], fileWrite[:])
		copy(h[hdrDataWriteGUID:], s.dataWrite[:])
		binary.LittleEndian.PutUint16(h[hdrVersion:], 1)
		binary.LittleEndian.PutUint32(h[hdrChecksum:], checksum(h, hdrChecksum))
		put(off, h)
	}
	rt := make([]byte, regionTableSize)
	copy(rt, regionSignature)
	binary.LittleEndian.PutUint32(rt[rtEntryCount:], 2)
	for i, r := range []struct {
		id       guid
		off, len int64
	}{{batGUID, batOff, batLen}, {metadataGUID, metaOff, 1 << 20}} {
		e := rt[rtEntries+i*rtEntrySize:]
		copy(e, r.id[:])
		binary.LittleEndian.PutUint64(e[rteFileOffset:], uint64(r.off))
		binary.LittleEndian.PutUint32(e[rteLength:], uint32(r.len))
		binary.LittleEndian.PutUint32(e[rteFlags:], rteRequired)
	}
	binary.LittleEndian.PutUint32(rt[rtChecksum:], checksum(rt, rtChecksum))
	put(regionTable1Offset, rt)
	put(regionTable2Offset, rt)

	// Metadata: the table, then the items from 64 KiB on.
	page83 := randomGUID(t)
	items := []struct {
		id   guid
		data []byte
	}{
		{fileParamsGUID, le32(le32(nil, uint32(s.blockSize)), hasParent)},
		{virtualSizeGUID, binary.LittleEndian.AppendUint64(nil, uint64(s.size))},
		{page83GUID, page83[:]},
		{logicalSectGUID, le32(nil, uint32(s.logical))},
		{physicalSectGUID, le32(nil, 4096)},
		{parentLocGUID, parentLocator(s.locator)},
	}
	table := make([]byte, metadataSize)
	copy(table, metaSignature)
	binary.LittleEndian.PutUint16(table[mtEntryCount:], uint16(len(items)))
	var data []byte
	for i, it := range items {
		e := table[mtEntries+i*mtEntrySize:]
		copy(e, it.id[:])
		binary.LittleEndian.PutUint32(e[mteOffset:], uint32(metadataSize+len(data)))
		binary.LittleEndian.PutUint32(e[mteLength:], uint32(len(it.data)))
		binary.LittleEndian.PutUint32(e[mteFlags:], mteIsRequired)
		data = append(data, it.data...)
	}
	put(metaOff, table)
	put(metaOff+metadataSize, data)

	// The sectors each block holds.
	ss := s.logical
	held := map[int64][]bool{}
	for _, w := range s.writes {
		if w.Off%ss != 0 || int64(len(w.Data))%ss != 0 || w.Off+int64(len(w.Data)) > s.size {
			t.Fatalf("write [%d,+%d) is not whole sectors of the disk", w.Off, len(w.Data))
		}
		for g := w.Off; g < w.Off+int64(len(w.Data)); g += ss {
			b := g / s.blockSize
			if held[b] == nil {
				held[b] = make([]bool, s.blockSize/ss)
			}
			held[b][(g-b*s.blockSize)/ss] = true
		}
	}
	// A payload block for each, in guest order, with a sector bitmap
	// block for each chunk that holds a partially present block.
	bat := make([]uint64, entries)
	next := batOff + batLen
	order := make([]int64, 0, len(held))
	for b := range held {
		order = append(order, b)
	}
	sort.Slice(order, func(i, j int) bool { return order[i] < order[j] })
	host := map[int64]int64{}
	sbOff := map[int64]int64{} // chunk: its sector bitmap block's offset
	for _, b := range order {
		full := true
		for _, h := range held[b] {
			full = full && h
		}
		state := uint64(blockFullyPresent)
		if !full {
			state = blockPartiallyPresent
			c := b / ratio
			if _, ok := sbOff[c]; !ok {
				sbOff[c] = next
				next += sbBlockSize
				bat[c*(ratio+1)+ratio] = uint64(sbOff[c]) | sbPresent
			}
			bits := make([]byte, len(held[b])/8)
			for i, h := range held[b] {
				if h {
					bits[i/8] |= 1 << (i % 8)
				}
			}
			put(sbOff[c]+b%ratio*int64(len(bits)), bits)
		}
		host[b] = next
		bat[b+b/ratio] = uint64(next) | state
		next += s.blockSize
	}
	// The data, where the sectors live (the rest of a block is a hole).
	for _, w := range s.writes {
		for o := int64(0); o < int64(len(w.Data)); {
			g := w.Off + o
			b := g / s.blockSize
			n := min(int64(len(w.Data))-o, (b+1)*s.blockSize-g)
			put(host[b]+g-b*s.blockSize, w.Data[o:o+n])
			o += n
		}
	}
	for _, b := range s.zero {
		bat[b+b/ratio] = blockZero
	}
	for _, b := range s.unmapped {
		bat[b+b/ratio] = blockUnmapped
	}
	for _, b := range append(append([]int64(nil), s.zero...), s.unmapped...) {
		if held[b] != nil {
			t.Fatalf("block %d is written and zero", b)
		}
	}
	raw := make([]byte, batLen)
	for i, e := range bat {
		binary.LittleEndian.PutUint64(raw[i*batEntrySize:], e)
	}
	put(batOff, raw)
	if err := f.Truncate(next); err != nil {
		t.Fatal(err)
	}
}

// parentLocator encodes a VHDX parent locator item holding kv.
func parentLocator(kv [][2]string) []byte {
	b := make([]byte, locHeaderSize+len(kv)*locEntrySize)
	copy(b, vhdxLocatorGUID[:])
	binary.LittleEndian.PutUint16(b[locCount:], uint16(len(kv)))
	text := func(s string) (uint32, uint16) {
		off := uint32(len(b))
		for _, u := range utf16.Encode([]rune(s)) {
			b = binary.LittleEndian.AppendUint16(b, u)
		}
		return off, uint16(len(b) - int(off))
	}
	for i, p := range kv {
		ko, kl := text(p[0])
		vo, vl := text(p[1])
		e := b[locHeaderSize+i*locEntrySize:]
		binary.LittleEndian.PutUint32(e, ko)
		binary.LittleEndian.PutUint32(e[4:], vo)
		binary.LittleEndian.PutUint16(e[8:], kl)
		binary.LittleEndian.PutUint16(e[10:], vl)
	}
	return b
}
