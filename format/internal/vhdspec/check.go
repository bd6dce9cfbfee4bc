package vhdspec

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/diskimg/diskimg/format"
)

// DescriptorFields names the descriptor's fields (§1.2), for messages.
var DescriptorFields = []struct {
	Name     string
	Off, Len int
}{
	{"cookie", OffCookie, 8}, {"features", OffFeatures, 4}, {"format version", OffFormatVersion, 4},
	{"data offset", OffDataOffset, 8}, {"timestamp", OffTimestamp, 4}, {"creator application", OffCreatorApp, 4},
	{"creator version", OffCreatorVersion, 4}, {"creator OS", OffCreatorOS, 4}, {"orig_size", OffOriginalSize, 8},
	{"curr_size", OffCurrentSize, 8}, {"geometry", OffGeometry, 4}, {"disk type", OffDiskType, 4},
	{"checksum", OffChecksum, 4}, {"uuid", OffUniqueID, 16}, {"saved", OffSavedState, 1}, {"hidden", OffHidden, 1},
	{"align_64", OffAlign64, 1}, {"zvhd2_version", OffVersion, 1}, {"block_size", OffBlockSize, 4},
	{"max_blk_num", OffMaxBlkNum, 4}, {"index_lba", OffIndexLBA, 8}, {"bitmap_lba", OffBitmapLBA, 8},
	{"index_size", OffIndexSize, 4}, {"bitmap_size", OffBitmapSize, 4}, {"index_seg_size", OffIndexSegSize, 4},
	{"bitmap_seg_size", OffBitmapSegSize, 4}, {"index_seg_num", OffIndexSegNum, 4}, {"bitmap_seg_num", OffBitmapSegNum, 4},
	{"non_zero_blk_num", OffNonZeroBlkNum, 4}, {"index_contains_zero_blk", OffIndexDense, 1},
	{"compress_method", OffCompressMethod, 1}, {"reserved", OffCompressMethod + 1, DescriptorSize - OffCompressMethod - 1},
}

// DiffFields returns the names of the descriptor fields in which a and b
// (DescriptorSize bytes each) differ.
func DiffFields(a, b []byte) []string {
	var names []string
	for _, f := range DescriptorFields {
		if !bytes.Equal(a[f.Off:f.Off+f.Len], b[f.Off:f.Off+f.Len]) {
			names = append(names, f.Name)
		}
	}
	return names
}

// Check collects the findings of the structural check of F, a file of
// either Huawei format. qemu-img has no driver for them: this is
// diskimg's own check, with qemu-img check's keys and exit codes. Findings
// are graded by who would trip over them: a corruption is something a
// reader (diskimg's or Huawei's driver) refuses or misreads; a leak is
// file space nothing refers to; a warning is a byte no reader looks at
// that every known writer writes as docs/ZVHD2.md says (zeros in a slot's
// padding, a record header's unused fields), so that --verify, which
// fails on warnings, still catches a flip there. Bytes the C writer itself
// leaves unspecified (a record's filler, §1.4) are not looked at.
type Check struct {
	R    *format.CheckResult
	F    format.File
	Name string
	buf  []byte
}

// NewCheck starts a check of f, which holds a disk of the given number of
// 2 MiB blocks (qemu-img's clusters); the whole file is the image.
func NewCheck(name string, f format.File, blocks int64) *Check {
	r := &format.CheckResult{Format: name, Filename: f.Name(), ImageEndOffset: f.Size(), TotalClusters: blocks}
	return &Check{R: r, F: f, Name: name}
}

// Corrupt records a corruption, keeping at most format.MaxProblems lines.
func (c *Check) Corrupt(msg string, args ...any) { c.R.BoundedCorruptf(msg, args...) }

// Problem is err's text without the format's name, as a problem line.
func (c *Check) Problem(err error) string { return strings.TrimPrefix(err.Error(), c.Name+": ") }

// Leak records n leaked 4096-byte units described by one line.
func (c *Check) Leak(n int64, msg string, args ...any) {
	c.R.BoundedLeakf(msg, args...)
	c.R.Leaks += max(n, 1) - 1
}

