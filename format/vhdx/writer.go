package vhdx

import (
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"unicode/utf16"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/blockset"
)

// Writer options, by qemu-img's -o names and values.
const (
	OptSubformat      = "subformat"
	OptBlockSize      = "block_size"
	OptLogSize        = "log_size"
	OptBlockStateZero = "block_state_zero"

	SubformatDynamic = "dynamic" // payload blocks only where the source has data
	SubformatFixed   = "fixed"   // every payload block present, in guest order
)

// Layout of a written image. qemu puts the log at 1 MiB, the BAT after it
// and the metadata region after the BAT, then leaves 4 MiB spare before
// the data; diskimg lets the payload blocks follow the metadata region.
const (
	logOffset         = headerSectionSize // the log starts right after the header section
	defaultLogSize    = 1 << 20           // qemu's default log_size
	maxLogSize        = math.MaxUint32    // LogLength is a uint32
	metadataRegionLen = 1 << 20           // qemu's metadata region length: the minimum
	metaItemsOffset   = metadataSize      // items follow the 64 KiB metadata table
	writerSectorSize  = 512               // logical sector size written
	writerPhysSector  = 4096              // physical sector size written (as Hyper-V does)
	creator           = "diskimg"         // file type identifier Creator field
	maxCreatorBytes   = 512               // the Creator field is 256 UTF-16 units
	hdrFileWriteGUID  = 16                // GUID, changed whenever the file is written
	hdrDataWriteGUID  = 32                // GUID, changed whenever guest data is written
	mteIsVirtualDisk  = 2                 // metadata entry flag bit 1
	rtEntriesWritten  = 2                 // the BAT and metadata regions

	// writeUnit is the writer's BlockSize: the grid of zero detection. A
	// VHDX payload block (1 to 256 MiB) is allocated whole, but a 4 KiB
	// run of zeros inside one still becomes a hole in a seekable output.
	writeUnit = writerPhysSector
)

// Default block sizes by virtual size, as qemu picks them ("mainly
// designed to keep the BAT size reasonable").
func defaultBlockSize(size int64) int64 {
	switch {
	case size > 32<<40:
		return 64 << 20
	case size > 100<<30:
		return 32 << 20
	case size > 1<<30:
		return 16 << 20
	}
	return 8 << 20
}

func init() {
	format.RegisterWriter(&format.WriterFormat{
		Name: Name,
		Options: []format.OptionSpec{
			{Name: OptSubformat, Help: "dynamic (the default: blocks only where there is data) or fixed (every block present)",
				Validate: format.OneOf(SubformatDynamic, SubformatFixed)},
			{Name: OptBlockSize, Help: "payload block size, 1M to 256M, a power of two; 0 or absent picks by disk size as qemu does",
				Validate: func(v string) error { _, err := parseBlockSize(v); return err }},
			{Name: OptLogSize, Help: "log region size, a multiple of 1M (rounded up); default 1M",
				Validate: func(v string) error { _, err := parseLogSize(v); return err }},
			{Name: OptBlockStateZero, Help: "on (the default): blocks without data are in the ZERO state; off: NOT_PRESENT",
				Validate: func(v string) error { _, err := parseBool(v); return err }},
		},
		MaxSize: maxVirtualSize,
		Check:   func(o format.WriteOptions) error { _, err := plan(o); return err },
		New:     format.Creates(NewWriter),
		Measure: Measure,
	})
}

func roundUp(v, unit int64) int64 { return (v + unit - 1) / unit * unit }

// parseBlockSize returns the block size an option value asks for, 0 for
// the default. Like qemu, it rounds up to a whole MiB and caps at 256 MiB.
func parseBlockSize(v string) (int64, error) {
	n, err := format.ParseSize(v)
	if err != nil {
		return 0, err
	}
	n = min(roundUp(n, alignment), maxBlockSize)
	if n&(n-1) != 0 {
		return 0, fmt.Errorf("block size %d is not a power of two", n)
	}
	return n, nil
}

