// Package vhdx reads Hyper-V VHDX images ([MS-VHDX] v1.0): the file type
// identifier, the two checksummed headers, the region table, the metadata
// region and the block allocation table (BAT).
//
// Dynamic, fixed and differencing images are read (qemu 7.2 reads no
// differencing VHDX); images whose log must be replayed are refused:
// replaying would need writing the file, which diskimg never does.
package vhdx

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"sync"

	"github.com/diskimg/diskimg/format"
)

// Name is qemu's name for the format.
const Name = "vhdx"

// Priority orders probing among the registered formats.
const Priority = 30

func init() {
	format.Register(&format.Format{Name: Name, Priority: Priority, Probe: Probe, Open: format.Opens(Open), CheckFile: CheckFile})
}

// File layout: the 1 MiB header section holds the file type identifier,
// two headers and two region tables at fixed offsets.
const (
	fileSignature      = "vhdxfile" // file type identifier, at offset 0
	header1Offset      = 64 << 10
	header2Offset      = 128 << 10
	headerSize         = 4 << 10 // the header checksum covers 4 KiB
	headerSignature    = "head"
	regionTable1Offset = 192 << 10
	regionTable2Offset = 256 << 10
	regionTableSize    = 64 << 10 // the region table checksum covers 64 KiB
	regionSignature    = "regi"
	headerSectionSize  = 1 << 20 // nothing else may live in the first MiB
	alignment          = 1 << 20 // regions, log and payload blocks are MiB-aligned
)

// Header fields (offsets within a header).
const (
	hdrSignature = 0  // "head"
	hdrChecksum  = 4  // CRC-32C of the 4 KiB header with this field zero
	hdrSequence  = 8  // uint64: the valid header with the higher one is current
	hdrLogGUID   = 48 // GUID: zero when the log holds nothing to replay
	hdrLogVer    = 64 // uint16: must be 0
	hdrVersion   = 66 // uint16: must be 1
	hdrLogLength = 68 // uint32, multiple of 1 MiB
	hdrLogOffset = 72 // uint64, multiple of 1 MiB
)

// Region table: a 16-byte header and 32-byte entries.
const (
	rtChecksum     = 4  // CRC-32C of the 64 KiB table with this field zero
	rtEntryCount   = 8  // uint32
	rtEntries      = 16 // first entry
	rtEntrySize    = 32
	rtMaxEntries   = 2047
	rteGUID        = 0  // region type
	rteFileOffset  = 16 // uint64
	rteLength      = 24 // uint32
	rteFlags       = 28 // uint32
	rteRequired    = 1  // flag: a reader that does not know the region must fail
	metadataSize   = 64 << 10
	metaSignature  = "metadata"
	mtEntryCount   = 10 // uint16
	mtEntries      = 32
	mtEntrySize    = 32
	mtMaxEntries   = 2047
	mteGUID        = 0  // item type
	mteOffset      = 16 // uint32, relative to the metadata region
	mteLength      = 20 // uint32
	mteFlags       = 24 // uint32
	mteIsRequired  = 4  // flag bit 2
	paramsSize     = 8  // File Parameters: BlockSize uint32, flags uint32
	leaveAllocated = 1  // File Parameters flag: LeaveBlocksAllocated (fixed)
	hasParent      = 2  // File Parameters flag: HasParent (differencing)
)

// Limits from the specification.
const (
	minBlockSize      = 1 << 20
	maxBlockSize      = 256 << 20
	maxVirtualSize    = 64 << 40
	sectorsPerBitmap  = 1 << 23 // a 1 MiB sector bitmap block covers 2^23 sectors
	batEntrySize      = 8
	batStateMask      = 7
	batOffsetMask     = 0xFFFFFFFFFFF00000 // FileOffsetMB in the high 44 bits
	logEntrySignature = "loge"
	logEntryAlign     = 4 << 10
	logEntryHeader    = 64
)

// Payload block states (low 3 bits of a BAT entry).
const (
	blockNotPresent       = 0
	blockUndefined        = 1
	blockZero             = 2
	blockUnmapped         = 3
	blockUnmappedV095     = 5 // the 0.95 draft's UNMAPPED, still read as zeros
	blockFullyPresent     = 6
	blockPartiallyPresent = 7
)

