package zvhd2

import (
	"encoding/binary"
	"fmt"
)

// On-disk layout shared by ZVHD2 and the older ZVHD (Huawei Cloud IMS);
// see docs/ZVHD2.md. All integers are little-endian: the
// drivers write their C structs to disk as they are, unlike Microsoft VHD
// whose field list they borrow.

// Descriptor slot and its fields.
const (
	SlotSize       = 4096 // each descriptor sits at the start of a 4 KiB slot
	DescriptorSize = 512  // bytes of the slot that are the descriptor

	CookieZVHD2 = "z2strm" // ZVHD2 cookie (8-byte field, NUL padded)
	CookieZVHD  = "stream" // old ZVHD cookie
	CookieLen   = 6        // probes compare only this many bytes

	offCookie         = 0   // [8]byte
	offFeatures       = 8   // u32
	offFormatVersion  = 12  // u32
	offDataOffset     = 16  // u64, unused (all ones)
	offTimestamp      = 24  // u32, seconds since 2000-01-01 UTC
	offCreatorApp     = 28  // [4]byte
	offCreatorVersion = 32  // u32
	offCreatorOS      = 36  // u32
	offOrigSize       = 40  // u64, input size rounded up to 512
	offCurrSize       = 48  // u64, orig_size rounded up to 1 GiB
	offGeometry       = 56  // u32, VHD CHS packed as C<<16|H<<8|S
	offDiskType       = 60  // u32
	offChecksum       = 64  // u32, one's complement of the byte sum
	offUUID           = 68  // [16]byte
	offSaved          = 84  // u8
	offHidden         = 85  // u8
	offAlign64        = 86  // u8
	offVersion        = 87  // u8, zvhd2_version; ZVHD: reserved
	offBlockSize      = 88  // u32; fields from here on are ZVHD2 only
	offMaxBlkNum      = 92  // u32
	offIndexLBA       = 96  // u64, a byte offset despite the name
	offBitmapLBA      = 104 // u64, a byte offset despite the name
	offIndexSize      = 112 // u32
	offBitmapSize     = 116 // u32
	offIndexSegSize   = 120 // u32
	offBitmapSegSize  = 124 // u32
	offIndexSegNum    = 128 // u32
	offBitmapSegNum   = 132 // u32
	offNonZeroBlkNum  = 136 // u32
	offIndexDense     = 140 // u8, index_contains_zero_blk
	offCompressMethod = 141 // u8
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
	SectorSize    = 512                      // orig_size is rounded up to this

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

	offRecPayloadLen = 12 // u32
	offRecBlock      = 16 // u32

	// MaxPayload is the C reader's buffer limit for one payload (ZVHD2:
	// 2×block + block/1000 + 128, rounded up to 4 KiB).
	MaxPayload = 4198400
	// MaxRecordLen is the longest record a payload within MaxPayload makes.
	MaxRecordLen = (RecordHeaderLen + MaxPayload + RecordEndLen + RecordAlign - 1) / RecordAlign * RecordAlign
)

// Descriptor is the 512-byte descriptor ("footer") of both formats.
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
	b = b[:DescriptorSize]
	d := &Descriptor{
		Features:       le.Uint32(b[offFeatures:]),
		FormatVersion:  le.Uint32(b[offFormatVersion:]),
		DataOffset:     le.Uint64(b[offDataOffset:]),
		Timestamp:      le.Uint32(b[offTimestamp:]),
		CreatorVersion: le.Uint32(b[offCreatorVersion:]),
		CreatorOS:      le.Uint32(b[offCreatorOS:]),
		OrigSize:       le.Uint64(b[offOrigSize:]),
		CurrSize:       le.Uint64(b[offCurrSize:]),
		Geometry:       le.Uint32(b[offGeometry:]),
		DiskType:       le.Uint32(b[offDiskType:]),
		Checksum:       le.Uint32(b[offChecksum:]),
		Saved:          b[offSaved],
		Hidden:         b[offHidden],
		Align64:        b[offAlign64],
		Version:        b[offVersion],
		BlockSize:      le.Uint32(b[offBlockSize:]),
		MaxBlkNum:      le.Uint32(b[offMaxBlkNum:]),
		IndexLBA:       le.Uint64(b[offIndexLBA:]),
		BitmapLBA:      le.Uint64(b[offBitmapLBA:]),
		IndexSize:      le.Uint32(b[offIndexSize:]),
		BitmapSize:     le.Uint32(b[offBitmapSize:]),
		IndexSegSize:   le.Uint32(b[offIndexSegSize:]),
		BitmapSegSize:  le.Uint32(b[offBitmapSegSize:]),
		IndexSegNum:    le.Uint32(b[offIndexSegNum:]),
		BitmapSegNum:   le.Uint32(b[offBitmapSegNum:]),
		NonZeroBlkNum:  le.Uint32(b[offNonZeroBlkNum:]),
		IndexDense:     b[offIndexDense],
		CompressMethod: b[offCompressMethod],
	}
	copy(d.Cookie[:], b[offCookie:])
	copy(d.CreatorApp[:], b[offCreatorApp:])
	copy(d.UUID[:], b[offUUID:])
	return d
}