// parseLogSize returns the log size an option value asks for, rounded up
// to a whole MiB as qemu does.
func parseLogSize(v string) (int64, error) {
	n, err := format.ParseSize(v)
	if err != nil {
		return 0, err
	}
	if n > maxLogSize {
		return 0, fmt.Errorf("log size must be smaller than 4 GiB")
	}
	n = roundUp(n, alignment)
	if n == 0 || n > maxLogSize {
		return 0, fmt.Errorf("log size must be a multiple of 1 MiB from 1 MiB to 4 GiB")
	}
	return n, nil
}

// parseBool reads a qemu boolean option value.
func parseBool(v string) (bool, error) {
	switch v {
	case "on", "yes", "true", "y":
		return true, nil
	case "off", "no", "false", "n":
		return false, nil
	}
	return false, errors.New("must be on or off")
}

// params is the geometry of an image to write.
type params struct {
	size       int64 // virtual size: the disk size rounded up to a sector
	blockSize  int64
	logSize    int64
	fixed      bool
	zeroState  bool  // block_state_zero: absent blocks are ZERO, not NOT_PRESENT
	blocks     int64 // payload blocks
	chunkRatio int64 // payload blocks per sector bitmap block
	entries    int64 // BAT entries, sector bitmap entries included
	batOff     int64
	batLen     int64
	metaOff    int64
	dataOff    int64 // where payload blocks start
}

// plan works out the geometry for options o, checking what the options'
// own validation cannot: the BAT must fit in what a reader will load.
func plan(o format.WriteOptions) (*params, error) {
	p := &params{logSize: defaultLogSize, zeroState: true}
	if o.Size < 0 || o.Size > maxVirtualSize {
		return nil, fmt.Errorf("vhdx: virtual size %d is out of range (0 to %d bytes)", o.Size, int64(maxVirtualSize))
	}
	p.size = roundUp(o.Size, writerSectorSize)
	opts := o.Options
	switch v := opts[OptSubformat]; v {
	case "", SubformatDynamic:
	case SubformatFixed:
		p.fixed = true
	default:
		return nil, fmt.Errorf("vhdx: option %s=%s: must be %s or %s", OptSubformat, v, SubformatDynamic, SubformatFixed)
	}
	if v, ok := opts[OptBlockSize]; ok {
		n, err := parseBlockSize(v)
		if err != nil {
			return nil, fmt.Errorf("vhdx: option %s=%s: %w", OptBlockSize, v, err)
		}
		p.blockSize = n
	}
	if p.blockSize == 0 {
		p.blockSize = defaultBlockSize(p.size)
	}
	if v, ok := opts[OptLogSize]; ok {
		n, err := parseLogSize(v)
		if err != nil {
			return nil, fmt.Errorf("vhdx: option %s=%s: %w", OptLogSize, v, err)
		}
		p.logSize = n
	}
	if v, ok := opts[OptBlockStateZero]; ok {
		b, err := parseBool(v)
		if err != nil {
			return nil, fmt.Errorf("vhdx: option %s=%s: %w", OptBlockStateZero, v, err)
		}
		p.zeroState = b
	}
	p.blocks = (p.size + p.blockSize - 1) / p.blockSize
	p.chunkRatio = sectorsPerBitmap * writerSectorSize / p.blockSize
	if p.blocks > 0 {
		p.entries = p.blocks + (p.blocks-1)/p.chunkRatio
	}
	batBytes := p.entries * batEntrySize
	if batBytes > format.MaxTableBytes {
		return nil, fmt.Errorf("vhdx: a %d-byte disk in %d-byte blocks needs a BAT of %d bytes, over the %d-byte limit readers load; use a larger %s",
			o.Size, p.blockSize, batBytes, format.MaxTableBytes, OptBlockSize)
	}
	p.batOff = logOffset + p.logSize
	p.batLen = max(roundUp(batBytes, alignment), alignment)
	p.metaOff = p.batOff + p.batLen
	p.dataOff = p.metaOff + metadataRegionLen
	return p, nil
}

// dataBlocks counts the payload blocks a layout puts data in.
func (p *params) dataBlocks(l format.Layout, size int64) (int64, error) {
	if p.fixed {
		return p.blocks, nil
	}
	if l == nil {
		return 0, nil
	}
	var n int64
	err := l.Align(size, p.blockSize)(func(e format.Extent) error {
		if e.Status == format.Data {
			n += (e.Length + p.blockSize - 1) / p.blockSize
		}
		return nil
	})
	return n, err
}