type guid [16]byte

// parseGUID turns the canonical text form into the on-disk layout, whose
// first three fields are little-endian.
func parseGUID(s string) guid {
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != 16 {
		panic("vhdx: bad GUID constant " + s)
	}
	var g guid
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	copy(g[8:], raw[8:])
	return g
}

// Region and metadata item GUIDs.
var (
	batGUID          = parseGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	metadataGUID     = parseGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
	fileParamsGUID   = parseGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	virtualSizeGUID  = parseGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	page83GUID       = parseGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	logicalSectGUID  = parseGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	physicalSectGUID = parseGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
	parentLocGUID    = parseGUID("A8D35F2B-B30B-454D-ABF7-D3D84834AB0C")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checksum returns the CRC-32C of buf with the 4-byte field at off taken
// as zero, as the specification defines every VHDX checksum.
func checksum(buf []byte, off int) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, buf[:off])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, buf[off+4:])
}

// checkSigned checks b, the structure what at file offset off: its 4-byte
// signature sig and the CRC-32C at sumOff, which covers all of b.
func checkSigned(b []byte, off int64, what, sig string, sumOff int) error {
	switch stored, sum := binary.LittleEndian.Uint32(b[sumOff:]), checksum(b, sumOff); {
	case string(b[:4]) != sig:
		return errorf(what+" signature", off, "got %q, want %q", b[:4], sig)
	case stored != sum:
		return errorf(what+" checksum", off+int64(sumOff), "CRC-32C %#08x does not match the %s (%#08x)", stored, what, sum)
	}
	return nil
}

// Probe reports whether f starts with the VHDX file type identifier.
func Probe(f format.File) bool {
	return format.HasMagic(f, 0, fileSignature)
}

// Image is an open VHDX image.
type Image struct {
	format.Base
	blockSize  int64
	chunkRatio int64    // payload blocks per sector bitmap block
	bat        []uint64 // every BAT entry, sector bitmap entries included
	fixed      bool     // LeaveBlocksAllocated
	logical    uint32
	physical   uint32

	dataWrite guid // the header's DataWriteGuid, a child's parent_linkage
	// Differencing images (diff.go): the parent and the sector bitmaps
	// read so far, at most bitmapCacheBytes of them.
	diff    bool
	parent  *format.Backing
	mu      sync.Mutex
	bitmaps map[int64][]byte
	cached  int64
}

func errorf(field string, off int64, reason string, args ...any) error {
	return format.Errorf(Name, field, off, reason, args...)
}

// region is a byte range of the file that metadata claims.
type region struct {
	name       string
	start, end int64
}

// Open opens f as a VHDX image. A differencing image's parent is the
// chain's (format.Layer), so o is not used.
func Open(f format.File, o *format.Opener) (*Image, error) {
	l, err := readLayout(f)
	if err != nil {
		return nil, err
	}
	img := &Image{Base: format.Base{File: f}, dataWrite: guid(l.hdr[hdrDataWriteGUID:])}
	if err := img.readMetadata(l.meta); err != nil {
		return nil, err
	}
	if err := img.readBAT(l.bat, l.regions, f.Size()); err != nil {
		return nil, err
	}
	// qemu shows the block size as the cluster size, and no
	// format-specific data for VHDX.
	img.Meta.Format, img.Meta.ClusterSize, img.Meta.Subformat = Name, img.blockSize, "dynamic"
	switch {
	case img.diff:
		img.Meta.Subformat = "differencing"
		img.bitmaps = map[int64][]byte{}
	case img.fixed:
		img.Meta.Subformat = "fixed"
	}
	return img, nil
}

// layout is what the header section says: the current header and the
// regions of the file it claims, the BAT and metadata among them.
type layout struct {
	hdr       []byte
	regions   []region
	bat, meta region
}