// Encode writes d into the first DescriptorSize bytes of b, reserved bytes
// zero. It stores d.Checksum as it is; call SetChecksum afterwards.
func (d *Descriptor) Encode(b []byte) {
	b = b[:DescriptorSize]
	clear(b)
	copy(b[offCookie:offCookie+8], d.Cookie[:])
	le.PutUint32(b[offFeatures:], d.Features)
	le.PutUint32(b[offFormatVersion:], d.FormatVersion)
	le.PutUint64(b[offDataOffset:], d.DataOffset)
	le.PutUint32(b[offTimestamp:], d.Timestamp)
	copy(b[offCreatorApp:offCreatorApp+4], d.CreatorApp[:])
	le.PutUint32(b[offCreatorVersion:], d.CreatorVersion)
	le.PutUint32(b[offCreatorOS:], d.CreatorOS)
	le.PutUint64(b[offOrigSize:], d.OrigSize)
	le.PutUint64(b[offCurrSize:], d.CurrSize)
	le.PutUint32(b[offGeometry:], d.Geometry)
	le.PutUint32(b[offDiskType:], d.DiskType)
	le.PutUint32(b[offChecksum:], d.Checksum)
	copy(b[offUUID:offUUID+16], d.UUID[:])
	b[offSaved] = d.Saved
	b[offHidden] = d.Hidden
	b[offAlign64] = d.Align64
	b[offVersion] = d.Version
	le.PutUint32(b[offBlockSize:], d.BlockSize)
	le.PutUint32(b[offMaxBlkNum:], d.MaxBlkNum)
	le.PutUint64(b[offIndexLBA:], d.IndexLBA)
	le.PutUint64(b[offBitmapLBA:], d.BitmapLBA)
	le.PutUint32(b[offIndexSize:], d.IndexSize)
	le.PutUint32(b[offBitmapSize:], d.BitmapSize)
	le.PutUint32(b[offIndexSegSize:], d.IndexSegSize)
	le.PutUint32(b[offBitmapSegSize:], d.BitmapSegSize)
	le.PutUint32(b[offIndexSegNum:], d.IndexSegNum)
	le.PutUint32(b[offBitmapSegNum:], d.BitmapSegNum)
	le.PutUint32(b[offNonZeroBlkNum:], d.NonZeroBlkNum)
	b[offIndexDense] = d.IndexDense
	b[offCompressMethod] = d.CompressMethod
}

// Checksum returns the descriptor checksum of the DescriptorSize bytes at
// the start of b: the bitwise NOT of their byte sum, the checksum field
// itself counted as zero.
func Checksum(b []byte) uint32 {
	var sum uint32
	for i, c := range b[:DescriptorSize] {
		if i >= offChecksum && i < offChecksum+4 {
			continue
		}
		sum += uint32(c)
	}
	return ^sum
}

// SetChecksum stores the checksum of the encoded descriptor b in it.
func SetChecksum(b []byte) { le.PutUint32(b[offChecksum:], Checksum(b)) }

// StoredChecksum returns the checksum field of the encoded descriptor b.
func StoredChecksum(b []byte) uint32 { return le.Uint32(b[offChecksum:]) }

// Geometry returns the VHD CHS geometry of a disk of size bytes, packed as
// the descriptor stores it. The sector count is cut to 32 bits first, as
// the drivers do.
func Geometry(size uint64) uint32 {
	sectors := uint64(uint32(size / SectorSize))
	var spt, heads, cylTimesHeads uint64
	if sectors > 65535*16*255 {
		sectors = 65535 * 16 * 255
	}
	if sectors >= 65535*16*63 {
		spt, heads = 255, 16
		cylTimesHeads = sectors / spt
	} else {
		spt = 17
		cylTimesHeads = sectors / spt
		heads = (cylTimesHeads + 1023) / 1024
		if heads < 4 {
			heads = 4
		}
		if cylTimesHeads >= heads*1024 || heads > 16 {
			spt, heads = 31, 16
			cylTimesHeads = sectors / spt
		}
		if cylTimesHeads >= heads*1024 {
			spt, heads = 63, 16
			cylTimesHeads = sectors / spt
		}
	}
	cyl := cylTimesHeads / heads
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
	le.PutUint32(b[offRecPayloadLen:], h.PayloadLen)
	le.PutUint32(b[offRecBlock:], h.Block)
}

// DecodeRecordHeader decodes a record header from b (RecordHeaderLen
// bytes), reporting whether it starts with RecordMagic.
func DecodeRecordHeader(b []byte) (h RecordHeader, ok bool) {
	b = b[:RecordHeaderLen]
	h.PayloadLen = le.Uint32(b[offRecPayloadLen:])
	h.Block = le.Uint32(b[offRecBlock:])
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