// Measure answers qemu-img measure for VHDX output (qemu 7.2 itself
// cannot measure VHDX): the metadata ahead of the payload plus one whole
// block per block the layout has data in, or per block of the disk when
// fully allocated. Fixed images are always fully allocated. Blocks whose
// data turns out all zero are not allocated, so Required is an upper
// bound when the source stores zeros as data.
func Measure(o format.WriteOptions) (format.Measurement, error) {
	p, err := plan(o)
	if err != nil {
		return format.Measurement{}, err
	}
	n, err := p.dataBlocks(o.Layout, o.Size)
	if err != nil {
		return format.Measurement{}, err
	}
	return format.Measurement{
		Required:       p.dataOff + n*p.blockSize,
		FullyAllocated: p.dataOff + p.blocks*p.blockSize,
	}, nil
}

// randReader supplies the GUIDs; tests replace it to make output
// reproducible.
var randReader io.Reader = crand.Reader

// newGUID returns a random (version 4) GUID in its on-disk byte order.
func newGUID() (guid, error) {
	var g guid
	if _, err := io.ReadFull(randReader, g[:]); err != nil {
		return g, fmt.Errorf("vhdx: generating a GUID: %w", err)
	}
	g[7] = g[7]&0x0f | 0x40 // version 4 in the high nibble of the little-endian third field
	g[8] = g[8]&0x3f | 0x80 // RFC 4122 variant
	return g, nil
}

// Writer writes a VHDX image. Everything ahead of the payload (header
// section, log, BAT, metadata) has a fixed size, so the payload blocks
// start at the same offset whatever holds data, and follow one another in
// guest order. A dynamic payload block is allocated when any Data block
// arrives for it; parts of it that arrive as zeros are holes on a seekable
// destination and written zeros on a pipe. The output is the same byte
// for byte either way:
//
//   - fixed: every block is allocated; the metadata is written by
//     NewWriter and the file front to back.
//   - dynamic, on a file: blocks are allocated as their data arrives and
//     the metadata, BAT included, is written at Close.
//   - dynamic, on a pipe, or on a file with WriteOptions.FrontToBack (a
//     streamed checksum): the engine's data scan (MarkData) says which
//     blocks get data, or, without a scan, every block the Layout has
//     data in is allocated; the metadata is written at the first Write
//     (or at Close). On a file the gaps are sought over, never written,
//     and nothing is written below an offset already written.
type Writer struct {
	p    *params
	out  *format.Output
	lazy bool  // dynamic on a file, not FrontToBack: blocks allocated by Write, metadata by Close
	meta bool  // everything ahead of the payload is written
	disk int64 // disk size: blocks end here
	next int64 // guest offset the next block must start at

	// Payload blocks (dynamic only), a bit per block: those the layout
	// has data in, and those allocated, with a cursor that counts set bits
	// of alloc before block cb, for monotonic lookups.
	layout blockset.Set
	alloc  blockset.Set
	cb, cr int64
}

// NewWriter lays out a VHDX image of o.Size bytes. dst may be a pipe.
func NewWriter(dst format.Target, o format.WriteOptions) (*Writer, error) {
	p, err := plan(o)
	if err != nil {
		return nil, err
	}
	if o.Layout == nil {
		return nil, errors.New("vhdx: writer created without a layout")
	}
	out, err := format.NewOutput(dst, Name)
	if err != nil {
		return nil, err
	}
	w := &Writer{p: p, out: out, disk: o.Size}
	if p.fixed {
		if err := w.writeMetadata(w.writeAt); err != nil {
			return nil, err
		}
		w.meta = true
		return w, nil
	}
	// The blocks the layout has data in: the most that may be allocated.
	w.layout = blockset.New(p.blocks)
	err = o.Layout.Align(o.Size, p.blockSize)(func(e format.Extent) error {
		if e.Status != format.Data {
			return nil
		}
		first, last := e.Start/p.blockSize, (e.End()-1)/p.blockSize
		if e.Start < 0 || e.Length <= 0 || last >= p.blocks {
			return fmt.Errorf("vhdx: layout range [%d,+%d) outside the %d-byte disk", e.Start, e.Length, o.Size)
		}
		w.layout.AddRange(first, last+1)
		return nil
	})
	if err != nil {
		return nil, err
	}
	w.alloc = blockset.New(p.blocks)
	if out.Seekable() && !o.FrontToBack {
		w.lazy = true
		return w, nil
	}
	// A pipe, or a file written front to back: until a data scan says
	// otherwise, every block the layout has data in is allocated.
	copy(w.alloc, w.layout)
	return w, nil
}