// readLayout reads the headers, the log and the region table as Open and
// CheckFile both need them: a file whose current header or log is unusable
// is an error.
func readLayout(f format.File) (*layout, error) {
	if !Probe(f) {
		return nil, fmt.Errorf("vhdx: no %q file type identifier: %w", fileSignature, format.ErrWrongType)
	}
	fileSize := f.Size()
	if fileSize < headerSectionSize {
		return nil, errorf("header section", 0, "file of %d bytes is shorter than the %d-byte header section", fileSize, headerSectionSize)
	}
	hdr, hdrOff, err := readHeaders(f)
	if err != nil {
		return nil, err
	}
	l := &layout{hdr: hdr, regions: []region{{"header section", 0, headerSectionSize}}}
	logGUID := hdr[hdrLogGUID : hdrLogGUID+16]
	logLen := int64(binary.LittleEndian.Uint32(hdr[hdrLogLength:]))
	logOff := binary.LittleEndian.Uint64(hdr[hdrLogOffset:])
	if logLen > 0 || !format.IsZero(logGUID) {
		if logOff%alignment != 0 || logOff > uint64(fileSize) || logLen%alignment != 0 {
			return nil, errorf("LogOffset", hdrOff+hdrLogOffset, "log at %d of %d bytes is not MiB-aligned or lies past the end of the file", logOff, logLen)
		}
		if err := addRegion(&l.regions, region{"log", int64(logOff), int64(logOff) + logLen}, hdrOff+hdrLogOffset, fileSize); err != nil {
			return nil, err
		}
	}
	if !format.IsZero(logGUID) {
		if v := binary.LittleEndian.Uint16(hdr[hdrLogVer:]); v != 0 {
			return nil, errorf("LogVersion", hdrOff+hdrLogVer, "unsupported log version %d", v)
		}
		if err := checkLog(f, int64(logOff), logLen, logGUID); err != nil {
			return nil, err
		}
	}
	l.bat, l.meta, err = readRegionTable(f, &l.regions, fileSize)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// addRegion records r after checking it lies in the file and overlaps no
// region recorded before it.
func addRegion(regions *[]region, r region, fieldOff, fileSize int64) error {
	if r.start < 0 || r.end < r.start || r.end > fileSize {
		return errorf(r.name+" region", fieldOff, "[%d, %d) lies outside the file of %d bytes", r.start, r.end, fileSize)
	}
	for _, q := range *regions {
		if r.start < q.end && q.start < r.end {
			return errorf(r.name+" region", fieldOff, "[%d, %d) overlaps the %s at [%d, %d)", r.start, r.end, q.name, q.start, q.end)
		}
	}
	*regions = append(*regions, r)
	return nil
}

// readHeaders returns the current header: the valid one with the higher
// sequence number.
func readHeaders(f format.File) (hdr []byte, off int64, _ error) {
	var best []byte
	var bestSeq uint64
	var firstErr error
	for _, o := range []int64{header1Offset, header2Offset} {
		buf := make([]byte, headerSize)
		if err := format.ReadFull(f, buf, o, Name, "header"); err != nil {
			return nil, 0, err
		}
		err := checkSigned(buf, o, "header", headerSignature, hdrChecksum)
		if v := binary.LittleEndian.Uint16(buf[hdrVersion:]); err == nil && v != 1 {
			err = errorf("header Version", o+hdrVersion, "unsupported version %d", v)
		}
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		seq := binary.LittleEndian.Uint64(buf[hdrSequence:])
		switch {
		case best == nil || seq > bestSeq:
			best, bestSeq, off = buf, seq, o
		case seq == bestSeq && !bytes.Equal(best[:hdrLogOffset+8], buf[:hdrLogOffset+8]):
			// Equal numbers are only fine for identical headers.
			return nil, 0, errorf("header SequenceNumber", o+hdrSequence, "both headers have sequence number %d but differ", seq)
		}
	}
	if best == nil {
		return nil, 0, fmt.Errorf("vhdx: no valid header: %w", firstErr)
	}
	return best, off, nil
}

// checkLog refuses an image whose log holds an entry of the current log
// GUID with a valid checksum: its writes may not have reached their place
// in the file yet, and replaying them would mean modifying the file.
func checkLog(f format.File, off, length int64, id []byte) error {
	if length == 0 {
		return nil
	}
	if err := format.CheckTable(Name, "log", off, length, f.Size()); err != nil {
		return err
	}
	log := make([]byte, length)
	if err := format.ReadFull(f, log, off, Name, "log"); err != nil {
		return err
	}
	// Entries may wrap around the end of the circular log; checking every
	// candidate costs at most a few passes over it.
	budget := 4*length + 16<<20
	for pos := int64(0); pos < length; pos += logEntryAlign {
		e := log[pos:]
		if string(e[:4]) != logEntrySignature || !bytes.Equal(e[32:48], id) {
			continue
		}
		n := int64(binary.LittleEndian.Uint32(e[8:]))
		if n < logEntryAlign || n%logEntryAlign != 0 || n > length {
			continue
		}
		if budget -= n; budget < 0 {
			return replayError(off+pos, "too many log entries to check")
		}
		entry := e
		if pos+n > length {
			entry = append(append([]byte(nil), log[pos:]...), log[:pos+n-length]...)
		}
		entry = entry[:n]
		if binary.LittleEndian.Uint32(entry[4:]) == checksum(entry, 4) {
			return replayError(off+pos, "a valid log entry")
		}
	}
	return nil
}

func replayError(off int64, what string) error {
	return fmt.Errorf("vhdx: log must be replayed (image was not closed cleanly); %s at offset %d; replay it with `qemu-img check -r all` on a copy, or open it once in Hyper-V", what, off)
}

// readRegionTable returns the BAT and metadata regions from the first
// region table with a valid checksum, recording every region in regions.
func readRegionTable(f format.File, regions *[]region, fileSize int64) (bat, meta region, err error) {
	var buf []byte
	var tableOff int64
	var firstErr error
	for _, o := range []int64{regionTable1Offset, regionTable2Offset} {
		b := make([]byte, regionTableSize)
		if err := format.ReadFull(f, b, o, Name, "region table"); err != nil {
			return bat, meta, err
		}
		e := checkSigned(b, o, "region table", regionSignature, rtChecksum)
		if e == nil {
			buf, tableOff = b, o
			break
		}
		if firstErr == nil {
			firstErr = e
		}
	}
	if buf == nil {
		return bat, meta, firstErr
	}
	n := binary.LittleEndian.Uint32(buf[rtEntryCount:])
	if n > rtMaxEntries {
		return bat, meta, errorf("region table EntryCount", tableOff+rtEntryCount, "%d entries, at most %d allowed", n, rtMaxEntries)
	}
	var haveBAT, haveMeta bool
	for i := range int64(n) {
		eo := rtEntries + i*rtEntrySize
		e := buf[eo : eo+rtEntrySize]
		field := fmt.Sprintf("region table entry %d", i)
		var id guid
		copy(id[:], e[rteGUID:])
		start := binary.LittleEndian.Uint64(e[rteFileOffset:])
		length := int64(binary.LittleEndian.Uint32(e[rteLength:]))
		if start%alignment != 0 || length%alignment != 0 || length == 0 || start > uint64(fileSize) {
			return bat, meta, errorf(field+" FileOffset", tableOff+eo+rteFileOffset, "region at %d of %d bytes is not a MiB-aligned range inside the file", start, length)
		}
		name := "unknown"
		switch id {
		case batGUID:
			name = "BAT"
		case metadataGUID:
			name = "metadata"
		}
		r := region{name, int64(start), int64(start) + length}
		if err := addRegion(regions, r, tableOff+eo+rteFileOffset, fileSize); err != nil {
			return bat, meta, err
		}
		switch {
		case id == batGUID:
			if haveBAT {
				return bat, meta, errorf(field, tableOff+eo, "second BAT region")
			}
			bat, haveBAT = r, true
		case id == metadataGUID:
			if haveMeta {
				return bat, meta, errorf(field, tableOff+eo, "second metadata region")
			}
			meta, haveMeta = r, true
		case binary.LittleEndian.Uint32(e[rteFlags:])&rteRequired != 0:
			return bat, meta, errorf(field, tableOff+eo, "required region of unknown type %s", id)
		}
	}
	if !haveBAT {
		return bat, meta, errorf("region table", tableOff, "no BAT region")
	}
	if !haveMeta {
		return bat, meta, errorf("region table", tableOff, "no metadata region")
	}
	return bat, meta, nil
}

// metaItem is a located metadata item.
type metaItem struct {
	off, length int64 // in the file
	tableOff    int64 // the table entry, for errors
}

// readMetadata parses the metadata table and the items it needs.
func (img *Image) readMetadata(r region) error {
	if r.end-r.start < metadataSize {
		return errorf("metadata region", r.start, "region of %d bytes is smaller than the %d-byte metadata table", r.end-r.start, metadataSize)
	}
	buf := make([]byte, metadataSize)
	if err := format.ReadFull(img.File, buf, r.start, Name, "metadata table"); err != nil {
		return err
	}
	if string(buf[:8]) != metaSignature {
		return errorf("metadata table signature", r.start, "got %q, want %q", buf[:8], metaSignature)
	}
	n := int64(binary.LittleEndian.Uint16(buf[mtEntryCount:]))
	if n > mtMaxEntries {
		return errorf("metadata table EntryCount", r.start+mtEntryCount, "%d entries, at most %d allowed", n, mtMaxEntries)
	}
	items := map[guid]metaItem{}
	for i := range n {
		eo := mtEntries + i*mtEntrySize
		e := buf[eo : eo+mtEntrySize]
		field := fmt.Sprintf("metadata entry %d", i)
		var id guid
		copy(id[:], e[mteGUID:])
		off := int64(binary.LittleEndian.Uint32(e[mteOffset:]))
		length := int64(binary.LittleEndian.Uint32(e[mteLength:]))
		if length > 0 && (off < metadataSize || off+length > r.end-r.start) {
			return errorf(field+" Offset", r.start+eo+mteOffset, "item at %d of %d bytes lies outside the metadata region's %d bytes after its table", off, length, r.end-r.start)
		}
		switch id {
		case fileParamsGUID, virtualSizeGUID, page83GUID, logicalSectGUID, physicalSectGUID, parentLocGUID:
			if _, dup := items[id]; dup {
				return errorf(field, r.start+eo, "duplicate metadata item %s", id)
			}
			items[id] = metaItem{r.start + off, length, r.start + eo}
		default:
			if binary.LittleEndian.Uint32(e[mteFlags:])&mteIsRequired != 0 {
				return errorf(field, r.start+eo, "required metadata item of unknown type %s", id)
			}
		}
	}
	read := func(id guid, name string, size int) ([]byte, error) {
		it, ok := items[id]
		if !ok {
			return nil, errorf("metadata table", r.start, "required item %s is missing", name)
		}
		if it.length < int64(size) {
			return nil, errorf(name, it.tableOff+mteLength, "item of %d bytes, want %d", it.length, size)
		}
		b := make([]byte, size)
		return b, format.ReadFull(img.File, b, it.off, Name, name)
	}
	params, err := read(fileParamsGUID, "File Parameters", paramsSize)
	if err != nil {
		return err
	}
	vsize, err := read(virtualSizeGUID, "Virtual Disk Size", 8)
	if err != nil {
		return err
	}
	if _, err := read(page83GUID, "Page 83 Data", 16); err != nil {
		return err
	}
	logical, err := read(logicalSectGUID, "Logical Sector Size", 4)
	if err != nil {
		return err
	}
	physical, err := read(physicalSectGUID, "Physical Sector Size", 4)
	if err != nil {
		return err
	}
	flags := binary.LittleEndian.Uint32(params[4:])
	// LeaveBlocksAllocated means nothing in a differencing image.
	img.diff = flags&hasParent != 0
	img.fixed = flags&leaveAllocated != 0 && !img.diff
	bs := int64(binary.LittleEndian.Uint32(params))
	if bs < minBlockSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return errorf("File Parameters BlockSize", items[fileParamsGUID].off, "%d is not a power of two from %d to %d", bs, minBlockSize, maxBlockSize)
	}
	img.blockSize = bs
	img.logical = binary.LittleEndian.Uint32(logical)
	if img.logical != 512 && img.logical != 4096 {
		return errorf("Logical Sector Size", items[logicalSectGUID].off, "%d, want 512 or 4096", img.logical)
	}
	img.physical = binary.LittleEndian.Uint32(physical)
	if img.physical != 512 && img.physical != 4096 {
		return errorf("Physical Sector Size", items[physicalSectGUID].off, "%d, want 512 or 4096", img.physical)
	}
	size := binary.LittleEndian.Uint64(vsize)
	if size > maxVirtualSize || size%uint64(img.logical) != 0 {
		return errorf("Virtual Disk Size", items[virtualSizeGUID].off, "%d is not a multiple of the %d-byte sector up to %d bytes", size, img.logical, int64(maxVirtualSize))
	}
	img.Meta.VirtualSize = int64(size)
	img.chunkRatio = sectorsPerBitmap * int64(img.logical) / bs
	if img.diff {
		it, ok := items[parentLocGUID]
		return img.readParent(it, ok, r.start)
	}
	return nil
}