// Warn records a warning.
func (c *Check) Warn(msg string, args ...any) { c.R.Warnf(format.MaxProblems, msg, args...) }

// Read reads n bytes at off into a buffer the next Read reuses.
func (c *Check) Read(off, n int64, what string) ([]byte, error) {
	if int64(cap(c.buf)) < n {
		c.buf = make([]byte, n)
	}
	b := c.buf[:n]
	return b, format.ReadFull(c.F, b, off, c.Name, what)
}

// Slot reads the 4096-byte descriptor slot at off and warns when the bytes
// after its descriptor, zeros in every known file (§1.2), are not.
func (c *Check) Slot(off int64, what string) ([]byte, error) {
	b := make([]byte, SlotSize)
	if err := format.ReadFull(c.F, b, off, c.Name, what); err != nil {
		return nil, err
	}
	if i := firstNonZero(b[DescriptorSize:]); i >= 0 {
		c.Warn("%s at offset %d: padding byte at offset %d is not zero", what, off, off+DescriptorSize+int64(i))
	}
	return b, nil
}

// Reserved warns when the reserved bytes of the descriptor d at off (from
// byte from on, up to DescriptorSize) are not zero.
func (c *Check) Reserved(d []byte, from int, off int64, what string) {
	if i := firstNonZero(d[from:DescriptorSize]); i >= 0 {
		c.Warn("%s at offset %d: reserved byte at offset %d is not zero", what, off, off+int64(from+i))
	}
}

// firstNonZero returns the index of the first byte of b that is not zero,
// or -1.
func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

// Codec says how a record's payload is compressed.
type Codec int

const (
	CodecZstd      Codec = iota // one zstd frame of the block (ZVHD2, §2.3)
	CodecZlib                   // one sync-flushed zlib stream of the block (ZVHD2, §2.3)
	CodecZlibFirst              // the start of a ZVHD file's zlib stream (§3.2)
	CodecZlibNext               // a later piece of that stream
)

// Record checks the record rec read at file offset off (§1.4): prefix,
// payload length filling the record exactly, end marker, unused header
// fields, and the payload's codec framing. It returns the record header
// and whether the record could be parsed.
func (c *Check) Record(rec []byte, off int64, codec Codec) (RecordHeader, bool) {
	if len(rec) < RecordHeaderLen+RecordEndLen {
		c.Corrupt("record at offset %d: %d bytes are too short for a record", off, len(rec))
		return RecordHeader{}, false
	}
	h, ok := DecodeRecordHeader(rec)
	switch p := int64(h.PayloadLen); {
	case !ok:
		c.Corrupt("record at offset %d: prefix %q, want %q", off, rec[:len(RecordMagic)], RecordMagic)
		return h, false
	case p == 0 || RecordLen(p) != int64(len(rec)):
		c.Corrupt("record at offset %d: payload length %d does not make a %d-byte record", off, p, len(rec))
		return h, false
	}
	if end := rec[len(rec)-RecordEndLen:]; string(end) != RecordEnd {
		c.Corrupt("record at offset %d: end marker %q at offset %d, want %q", off, end, off+int64(len(rec)-RecordEndLen), RecordEnd)
	}
	if i := firstNonZero(rec[len(RecordMagic)+8 : RecordHeaderLen]); i >= 0 {
		c.Warn("record at offset %d: unused header byte at offset %d is not zero", off, off+int64(len(RecordMagic)+8+i))
	}
	payload := rec[RecordHeaderLen : RecordHeaderLen+int(h.PayloadLen)]
	var problem string
	switch codec {
	case CodecZstd:
		var warn string
		problem, warn = zstdFrame(payload)
		if warn != "" {
			c.Warn("record at offset %d: zstd frame %s", off, warn)
		}
	case CodecZlib, CodecZlibFirst:
		if !zlibHeader(payload) {
			problem = fmt.Sprintf("payload starts % x, not a zlib header", payload[:min(2, len(payload))])
			break
		}
		fallthrough
	case CodecZlibNext:
		if !bytes.HasSuffix(payload, []byte(syncFlush)) {
			problem = fmt.Sprintf("payload ends % x, not a zlib sync flush (% x)", payload[max(0, len(payload)-4):], syncFlush)
		}
	}
	if problem != "" {
		c.Corrupt("record at offset %d (block %d): %s", off, h.Block, problem)
	}
	return h, true
}