// NeedsDataScan is true for a dynamic image written front to back (on a
// pipe, or on a file with FrontToBack), whose BAT precedes the payload:
// the blocks to allocate then come from MarkData alone.
func (w *Writer) NeedsDataScan() bool {
	if w.lazy || w.p.fixed || w.meta {
		return false
	}
	clear(w.alloc)
	return true
}

// MarkData allocates the payload blocks that [start, start+length) will
// carry data in.
func (w *Writer) MarkData(start, length int64) {
	if w.lazy || w.p.fixed || w.meta || start < 0 || length <= 0 || start+length > w.disk {
		return
	}
	w.alloc.AddRange(start/w.p.blockSize, (start+length-1)/w.p.blockSize+1)
}

// allocated reports whether payload block b has a place in the file.
func (w *Writer) allocated(b int64) bool {
	return w.p.fixed || w.alloc.Has(b)
}

// count returns the number of allocated payload blocks.
func (w *Writer) count() int64 {
	if w.p.fixed {
		return w.p.blocks
	}
	return w.alloc.Count()
}

// end returns the file's length: the end of the last payload block.
func (w *Writer) end() int64 { return w.p.dataOff + w.count()*w.p.blockSize }

// rank returns the number of allocated blocks before block b: block b's
// index among the payload blocks in the file. Calls with increasing b
// cost time proportional to the distance moved.
func (w *Writer) rank(b int64) int64 {
	if w.p.fixed {
		return b
	}
	if b < w.cb {
		w.cb, w.cr = 0, 0
	}
	for w.cb < b {
		if w.cb%64 == 0 && b-w.cb >= 64 {
			w.cr += int64(bits.OnesCount64(w.alloc[w.cb/64]))
			w.cb += 64
			continue
		}
		if w.allocated(w.cb) {
			w.cr++
		}
		w.cb++
	}
	return w.cr
}

// host returns the file offset of guest offset g, or false when its block
// is not allocated.
func (w *Writer) host(g int64) (int64, bool) {
	b := g / w.p.blockSize
	if !w.allocated(b) {
		return 0, false
	}
	return w.p.dataOff + w.rank(b)*w.p.blockSize + g%w.p.blockSize, true
}

// writeAt writes p at file offset off, at or after the current position;
// the gap before it is zeros: a hole on a file, written on a pipe.
func (w *Writer) writeAt(off int64, p []byte) error {
	if err := w.out.SkipTo(off); err != nil {
		return err
	}
	_, err := w.out.Write(p)
	return err
}