// readBAT loads the BAT and checks every payload entry: a known state, and
// for present blocks a MiB offset whose block lies in the file clear of
// the metadata regions.
func (img *Image) readBAT(r region, regions []region, fileSize int64) error {
	blocks := (img.Size() + img.blockSize - 1) / img.blockSize
	var entries int64
	switch {
	case img.diff:
		// A differencing image's BAT ends with its last chunk's sector
		// bitmap entry.
		entries = (blocks + img.chunkRatio - 1) / img.chunkRatio * (img.chunkRatio + 1)
	case blocks > 0:
		entries = blocks + (blocks-1)/img.chunkRatio
	}
	length := entries * batEntrySize
	if length > r.end-r.start {
		return errorf("BAT region", r.start, "%d entries for a %d-byte disk need %d bytes, the region has %d", entries, img.Size(), length, r.end-r.start)
	}
	if err := format.CheckTable(Name, "BAT", r.start, length, fileSize); err != nil {
		return err
	}
	buf := make([]byte, length)
	if err := format.ReadFull(img.File, buf, r.start, Name, "BAT"); err != nil {
		return err
	}
	img.bat = make([]uint64, entries)
	for i := range img.bat {
		img.bat[i] = binary.LittleEndian.Uint64(buf[i*batEntrySize:])
	}
	if img.diff {
		if err := img.checkBitmaps(r, regions, fileSize); err != nil {
			return err
		}
	}
	for b := range blocks {
		i := b + b/img.chunkRatio
		e := img.bat[i]
		switch e & batStateMask {
		case blockNotPresent, blockUndefined, blockZero, blockUnmapped, blockUnmappedV095:
		case blockFullyPresent, blockPartiallyPresent:
			if e&batStateMask == blockPartiallyPresent {
				if !img.diff {
					return batError(r, i, "partially present block in an image without a parent")
				}
				if img.bat[img.sbEntry(b)]&batStateMask != sbPresent {
					return batError(r, i, "partially present block whose chunk has no sector bitmap block")
				}
			}
			// The last block need only hold the disk's last bytes: qemu
			// once made files that end there.
			need := min(img.blockSize, img.Size()-b*img.blockSize)
			if err := checkPlace(r, i, "payload block", int64(e&batOffsetMask), need, fileSize, regions); err != nil {
				return err
			}
		default:
			return batError(r, i, "invalid payload block state %d", e&batStateMask)
		}
	}
	return nil
}

