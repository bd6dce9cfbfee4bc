package vhdspec

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/diskimg/diskimg/format"
)

// The on-disk layout ZVHD2 and the older ZVHD (Huawei Cloud IMS) share,
// described in docs/ZVHD2.md. All integers are little-endian: the drivers
// write their C structs to disk as they are, unlike Microsoft VHD whose
// footer they borrow as their descriptor.

// Descriptor slot and its fields.
const (
	SlotSize       = 4096 // each descriptor sits at the start of a 4 KiB slot
	DescriptorSize = 512  // bytes of the slot that are the descriptor

	CookieZVHD2 = "z2strm" // ZVHD2 cookie (8-byte field, NUL padded)
	CookieZVHD  = "stream" // old ZVHD cookie
	CookieLen   = 6        // probes compare only this many bytes

	OffHidden         = 85  // u8
	OffAlign64        = 86  // u8
	OffVersion        = 87  // u8, zvhd2_version; ZVHD: reserved
	OffBlockSize      = 88  // u32; fields from here on are ZVHD2 only
	OffMaxBlkNum      = 92  // u32
	OffIndexLBA       = 96  // u64, a byte offset despite the name
	OffBitmapLBA      = 104 // u64, a byte offset despite the name
	OffIndexSize      = 112 // u32
	OffBitmapSize     = 116 // u32
	OffIndexSegSize   = 120 // u32
	OffBitmapSegSize  = 124 // u32
	OffIndexSegNum    = 128 // u32
	OffBitmapSegNum   = 132 // u32
	OffNonZeroBlkNum  = 136 // u32
	OffIndexDense     = 140 // u8, index_contains_zero_blk
	OffCompressMethod = 141 // u8
)

// Field values.
const (
	BlockSize     = 2 << 20 // the only block size the drivers really use
	IndexSegSize  = 512 << 10
	BitmapSegSize = 4096
	EntrySize     = 16                       // index entry: u64 offset, u32 block, u32 length
	SegBlocks     = IndexSegSize / EntrySize // index entries per segment
	BitmapBlocks  = BitmapSegSize * 8        // blocks per bitmap segment
	CurrSizeAlign = 1 << 30                  // curr_size is orig_size rounded up to this

	VersionIndexed = 1 // zvhd2_version of the indexed format

	MethodZlib = 0 // compress_method: per-block sync-flushed zlib stream
	MethodZstd = 1 // compress_method: per-block zstd frame (the default)

	// Values the drivers write in fields nobody checks.
	Features       = 2
	FormatVersion  = 0x00010000
	CreatorApp     = "tap\x00"
	CreatorVersion = 0x00010004
	DiskType       = 4
)

// Data records ("hwstream" records), one per stored block.
const (
	RecordMagic     = "hwstream bg\x00" // 12 bytes at the start of a record
	RecordEnd       = "end\x00"         // last 4 bytes of a record
	RecordEndLen    = 4                 // len(RecordEnd)
	RecordHeaderLen = 48                // header before the payload
	RecordAlign     = 4096              // records start and end on this

	OffRecPayloadLen = 12 // u32
	OffRecBlock      = 16 // u32

	// MaxPayload is the C reader's buffer limit for one payload (ZVHD2:
	// 2×block + block/1000 + 128, rounded up to 4 KiB).
	MaxPayload = 4198400
	// MaxRecordLen is the longest record a payload within MaxPayload makes.
	MaxRecordLen = (RecordHeaderLen + MaxPayload + RecordEndLen + RecordAlign - 1) / RecordAlign * RecordAlign
)

// Descriptor is the 512-byte descriptor ("footer") of both formats: the
// drivers' C struct, field for field and packed, so that encoding/binary
// lays it out at the Off* offsets.
type Descriptor struct {
	Cookie         [8]byte
	Features       uint32
	FormatVersion  uint32
	DataOffset     uint64
	Timestamp      uint32
	CreatorApp     [4]byte
	CreatorVersion uint32
	CreatorOS      uint32
	OrigSize       uint64
	CurrSize       uint64
	Geometry       uint32
	DiskType       uint32
	Checksum       uint32
	UUID           [16]byte
	Saved          uint8
	Hidden         uint8
	Align64        uint8
	Version        uint8
	BlockSize      uint32
	MaxBlkNum      uint32
	IndexLBA       uint64
	BitmapLBA      uint64
	IndexSize      uint32
	BitmapSize     uint32
	IndexSegSize   uint32
	BitmapSegSize  uint32
	IndexSegNum    uint32
	BitmapSegNum   uint32
	NonZeroBlkNum  uint32
	IndexDense     uint8 // index_contains_zero_blk
	CompressMethod uint8
}