// writeMetadata writes the header section, the log (empty), the BAT and
// the metadata region through put, in increasing file offset order, for
// the payload blocks allocated now.
func (w *Writer) writeMetadata(put func(off int64, b []byte) error) error {
	p := w.p
	var ids [3]guid // file write, data write, page 83: fresh for a new disk
	for i := range ids {
		var err error
		if ids[i], err = newGUID(); err != nil {
			return err
		}
	}

	// File type identifier: signature and creator.
	buf := make([]byte, regionTableSize)
	copy(buf, fileSignature)
	for i, u := range utf16.Encode([]rune(creator)) {
		if 8+2*i+2 <= 8+maxCreatorBytes {
			binary.LittleEndian.PutUint16(buf[8+2*i:], u)
		}
	}
	if err := put(0, buf[:4096]); err != nil {
		return err
	}

	// Two headers. The second has the higher sequence number and is
	// current; they are otherwise identical, so either describes the file.
	for i, off := range []int64{header1Offset, header2Offset} {
		h := buf[:headerSize]
		clear(h)
		copy(h[hdrSignature:], headerSignature)
		binary.LittleEndian.PutUint64(h[hdrSequence:], uint64(i+1))
		copy(h[hdrFileWriteGUID:], ids[0][:])
		copy(h[hdrDataWriteGUID:], ids[1][:])
		// LogGuid stays zero: the log holds nothing to replay.
		binary.LittleEndian.PutUint16(h[hdrLogVer:], 0)
		binary.LittleEndian.PutUint16(h[hdrVersion:], 1)
		binary.LittleEndian.PutUint32(h[hdrLogLength:], uint32(p.logSize))
		binary.LittleEndian.PutUint64(h[hdrLogOffset:], logOffset)
		binary.LittleEndian.PutUint32(h[hdrChecksum:], checksum(h, hdrChecksum))
		if err := put(off, h); err != nil {
			return err
		}
	}

	// Two copies of the region table; its checksum covers all 64 KiB.
	clear(buf)
	copy(buf, regionSignature)
	binary.LittleEndian.PutUint32(buf[rtEntryCount:], rtEntriesWritten)
	for i, r := range []struct {
		id       guid
		off, len int64
	}{{batGUID, p.batOff, p.batLen}, {metadataGUID, p.metaOff, metadataRegionLen}} {
		e := buf[rtEntries+i*rtEntrySize:]
		copy(e[rteGUID:], r.id[:])
		binary.LittleEndian.PutUint64(e[rteFileOffset:], uint64(r.off))
		binary.LittleEndian.PutUint32(e[rteLength:], uint32(r.len))
		binary.LittleEndian.PutUint32(e[rteFlags:], rteRequired)
	}
	binary.LittleEndian.PutUint32(buf[rtChecksum:], checksum(buf, rtChecksum))
	for _, off := range []int64{regionTable1Offset, regionTable2Offset} {
		if err := put(off, buf[:4096]); err != nil {
			return err
		}
	}

	if err := w.writeBAT(put); err != nil {
		return err
	}

	// Metadata region: the table, then the five required items.
	clear(buf)
	copy(buf, metaSignature)
	items := []struct {
		id    guid
		flags uint32
		data  []byte
	}{
		{fileParamsGUID, mteIsRequired, le32s(uint32(p.blockSize), fileParamFlags(p))},
		{virtualSizeGUID, mteIsRequired | mteIsVirtualDisk, binary.LittleEndian.AppendUint64(nil, uint64(p.size))},
		{page83GUID, mteIsRequired | mteIsVirtualDisk, ids[2][:]},
		{logicalSectGUID, mteIsRequired | mteIsVirtualDisk, le32s(writerSectorSize)},
		{physicalSectGUID, mteIsRequired | mteIsVirtualDisk, le32s(writerPhysSector)},
	}
	binary.LittleEndian.PutUint16(buf[mtEntryCount:], uint16(len(items)))
	var data []byte // the items, packed from metaItemsOffset on
	for i, it := range items {
		e := buf[mtEntries+i*mtEntrySize:]
		copy(e[mteGUID:], it.id[:])
		binary.LittleEndian.PutUint32(e[mteOffset:], uint32(metaItemsOffset+len(data)))
		binary.LittleEndian.PutUint32(e[mteLength:], uint32(len(it.data)))
		binary.LittleEndian.PutUint32(e[mteFlags:], it.flags)
		data = append(data, it.data...)
	}
	if err := put(p.metaOff, buf[:4096]); err != nil {
		return err
	}
	return put(p.metaOff+metaItemsOffset, data)
}

func le32s(v ...uint32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, x)
	}
	return b
}

func fileParamFlags(p *params) uint32 {
	if p.fixed {
		return leaveAllocated
	}
	return 0
}