// checkPlace checks that the block of need bytes at off that BAT entry i
// of the BAT region r names lies in the file, clear of the regions.
func checkPlace(r region, i int64, what string, off, need, fileSize int64, regions []region) error {
	if off > fileSize || need > fileSize-off {
		return batError(r, i, "%s at %d extends past the end of the file (%d bytes)", what, off, fileSize)
	}
	for _, q := range regions {
		if off < q.end && q.start < off+need {
			return batError(r, i, "%s at %d overlaps the %s at [%d, %d)", what, off, q.name, q.start, q.end)
		}
	}
	return nil
}

// batError reports a bad BAT entry i of the BAT region r.
func batError(r region, i int64, reason string, args ...any) error {
	return errorf(fmt.Sprintf("BAT entry %d", i), r.start+i*batEntrySize, reason, args...)
}

// block returns the host offset of block b's data, or -1 when the block
// reads as zeros.
func (img *Image) block(b int64) int64 {
	e := img.bat[b+b/img.chunkRatio]
	if e&batStateMask == blockFullyPresent {
		return int64(e & batOffsetMask)
	}
	return -1
}

// ReadAt reads guest bytes: present blocks (and sectors) from the file,
// the rest zeros; the chain reads a differencing image's parent.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, img.Size())
	if n == 0 {
		return 0, clipErr
	}
	if img.diff {
		for done := 0; done < n; {
			pos := off + int64(done)
			_, host, end, err := img.diffPiece(pos)
			if err != nil {
				return done, err
			}
			dst := p[done:min(n, done+int(end-pos))]
			if host < 0 {
				clear(dst)
			} else if err := format.ReadFull(img.File, dst, host, Name, "payload block"); err != nil {
				return done, err
			}
			done += len(dst)
		}
		return n, clipErr
	}
	for done := 0; done < n; {
		pos := off + int64(done)
		b, in := pos/img.blockSize, pos%img.blockSize
		chunk := int(min(int64(n-done), img.blockSize-in))
		dst := p[done : done+chunk]
		if host := img.block(b); host < 0 {
			clear(dst)
		} else if err := format.ReadFull(img.File, dst, host+in, Name, "payload block"); err != nil {
			return done, err
		}
		done += chunk
	}
	return n, clipErr
}