// syncFlush ends every zlib payload: the empty stored block a sync flush
// writes (§2.3, §3.2).
const syncFlush = "\x00\x00\xff\xff"

// zlibHeader reports whether p starts with a valid RFC 1950 header:
// deflate, a window up to 32 KiB, the check bits right, no dictionary.
func zlibHeader(p []byte) bool {
	return len(p) >= 2 && p[0]&0x0f == 8 && p[0]>>4 <= 7 && (uint16(p[0])<<8|uint16(p[1]))%31 == 0 && p[1]&0x20 == 0
}

// zstdFrame walks the zstd frame (RFC 8878) that must fill p exactly and
// decode to one block: the frame header, every block header with its
// length, the optional checksum. It does not decompress. It returns what is
// wrong, if anything, and what is merely unusual.
func zstdFrame(p []byte) (problem, warn string) {
	const magic = 0xFD2FB528
	if len(p) < 6 || binary.LittleEndian.Uint32(p) != magic {
		return fmt.Sprintf("payload of %d bytes does not start with the zstd magic number", len(p)), ""
	}
	fhd := p[4]
	single, checksum := fhd&0x20 != 0, fhd&0x04 != 0
	switch {
	case fhd&0x08 != 0:
		return "header sets the reserved bit", ""
	case fhd&0x03 != 0:
		return "header names a dictionary", ""
	case fhd&0x10 != 0:
		warn = "header sets the unused bit"
	}
	pos := 5
	window := int64(-1)
	if !single {
		wd := p[pos]
		base := int64(1) << (10 + wd>>3)
		window = base + base/8*int64(wd&7)
		pos++
	}
	fcsLen := [4]int{0, 2, 4, 8}[fhd>>6]
	if fhd>>6 == 0 && single {
		fcsLen = 1
	}
	if pos+fcsLen > len(p) {
		return "header is cut short", warn
	}
	if fcsLen > 0 {
		var b [8]byte
		copy(b[:], p[pos:pos+fcsLen])
		fcs := int64(binary.LittleEndian.Uint64(b[:]))
		if fcsLen == 2 {
			fcs += 256
		}
		if fcs != BlockSize {
			return fmt.Sprintf("content size %d, want %d", fcs, BlockSize), warn
		}
		if single {
			window = fcs
		}
		pos += fcsLen
	}
	blockMax := min(window, 128<<10)
	var regenerated int64 // by raw and RLE blocks, whose size says it
	for {
		if pos+3 > len(p) {
			return fmt.Sprintf("block header at payload byte %d is cut short", pos), warn
		}
		h := uint32(p[pos]) | uint32(p[pos+1])<<8 | uint32(p[pos+2])<<16
		last, typ, size := h&1 != 0, h>>1&3, int64(h>>3)
		if size > blockMax {
			return fmt.Sprintf("block at payload byte %d is %d bytes, over the %d-byte maximum", pos, size, blockMax), warn
		}
		var n int64
		switch typ {
		case 0: // raw
			n, regenerated = size, regenerated+size
		case 1: // RLE
			n, regenerated = 1, regenerated+size
		case 2: // compressed
			n = size
		default:
			return fmt.Sprintf("block at payload byte %d has the reserved type", pos), warn
		}
		if int64(pos)+3+n > int64(len(p)) {
			return fmt.Sprintf("block at payload byte %d runs past the %d-byte payload", pos, len(p)), warn
		}
		pos += 3 + int(n)
		if last {
			break
		}
	}
	if regenerated > BlockSize {
		return fmt.Sprintf("blocks regenerate more than %d bytes", BlockSize), warn
	}
	if checksum {
		pos += 4
	}
	if pos != len(p) {
		return fmt.Sprintf("frame ends at payload byte %d, the payload at %d", pos, len(p)), warn
	}
	return "", warn
}