// writeBAT writes the BAT in chunks through put: allocated blocks point
// at their place in the payload, the rest are ZERO or NOT_PRESENT, and
// the sector bitmap entries (every chunkRatio+1-th) are NOT_PRESENT:
// there is no parent. All-zero chunks are skipped on a file.
func (w *Writer) writeBAT(put func(off int64, b []byte) error) error {
	p := w.p
	const chunk = 256 << 10
	buf := make([]byte, min(p.entries*batEntrySize, chunk))
	absent := uint64(blockNotPresent)
	if p.zeroState {
		absent = blockZero
	}
	var rank int64 // allocated blocks so far
	var b int64    // next payload block
	for i := int64(0); i < p.entries; {
		n := min(p.entries-i, int64(len(buf))/batEntrySize)
		nonzero := false
		for k := range n {
			var e uint64
			if (i+k+1)%(p.chunkRatio+1) != 0 {
				if w.allocated(b) {
					e = blockFullyPresent | uint64(p.dataOff+rank*p.blockSize)
					rank++
				} else {
					e = absent
				}
				b++
			}
			nonzero = nonzero || e != 0
			binary.LittleEndian.PutUint64(buf[k*batEntrySize:], e)
		}
		if nonzero || !w.out.Seekable() {
			if err := put(p.batOff+i*batEntrySize, buf[:n*batEntrySize]); err != nil {
				return err
			}
		}
		i += n
	}
	if b != p.blocks {
		return fmt.Errorf("vhdx: BAT holds %d payload blocks, want %d", b, p.blocks)
	}
	return nil
}

// BlockSize is the zero-detection grid, 4 KiB: a payload block is
// allocated whole when any 4 KiB of it carries data.
func (w *Writer) BlockSize() int64 { return writeUnit }

// Encode does nothing: payload data is stored as it is.
func (w *Writer) Encode(*format.Block) error { return nil }

// Write stores a Data block in its payload block, allocating the block on
// a file. Zero and unallocated blocks need nothing: inside allocated
// payload blocks they become the gap before the next write, zeros either
// way.
func (w *Writer) Write(b *format.Block) error {
	if b.Start != w.next || b.Length <= 0 || b.End() > w.disk {
		return fmt.Errorf("vhdx: block [%d,+%d) out of order or outside the %d-byte disk (next is %d)", b.Start, b.Length, w.disk, w.next)
	}
	if !w.meta && !w.lazy {
		// Front to back: the allocation is settled, the metadata goes
		// first.
		if err := w.writeMetadata(w.writeAt); err != nil {
			return err
		}
		w.meta = true
	}
	w.next = b.End()
	if b.Status != format.Data {
		return nil
	}
	if int64(len(b.Data)) != b.Length {
		return fmt.Errorf("vhdx: data block [%d,+%d) carries %d bytes", b.Start, b.Length, len(b.Data))
	}
	if w.lazy {
		// Blocks arrive in guest order, so the ones allocated here follow
		// every block allocated before.
		first, last := b.Start/w.p.blockSize, (b.End()-1)/w.p.blockSize
		for i := first; i <= last; i++ {
			if !w.layout.Has(i) {
				return fmt.Errorf("vhdx: data block [%d,+%d) lies in a payload block the layout left without data", b.Start, b.Length)
			}
		}
		w.alloc.AddRange(first, last+1)
	}
	off, ok := w.host(b.Start)
	last, okLast := w.host(b.End() - 1)
	if !ok || !okLast || last-off != b.Length-1 {
		return fmt.Errorf("vhdx: data block [%d,+%d) lies in a payload block allocated without data", b.Start, b.Length)
	}
	return w.writeAt(off, b.Data)
}

// Close writes the metadata if it is not written yet (on a file, now that
// the allocation is known), and writes (or, on a file, sets the length
// over) the zeros that end the last payload block.
func (w *Writer) Close() error {
	if w.next != w.disk {
		return fmt.Errorf("vhdx: closed after %d of %d bytes", w.next, w.disk)
	}
	end := w.end()
	if w.lazy {
		// The payload is written: set the length, then write the
		// metadata over the hole left for it.
		if err := w.out.Finish(end); err != nil {
			return err
		}
		if err := w.out.Rewind(); err != nil {
			return err
		}
		if err := w.writeMetadata(w.writeAt); err != nil {
			return err
		}
		return w.out.EndRewrite()
	}
	if !w.meta {
		if err := w.writeMetadata(w.writeAt); err != nil {
			return err
		}
		w.meta = true
	}
	return w.out.Finish(end)
}