var le = binary.LittleEndian

// DecodeDescriptor decodes the descriptor at the start of b, which holds
// at least DescriptorSize bytes.
func DecodeDescriptor(b []byte) *Descriptor {
	d := &Descriptor{}
	binary.Decode(b[:DescriptorSize], le, d) // the struct takes 142 of the 512 bytes: it cannot fail
	return d
}

// Encode writes d into the first DescriptorSize bytes of b, reserved bytes
// zero. It stores d.Checksum as it is; call SetChecksum afterwards.
func (d *Descriptor) Encode(b []byte) {
	b = b[:DescriptorSize]
	clear(b)
	binary.Encode(b, le, d)
}

// DescriptorChecksum returns the checksum of the descriptor at the start
// of b: the footer's Checksum of its DescriptorSize bytes.
func DescriptorChecksum(b []byte) uint32 { return Checksum(b[:DescriptorSize], OffChecksum) }

// SetChecksum stores the checksum of the encoded descriptor b in it.
func SetChecksum(b []byte) { le.PutUint32(b[OffChecksum:], DescriptorChecksum(b)) }

// StoredChecksum returns the checksum field of the encoded descriptor b.
func StoredChecksum(b []byte) uint32 { return le.Uint32(b[OffChecksum:]) }

// PackedGeometry returns the VHD CHS geometry of a disk of size bytes,
// packed as the descriptor stores it (cylinders<<16 | heads<<8 | sectors).
// The sector count is cut to 32 bits first, as the drivers do.
func PackedGeometry(size uint64) uint32 {
	sectors := min(int64(uint32(size/SectorSize)), MaxGeometry)
	cyl, heads, spt := Geometry(sectors)
	return uint32(cyl<<16 | heads<<8 | spt)
}

// RecordHeader is the part of a record's 48-byte header that carries
// information.
type RecordHeader struct {
	PayloadLen uint32 // compressed bytes after the header
	Block      uint32 // virtual block number
}

// RecordLen returns the length of the record holding a payload of p bytes.
func RecordLen(p int64) int64 {
	return (RecordHeaderLen + p + RecordEndLen + RecordAlign - 1) / RecordAlign * RecordAlign
}

// EncodeRecordHeader writes h as a record header into the first
// RecordHeaderLen bytes of b.
func EncodeRecordHeader(b []byte, h RecordHeader) {
	b = b[:RecordHeaderLen]
	clear(b)
	copy(b, RecordMagic)
	le.PutUint32(b[OffRecPayloadLen:], h.PayloadLen)
	le.PutUint32(b[OffRecBlock:], h.Block)
}

// DecodeRecordHeader decodes a record header from b (RecordHeaderLen
// bytes), reporting whether it starts with RecordMagic.
func DecodeRecordHeader(b []byte) (h RecordHeader, ok bool) {
	b = b[:RecordHeaderLen]
	h.PayloadLen = le.Uint32(b[OffRecPayloadLen:])
	h.Block = le.Uint32(b[OffRecBlock:])
	return h, string(b[:len(RecordMagic)]) == RecordMagic
}

// IndexEntry is one 16-byte index entry: where a stored block's record is.
type IndexEntry struct {
	Offset uint64 // record offset from the start of the file
	Block  uint32 // virtual block number
	Length uint32 // record length
}

// DecodeIndexEntry decodes the entry in the first EntrySize bytes of b.
func DecodeIndexEntry(b []byte) IndexEntry {
	return IndexEntry{Offset: le.Uint64(b), Block: le.Uint32(b[8:]), Length: le.Uint32(b[12:])}
}

// Encode writes e into the first EntrySize bytes of b.
func (e IndexEntry) Encode(b []byte) {
	le.PutUint64(b, e.Offset)
	le.PutUint32(b[8:], e.Block)
	le.PutUint32(b[12:], e.Length)
}

// Method names a compress_method value.
func Method(m uint8) string {
	switch m {
	case MethodZlib:
		return "zlib"
	case MethodZstd:
		return "zstd"
	}
	return fmt.Sprintf("unknown (%d)", m)
}

// CeilDiv returns ceil(a/b) for b > 0.
func CeilDiv(a, b uint64) uint64 { return (a + b - 1) / b }