// Extent returns the run at off with the status the BAT records: Data
// for present blocks, Zero for blocks in the ZERO state (all blocks of an
// image created with block_state_zero=on), Unallocated otherwise. (qemu
// 7.2 has no block status for VHDX and maps the whole disk as data, so it
// copies every byte of an empty disk; diskimg skips what is not there.)
func (img *Image) Extent(off int64) (format.Extent, error) {
	return img.ExtentTo(off, img.Size())
}

// ExtentTo is Extent with the run cut at limit. The sectors a
// differencing image does not hold are Unallocated: its parent's.
func (img *Image) ExtentTo(off, limit int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, fmt.Errorf("vhdx: extent offset %d outside the %d-byte disk", off, img.Size())
	}
	limit = min(limit, img.Size())
	if img.diff {
		return img.diffExtent(off, limit)
	}
	e, err := img.run(off, img.status)
	e.Length = min(e.Length, limit-off)
	return e, err
}

func (img *Image) status(b int64) format.Status {
	switch img.bat[b+b/img.chunkRatio] & batStateMask {
	case blockFullyPresent:
		return format.Data
	case blockZero:
		return format.Zero
	}
	return format.Unallocated
}

// run merges blocks from off's on while they share a status and presence
// and, when present, continue contiguously in the file.
func (img *Image) run(off int64, status func(int64) format.Status) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, fmt.Errorf("vhdx: extent offset %d outside the %d-byte disk", off, img.Size())
	}
	b := off / img.blockSize
	host, st := img.block(b), status(b)
	blocks := (img.Size() + img.blockSize - 1) / img.blockSize
	next := b + 1
	for ; next < blocks && status(next) == st; next++ {
		h := img.block(next)
		if (h < 0) != (host < 0) || host >= 0 && h != host+(next-b)*img.blockSize {
			break
		}
	}
	e := format.Extent{Start: off, Length: min(next*img.blockSize, img.Size()) - off, Status: st, Offset: -1}
	if host >= 0 {
		// qemu has no block status for VHDX (it maps all of it as data):
		// the host file's holes under a block show as zeros.
		e.Offset, e.File, e.Preallocated = host+off-b*img.blockSize, img.File, true
	}
	return e, nil
}

var _ io.ReaderAt = (*Image)(nil)