// Writer limits.
const (
	// MaxSize is the largest disk a ZVHD2 file describes: max_blk_num and
	// the block numbers are u32.
	MaxSize = (1<<32 - 1) * BlockSize
	// MaxStoredBlocks is the most records an index can list: index_size
	// is a u32 count of bytes in whole 512 KiB segments.
	MaxStoredBlocks = (1<<32 - 1) / IndexSegSize * SegBlocks
	// PayloadBound bounds the compressed payload of one block, for either
	// codec: zstd adds at most 1/256 plus a frame header to incompressible
	// data, deflate 5 bytes per stored block of up to 64 KiB.
	PayloadBound = BlockSize + BlockSize>>7 + 4096
)

// Register registers the reader of a format whose files start with cookie.
func Register[I format.Image](name string, priority int, cookie string, open func(format.File) (I, error),
	check func(context.Context, format.File) (*format.CheckResult, error)) {
	format.Register(&format.Format{
		Name:      name,
		Priority:  priority,
		Probe:     func(f format.File) bool { return HasCookie(f, cookie) },
		Open:      format.OpensFile(open),
		CheckFile: check,
	})
}

// HasCookie reports whether f starts with the first CookieLen bytes of
// cookie, as the drivers' probes check.
func HasCookie(f format.File, cookie string) bool {
	return format.HasMagic(f, 0, cookie[:CookieLen])
}

// CheckSizes validates orig_size and curr_size of d, a descriptor at file
// offset off of format fmtName.
func CheckSizes(fmtName string, d *Descriptor, off int64) error {
	switch {
	case d.OrigSize%SectorSize != 0:
		return format.Errorf(fmtName, "orig_size", off+OffOriginalSize, "%d is not a multiple of %d", d.OrigSize, SectorSize)
	case d.OrigSize > format.MaxVirtualSize:
		return format.Errorf(fmtName, "orig_size", off+OffOriginalSize, "%d exceeds the %d-byte limit", d.OrigSize, uint64(format.MaxVirtualSize))
	case d.CurrSize != CeilDiv(d.OrigSize, CurrSizeAlign)*CurrSizeAlign:
		return format.Errorf(fmtName, "curr_size", off+OffCurrentSize, "%d is not orig_size %d rounded up to 1 GiB", d.CurrSize, d.OrigSize)
	}
	return nil
}

// FormatUUID writes a uuid's 16 raw bytes in the usual 8-4-4-4-12 form.
func FormatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Hooks for tests: the descriptor's timestamp and uuid are the only bytes
// that differ between two runs.
var (
	Clock                = time.Now
	UUIDSource io.Reader = rand.Reader
)

// OrigSize is the orig_size of a disk of size bytes: rounded up to 512.
func OrigSize(size int64) int64 { return (size + SectorSize - 1) / SectorSize * SectorSize }

// NewDescriptor returns the descriptor fields both formats share for a
// disk of size bytes, with cookie, a fresh timestamp and a random uuid.
// The ZVHD2-only fields (from zvhd2_version on) are left zero.
func NewDescriptor(cookie string, size int64) (*Descriptor, error) {
	orig := uint64(OrigSize(size))
	d := &Descriptor{
		Features:       Features,
		FormatVersion:  FormatVersion,
		DataOffset:     ^uint64(0),
		CreatorVersion: CreatorVersion,
		OrigSize:       orig,
		CurrSize:       CeilDiv(orig, CurrSizeAlign) * CurrSizeAlign,
		Geometry:       PackedGeometry(orig),
		DiskType:       DiskType,
	}
	copy(d.Cookie[:], cookie)
	copy(d.CreatorApp[:], CreatorApp)
	if secs := Clock().Sub(Epoch) / time.Second; secs > 0 {
		d.Timestamp = uint32(secs)
	}
	if _, err := io.ReadFull(UUIDSource, d.UUID[:]); err != nil {
		return nil, fmt.Errorf("uuid: %w", err)
	}
	d.UUID[6] = d.UUID[6]&0x0f | 0x40 // version 4 (random), as uuid_generate makes
	d.UUID[8] = d.UUID[8]&0x3f | 0x80 // RFC 4122 variant
	return d, nil
}

// Slot returns d encoded in a 4096-byte slot with a fresh checksum; the
// bytes after the descriptor are zero.
func Slot(d *Descriptor) []byte {
	b := make([]byte, SlotSize)
	d.Encode(b)
	SetChecksum(b)
	return b
}

// Record is one encoded record: the bytes to write for a block.
type Record struct {
	Block uint32
	Buf   []byte // the record, or for ZVHD the header room and payload
	pool  *[]byte
}

// Free returns the record's buffer for reuse; r.Buf is invalid after.
func (r Record) Free() {
	if r.pool != nil {
		recordPool.Put(r.pool)
	}
}

// recordCap holds the longest record EncodeBlocks makes, plus room for a
// ZVHD zlib header.
var recordCap = int(RecordLen(PayloadBound)) + 2*RecordAlign

var (
	recordPool = sync.Pool{New: func() any { b := make([]byte, recordCap); return &b }}
	blockPool  = sync.Pool{New: func() any { b := make([]byte, BlockSize); return &b }}
)

// EncodeBlocks splits the Data block b into its 2 MiB blocks, drops the
// all-zero ones and calls compress for each other, zero-padded to 2 MiB,
// with a buffer of RecordHeaderLen bytes (room for the record header) to
// append the payload to. The records' Buf hold header room and payload;
// FinishRecord completes them.
func EncodeBlocks(b *format.Block, compress func(dst, block []byte) ([]byte, error)) ([]Record, error) {
	if b.Start%BlockSize != 0 || int64(len(b.Data)) != b.Length {
		return nil, fmt.Errorf("data block [%d,+%d) with %d bytes is not on the %d-byte block grid", b.Start, b.Length, len(b.Data), BlockSize)
	}
	var recs []Record
	for off := int64(0); off < b.Length; off += BlockSize {
		block := b.Data[off:min(off+BlockSize, b.Length)]
		if format.IsZero(block) {
			continue
		}
		num := (b.Start + off) / BlockSize
		if num > 1<<32-1 {
			return nil, fmt.Errorf("block %d past the last block number", num)
		}
		var pad *[]byte
		if len(block) < BlockSize {
			pad = blockPool.Get().(*[]byte)
			n := copy(*pad, block)
			clear((*pad)[n:])
			block = *pad
		}
		buf := recordPool.Get().(*[]byte)
		out, err := compress((*buf)[:RecordHeaderLen], block)
		if pad != nil {
			blockPool.Put(pad)
		}
		r := Record{Block: uint32(num), Buf: out, pool: buf}
		if err != nil || len(out) > RecordHeaderLen+MaxPayload {
			r.Free()
			if err == nil {
				err = fmt.Errorf("block %d compressed to %d bytes, over the %d-byte payload limit", num, len(out)-RecordHeaderLen, MaxPayload)
			}
			for _, r := range recs {
				r.Free()
			}
			return nil, err
		}
		if &out[0] != &(*buf)[0] {
			r.pool = nil // the codec outgrew the buffer; let it go
			recordPool.Put(buf)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// FinishRecord completes rec, which holds RecordHeaderLen bytes of room
// and then the payload: it writes the header, zero filler and the end
// marker, extending rec to the record length, and returns it.
func FinishRecord(rec []byte, block uint32) []byte {
	p := int64(len(rec) - RecordHeaderLen)
	l := int(RecordLen(p))
	if cap(rec) < l {
		rec = append(rec, make([]byte, l-len(rec))...)
	}
	rec = rec[:l]
	clear(rec[RecordHeaderLen+p : l-RecordEndLen])
	copy(rec[l-RecordEndLen:], RecordEnd)
	EncodeRecordHeader(rec, RecordHeader{PayloadLen: uint32(p), Block: block})
	return rec
}

// Blocks is the set of an image's stored blocks, each in one record, with
// a cache of the last block decoded. Records are numbered in the order
// Add is called, which is ascending block order.
type Blocks struct {
	runs []blockRun

	mu     sync.Mutex
	cached int    // the record whose block cache holds, if cache is not nil
	cache  []byte // nil until the first decode; invalid while cached is -1
}

// blockRun is a run of consecutive stored blocks [start, end), the first
// of them in record first.
type blockRun struct {
	start, end int64
	first      int
}

// Add adds block b, which must follow every block added before, as the
// next record.
func (s *Blocks) Add(b int64) {
	r := len(s.runs) - 1
	if r >= 0 && s.runs[r].end == b {
		s.runs[r].end = b + 1
		return
	}
	first := 0
	if r >= 0 {
		first = s.runs[r].first + int(s.runs[r].end-s.runs[r].start)
	}
	s.runs = append(s.runs, blockRun{b, b + 1, first})
}

// run returns the index of the first run that ends after block b.
func (s *Blocks) run(b int64) int {
	return sort.Search(len(s.runs), func(i int) bool { return s.runs[i].end > b })
}

// Extent reports the run at off of a disk of size bytes: stored blocks as
// compressed Data, absent ones as Zero (the formats drop every zero block,
// so nothing is unallocated).
func (s *Blocks) Extent(name string, off, size int64) (format.Extent, error) {
	if off < 0 || off >= size {
		return format.Extent{}, fmt.Errorf("%s: extent offset %d out of range", name, off)
	}
	b := off / BlockSize
	i := s.run(b)
	e := format.Extent{Start: off, Status: format.Zero, Offset: -1}
	end := size
	if i < len(s.runs) {
		r := s.runs[i]
		if r.start <= b {
			e.Status, e.Compressed = format.Data, true
			end = min(end, r.end*BlockSize)
		} else {
			end = min(end, r.start*BlockSize)
		}
	}
	e.Length = end - off
	return e, nil
}

// ReadAt fills p with guest bytes from off of a disk of size bytes, block
// by block: decode fills block with the decoded block of record k; blocks
// not stored read as zeros.
func (s *Blocks) ReadAt(p []byte, off, size int64, decode func(k int, block []byte) error) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, clipErr := format.ClipRead(p, off, size)
	for done := 0; done < n; {
		pos := off + int64(done)
		in := pos % BlockSize
		dst := p[done : done+int(min(int64(n-done), BlockSize-in))]
		b := pos / BlockSize
		if i := s.run(b); i == len(s.runs) || s.runs[i].start > b {
			clear(dst)
		} else if err := s.load(s.runs[i].first+int(b-s.runs[i].start), decode); err != nil {
			return done, err
		} else {
			copy(dst, s.cache[in:])
		}
		done += len(dst)
	}
	return n, clipErr
}

// load makes the cache hold the block of record k.
func (s *Blocks) load(k int, decode func(k int, block []byte) error) error {
	if s.cache != nil && s.cached == k {
		return nil
	}
	if s.cache == nil {
		s.cache = make([]byte, BlockSize)
	}
	s.cached = -1
	if err := decode(k, s.cache); err != nil {
		return err
	}
	s.cached = k
	return nil
}

// Reader is the Extent and ReadAt of a ZVHD or ZVHD2 image over its
// stored blocks; a driver's Image embeds it. A block before the last one
// decoded costs what decode makes it cost: a ZVHD decodes forward from
// its first record.
type Reader struct {
	name   string
	size   int64
	blocks *Blocks
	decode func(k int, block []byte) error
}

// NewReader returns the Reader of a disk of size bytes whose stored blocks
// are blocks; decode fills block with the block of record k.
func NewReader(name string, size int64, blocks *Blocks, decode func(k int, block []byte) error) Reader {
	return Reader{name: name, size: size, blocks: blocks, decode: decode}
}

// Extent reports a run of stored blocks as compressed Data and a run of
// absent blocks as Zero.
func (r Reader) Extent(off int64) (format.Extent, error) {
	return r.blocks.Extent(r.name, off, r.size)
}

// ReadAt reads guest bytes, decoding each stored block it touches.
func (r Reader) ReadAt(p []byte, off int64) (int, error) {
	return r.blocks.ReadAt(p, off, r.size, r.decode)
}

// Info describes an image of format name and size bytes, with its
// "format-specific" part.
func Info(name string, size int64, specific any) *format.Info {
	return &format.Info{Format: name, VirtualSize: size, ClusterSize: BlockSize, Specific: specific}
}

// Identity is the end of both formats' "format-specific" part of `info`:
// who made the image, and when.
type Identity struct {
	UUID           string `json:"uuid"`
	CreatorVersion string `json:"creator-version"`
	Timestamp      string `json:"timestamp"` // RFC 3339
}

// Identity returns the descriptor's identity as `info` shows it.
func (d *Descriptor) Identity() Identity {
	return Identity{
		UUID:           FormatUUID(d.UUID),
		CreatorVersion: fmt.Sprintf("%d.%d", d.CreatorVersion>>16, d.CreatorVersion&0xffff),
		Timestamp:      Epoch.Add(time.Duration(d.Timestamp) * time.Second).Format(time.RFC3339),
	}
}
