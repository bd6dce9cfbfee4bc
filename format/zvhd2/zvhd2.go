// Package zvhd2 reads ZVHD2 images, the compressed, indexed format of
// Huawei Cloud IMS fast import and export.
//
// A ZVHD2 file is a header descriptor, one compressed record per non-zero
// 2 MiB block (zstd or zlib, each record decodable alone), then a
// mid-footer, an index of the records, a bitmap of the stored blocks and a
// trailer descriptor that holds the final values of every field. The
// reader trusts none of them: the trailer's fields are checked against the
// file size and each other, the index against the bitmap, and each record
// against its index entry when it is decoded.
//
// Blocks that are not stored read as zeros and are reported as Zero
// extents: the format has no "unallocated" state distinct from "all zero"
// (a writer drops every all-zero block), and qemu-img has no driver for it
// to compare with. Stored blocks are Data, Compressed, with no host offset.
//
// The format is described in docs/ZVHD2.md, whose section numbers the
// comments cite.
package zvhd2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// Name is the format's name; qemu has none (only Huawei's qemu-img-hw).
const Name = "zvhd2"

// Priority orders probing: the cookie is distinctive, any slot will do.
const Priority = 50

func init() { vhdspec.Register(Name, Priority, vhdspec.CookieZVHD2, Open, CheckFile) }

// Image is an open ZVHD2 image.
type Image struct {
	format.Base // Meta holds the size; Info is built on demand
	vhdspec.Reader
	d       *vhdspec.Descriptor // the trailer: the descriptor in force
	entries []vhdspec.IndexEntry
	blocks  vhdspec.Blocks // the stored blocks; its lock guards decoding

	zstd       *zstd.Decoder
	rec        []byte // the last record read
	trailerOff int64
}

// Specific is the "format-specific" part of `info`.
type Specific struct {
	// CurrentSize is curr_size, orig_size rounded up to 1 GiB: what
	// Huawei's qemu-img-hw reports and converts out.
	CurrentSize  int64  `json:"current-size"`
	BlockSize    int64  `json:"block-size"`
	Compression  string `json:"compression"`
	Version      int    `json:"zvhd2-version"`
	DenseIndex   bool   `json:"dense-index"`
	StoredBlocks int64  `json:"stored-blocks"`
	vhdspec.Identity
}

// Open opens f as a ZVHD2 image.
func Open(f format.File) (*Image, error) {
	d, trailerOff, err := readDescriptors(f)
	if err != nil {
		return nil, err
	}
	img := &Image{Base: format.Base{File: f, Meta: format.Info{VirtualSize: int64(d.OrigSize)}}, d: d, trailerOff: trailerOff}
	if err := img.readMaps(); err != nil {
		return nil, err
	}
	img.Reader = vhdspec.NewReader(Name, img.Size(), &img.blocks, img.decode)
	if d.CompressMethod == vhdspec.MethodZstd {
		dec, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(vhdspec.BlockSize),
			zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			return nil, err
		}
		img.zstd = dec
	}
	return img, nil
}

// readDescriptors reads the header and the trailer of f and returns the
// trailer, the descriptor in force, once validated, and its offset.
func readDescriptors(f format.File) (*vhdspec.Descriptor, int64, error) {
	fileSize := f.Size()
	if !vhdspec.HasCookie(f, vhdspec.CookieZVHD2) {
		return nil, 0, fmt.Errorf("%s: no %q cookie: %w", Name, vhdspec.CookieZVHD2, format.ErrWrongType)
	}
	hb := make([]byte, vhdspec.DescriptorSize)
	if err := format.ReadFull(f, hb, 0, Name, "header descriptor"); err != nil {
		return nil, 0, err
	}
	h := vhdspec.DecodeDescriptor(hb)
	if h.Version != vhdspec.VersionIndexed {
		// Version 0 is a compile-time legacy variant with no usable index,
		// which the published driver can neither write nor read.
		return nil, 0, format.Errorf(Name, "zvhd2_version", vhdspec.OffVersion, "version %d is not supported (want %d)", h.Version, vhdspec.VersionIndexed)
	}
	if fileSize%vhdspec.SlotSize != 0 || fileSize < 3*vhdspec.SlotSize {
		return nil, 0, format.Errorf(Name, "file size", -1, "%d bytes is not a whole number of 4096-byte slots holding header, mid-footer and trailer", fileSize)
	}
	// The header is written before the data and never updated: the
	// trailer, the last slot, holds the final descriptor.
	trailerOff := fileSize - vhdspec.SlotSize
	tb := make([]byte, vhdspec.DescriptorSize)
	if err := format.ReadFull(f, tb, trailerOff, Name, "trailer descriptor"); err != nil {
		return nil, 0, err
	}
	if string(tb[:vhdspec.CookieLen]) != vhdspec.CookieZVHD2 {
		return nil, 0, format.Errorf(Name, "trailer cookie", trailerOff, "%q, want %q", tb[:vhdspec.CookieLen], vhdspec.CookieZVHD2)
	}
	if got, want := vhdspec.StoredChecksum(tb), vhdspec.DescriptorChecksum(tb); got != want {
		return nil, 0, format.Errorf(Name, "trailer checksum", trailerOff+vhdspec.OffChecksum, "%#08x, computed %#08x", got, want)
	}
	d := vhdspec.DecodeDescriptor(tb)
	if err := validate(d, h, trailerOff, fileSize); err != nil {
		return nil, 0, err
	}
	return d, trailerOff, nil
}

// validate checks the trailer d (at file offset off) field by field
// against the header h, the file size and each other.
func validate(d, h *vhdspec.Descriptor, off, fileSize int64) error {
	bad := func(field string, fieldOff int64, reason string, args ...any) error {
		return format.Errorf(Name, field, off+fieldOff, reason, args...)
	}
	if err := vhdspec.CheckSizes(Name, d, off); err != nil {
		return err
	}
	switch {
	case d.Version != vhdspec.VersionIndexed:
		return bad("zvhd2_version", vhdspec.OffVersion, "version %d is not supported (want %d)", d.Version, vhdspec.VersionIndexed)
	case d.BlockSize != vhdspec.BlockSize:
		// The drivers compute block numbers with a fixed 2 MiB whatever
		// the field says, so another value cannot be read as written.
		return bad("block_size", vhdspec.OffBlockSize, "%d is not supported (want %d)", d.BlockSize, vhdspec.BlockSize)
	case uint64(d.MaxBlkNum) != vhdspec.CeilDiv(d.OrigSize, vhdspec.BlockSize):
		return bad("max_blk_num", vhdspec.OffMaxBlkNum, "%d blocks, but orig_size %d needs %d", d.MaxBlkNum, d.OrigSize, vhdspec.CeilDiv(d.OrigSize, vhdspec.BlockSize))
	case d.CompressMethod != vhdspec.MethodZlib && d.CompressMethod != vhdspec.MethodZstd:
		return bad("compress_method", vhdspec.OffCompressMethod, "unknown method %d", d.CompressMethod)
	case d.IndexDense > 1:
		return bad("index_contains_zero_blk", vhdspec.OffIndexDense, "%d is neither 0 nor 1", d.IndexDense)
	case d.IndexSegSize != vhdspec.IndexSegSize:
		return bad("index_seg_size", vhdspec.OffIndexSegSize, "%d, want %d", d.IndexSegSize, vhdspec.IndexSegSize)
	case d.BitmapSegSize != vhdspec.BitmapSegSize:
		return bad("bitmap_seg_size", vhdspec.OffBitmapSegSize, "%d, want %d", d.BitmapSegSize, vhdspec.BitmapSegSize)
	case d.NonZeroBlkNum > d.MaxBlkNum:
		return bad("non_zero_blk_num", vhdspec.OffNonZeroBlkNum, "%d stored blocks in a disk of %d", d.NonZeroBlkNum, d.MaxBlkNum)
	case uint64(d.BitmapSegNum) != vhdspec.CeilDiv(uint64(d.MaxBlkNum), vhdspec.BitmapBlocks):
		return bad("bitmap_seg_num", vhdspec.OffBitmapSegNum, "%d segments for %d blocks", d.BitmapSegNum, d.MaxBlkNum)
	case uint64(d.BitmapSize) != uint64(d.BitmapSegNum)*vhdspec.BitmapSegSize:
		return bad("bitmap_size", vhdspec.OffBitmapSize, "%d is not bitmap_seg_num %d × %d", d.BitmapSize, d.BitmapSegNum, vhdspec.BitmapSegSize)
	}
	entries := uint64(d.NonZeroBlkNum)
	if d.IndexDense == 1 {
		entries = uint64(d.MaxBlkNum)
	}
	switch {
	case uint64(d.IndexSegNum) != vhdspec.CeilDiv(entries, vhdspec.SegBlocks):
		return bad("index_seg_num", vhdspec.OffIndexSegNum, "%d segments for %d index entries", d.IndexSegNum, entries)
	case uint64(d.IndexSize) != uint64(d.IndexSegNum)*vhdspec.IndexSegSize:
		return bad("index_size", vhdspec.OffIndexSize, "%d is not index_seg_num %d × %d", d.IndexSize, d.IndexSegNum, vhdspec.IndexSegSize)
	case d.IndexLBA%vhdspec.SlotSize != 0 || d.IndexLBA < 2*vhdspec.SlotSize || d.IndexLBA > uint64(fileSize):
		return bad("index_lba", vhdspec.OffIndexLBA, "%d is not a 4096-byte aligned offset after the header and mid-footer, inside the file", d.IndexLBA)
	case d.BitmapLBA != d.IndexLBA+uint64(d.IndexSize):
		return bad("bitmap_lba", vhdspec.OffBitmapLBA, "%d does not follow the index (index_lba %d + index_size %d)", d.BitmapLBA, d.IndexLBA, d.IndexSize)
	case d.BitmapLBA+uint64(d.BitmapSize) != uint64(off):
		return bad("bitmap_size", vhdspec.OffBitmapSize, "bitmap [%d,+%d) does not end at the trailer (offset %d)", d.BitmapLBA, d.BitmapSize, off)
	}
	// Fields known before the data was written must not change.
	switch {
	case h.OrigSize != d.OrigSize:
		return format.Errorf(Name, "orig_size", vhdspec.OffOriginalSize, "header says %d, trailer %d", h.OrigSize, d.OrigSize)
	case h.CompressMethod != d.CompressMethod:
		return format.Errorf(Name, "compress_method", vhdspec.OffCompressMethod, "header says %d, trailer %d", h.CompressMethod, d.CompressMethod)
	}
	return nil
}

// readMaps loads the bitmap and index, checks them against each other and
// builds the list of stored blocks.
func (img *Image) readMaps() error {
	d, f := img.d, img.File
	bitmap, err := readBitmap(f, d)
	if err != nil {
		return err
	}
	if err := checkBitmap(d, bitmap, img.trailerOff); err != nil {
		return err
	}
	n := indexEntries(d)
	indexOff := int64(d.IndexLBA)
	if err := format.CheckTable(Name, "index", indexOff, n*vhdspec.EntrySize, f.Size()); err != nil {
		return err
	}
	raw := make([]byte, n*vhdspec.EntrySize)
	if err := format.ReadFull(f, raw, indexOff, Name, "index"); err != nil {
		return err
	}
	// Records live between the header slot and the mid-footer slot.
	rules := newEntryRules(d, bitmap)
	var mid [vhdspec.CookieLen]byte
	if err := format.ReadFull(f, mid[:], rules.recordsEnd, Name, "mid-footer"); err != nil {
		return err
	}
	if string(mid[:]) != vhdspec.CookieZVHD2 {
		return format.Errorf(Name, "mid-footer cookie", rules.recordsEnd, "%q, want %q before the index", mid[:], vhdspec.CookieZVHD2)
	}
	img.entries = make([]vhdspec.IndexEntry, 0, d.NonZeroBlkNum)
	for k := range n {
		e := vhdspec.DecodeIndexEntry(raw[k*vhdspec.EntrySize:])
		stored, err := rules.check(k, e)
		if err != nil {
			return err
		}
		if stored {
			img.entries = append(img.entries, e)
			img.blocks.Add(int64(e.Block))
		}
	}
	return rules.complete(img.trailerOff)
}

// readBitmap reads the bitmap d describes.
func readBitmap(f format.File, d *vhdspec.Descriptor) ([]byte, error) {
	if err := format.CheckTable(Name, "bitmap", int64(d.BitmapLBA), int64(d.BitmapSize), f.Size()); err != nil {
		return nil, err
	}
	bitmap := make([]byte, d.BitmapSize)
	return bitmap, format.ReadFull(f, bitmap, int64(d.BitmapLBA), Name, "bitmap")
}

// checkBitmap checks that no bit past the last block is set and that the
// bits set number non_zero_blk_num (§2.5).
func checkBitmap(d *vhdspec.Descriptor, bitmap []byte, trailerOff int64) error {
	var pop uint64
	for i, c := range bitmap {
		pop += uint64(bits.OnesCount8(c))
		if lim := int64(d.MaxBlkNum) - int64(i)*8; lim < 8 && c>>max(lim, 0) != 0 {
			return format.Errorf(Name, "bitmap", int64(d.BitmapLBA)+int64(i), "bit set for a block past max_blk_num %d", d.MaxBlkNum)
		}
	}
	if pop != uint64(d.NonZeroBlkNum) {
		return format.Errorf(Name, "non_zero_blk_num", trailerOff+vhdspec.OffNonZeroBlkNum, "%d, but the bitmap has %d bits set", d.NonZeroBlkNum, pop)
	}
	return nil
}

// indexEntries is the number of index entries d describes: one per stored
// block, or one per block in the dense form (§2.4, §2.9).
func indexEntries(d *vhdspec.Descriptor) int64 {
	if d.IndexDense == 1 {
		return int64(d.MaxBlkNum)
	}
	return int64(d.NonZeroBlkNum)
}

// entryRules checks the index entries one after another, as Open and
// Check both walk them (§2.6).
type entryRules struct {
	d          *vhdspec.Descriptor
	bitmap     []byte
	recordsEnd int64 // the mid-footer: records lie before it
	next       int64 // lowest offset the next record may start at
	last       int64 // block of the last entry accepted; -1 for none
	accepted   int64
}

func newEntryRules(d *vhdspec.Descriptor, bitmap []byte) *entryRules {
	return &entryRules{d: d, bitmap: bitmap, recordsEnd: int64(d.IndexLBA) - vhdspec.SlotSize, next: vhdspec.SlotSize, last: -1}
}

// check validates entry k and accepts it when it stores a block, which it
// reports (a dense index's entries for absent blocks store none).
func (r *entryRules) check(k int64, e vhdspec.IndexEntry) (bool, error) {
	d := r.d
	eoff := int64(d.IndexLBA) + k*vhdspec.EntrySize
	stored := func(b uint32) bool { return r.bitmap[b/8]>>(b%8)&1 != 0 }
	if d.IndexDense == 1 {
		if e.Offset == 0 && e.Length == 0 {
			if stored(uint32(k)) {
				return false, format.Errorf(Name, "index entry", eoff, "block %d has no record but its bitmap bit is set", k)
			}
			return false, nil
		}
		if int64(e.Block) != k {
			return false, format.Errorf(Name, "index entry block", eoff+8, "%d in the entry for block %d", e.Block, k)
		}
	}
	switch {
	case e.Block >= d.MaxBlkNum:
		return false, format.Errorf(Name, "index entry block", eoff+8, "block %d past max_blk_num %d", e.Block, d.MaxBlkNum)
	case int64(e.Block) <= r.last:
		return false, format.Errorf(Name, "index entry block", eoff+8, "block %d after block %d: entries must ascend", e.Block, r.last)
	case !stored(e.Block):
		return false, format.Errorf(Name, "bitmap", int64(d.BitmapLBA)+int64(e.Block/8), "bit for block %d is clear but index entry %d stores it", e.Block, k)
	case e.Length < vhdspec.RecordAlign || e.Length%vhdspec.RecordAlign != 0 || e.Length > vhdspec.MaxRecordLen:
		return false, format.Errorf(Name, "index entry length", eoff+12, "record length %d is not a multiple of %d up to %d", e.Length, vhdspec.RecordAlign, vhdspec.MaxRecordLen)
	case e.Offset%vhdspec.RecordAlign != 0 || e.Offset < uint64(r.next):
		return false, format.Errorf(Name, "index entry offset", eoff, "record offset %d is not %d-aligned at or after %d (the end of the previous record)", e.Offset, vhdspec.RecordAlign, r.next)
	case e.Offset > uint64(r.recordsEnd) || int64(e.Length) > r.recordsEnd-int64(e.Offset):
		return false, format.Errorf(Name, "index entry offset", eoff, "record [%d,+%d) extends past the mid-footer at %d", e.Offset, e.Length, r.recordsEnd)
	}
	r.next = int64(e.Offset) + int64(e.Length)
	r.last = int64(e.Block)
	r.accepted++
	return true, nil
}

// complete checks, after the walk, that the index stored every block the
// bitmap has: with as many bits set as non_zero_blk_num, N ascending
// entries each on a set bit make index and bitmap agree exactly.
func (r *entryRules) complete(trailerOff int64) error {
	if r.accepted != int64(r.d.NonZeroBlkNum) {
		return format.Errorf(Name, "non_zero_blk_num", trailerOff+vhdspec.OffNonZeroBlkNum, "%d, but the index has %d records", r.d.NonZeroBlkNum, r.accepted)
	}
	return nil
}

// Close releases the decoder and closes the file.
func (img *Image) Close() error {
	if img.zstd != nil {
		img.zstd.Close()
	}
	return img.Base.Close()
}

// Info describes the image.
func (img *Image) Info() *format.Info {
	d := img.d
	return vhdspec.Info(Name, img.Size(), &Specific{
		CurrentSize:  int64(d.CurrSize),
		BlockSize:    int64(d.BlockSize),
		Compression:  vhdspec.Method(d.CompressMethod),
		Version:      int(d.Version),
		DenseIndex:   d.IndexDense == 1,
		StoredBlocks: int64(d.NonZeroBlkNum),
		Identity:     d.Identity(),
	})
}

// decode fills block with the block of entry k. It checks the record's
// framing against the entry and decodes the payload to exactly one block.
func (img *Image) decode(k int, block []byte) error {
	e := img.entries[k]
	off := int64(e.Offset)
	if cap(img.rec) < int(e.Length) {
		img.rec = make([]byte, e.Length)
	}
	rec := img.rec[:e.Length]
	if err := format.ReadFull(img.File, rec, off, Name, "record"); err != nil {
		return err
	}
	h, ok := vhdspec.DecodeRecordHeader(rec)
	switch {
	case !ok:
		return format.Errorf(Name, "record magic", off, "%q, want %q", rec[:len(vhdspec.RecordMagic)], vhdspec.RecordMagic)
	case h.Block != e.Block:
		return format.Errorf(Name, "record block", off+vhdspec.OffRecBlock, "record holds block %d, index entry says %d", h.Block, e.Block)
	case h.PayloadLen == 0 || int64(h.PayloadLen) > int64(e.Length)-vhdspec.RecordHeaderLen-vhdspec.RecordEndLen:
		return format.Errorf(Name, "record payload length", off+vhdspec.OffRecPayloadLen, "%d bytes do not fit a %d-byte record", h.PayloadLen, e.Length)
	case string(rec[len(rec)-vhdspec.RecordEndLen:]) != vhdspec.RecordEnd:
		return format.Errorf(Name, "record end marker", off+int64(len(rec)-vhdspec.RecordEndLen), "%q, want %q", rec[len(rec)-vhdspec.RecordEndLen:], vhdspec.RecordEnd)
	}
	payload := rec[vhdspec.RecordHeaderLen : vhdspec.RecordHeaderLen+int(h.PayloadLen)]
	var err error
	if img.d.CompressMethod == vhdspec.MethodZstd {
		err = unzstd(img.zstd, payload, block)
	} else {
		err = inflate(payload, block)
	}
	if err != nil {
		return &format.FormatError{Format: Name, Field: "record payload", Offset: off + vhdspec.RecordHeaderLen,
			Reason: fmt.Sprintf("block %d (%s)", e.Block, vhdspec.Method(img.d.CompressMethod)), Err: err}
	}
	return nil
}

// errSize reports a payload that does not decode to exactly one block.
var errSize = errors.New("does not decompress to exactly one block")

// unzstd decodes a zstd payload into block, which it must fill exactly;
// the decoder is capped at len(block) bytes of output.
func unzstd(dec *zstd.Decoder, payload, block []byte) error {
	out, err := dec.DecodeAll(payload, block[:0:len(block)])
	if err != nil {
		return err
	}
	if len(out) != len(block) {
		return fmt.Errorf("%w: %d bytes", errSize, len(out))
	}
	if &out[0] != &block[0] {
		copy(block, out)
	}
	return nil
}

// inflate decodes a zlib payload into block, which it must fill exactly.
// Writers sync-flush and never finish the stream; a finished stream is
// accepted too. Output past one block is an error, and never buffered.
func inflate(payload, block []byte) error {
	zr, err := zlib.NewReader(bytes.NewReader(payload))
	if err != nil {
		return err
	}
	defer zr.Close()
	if n, err := io.ReadFull(zr, block); err != nil {
		return fmt.Errorf("%w: %d bytes: %v", errSize, n, err)
	}
	var extra [1]byte
	if n, _ := zr.Read(extra[:]); n > 0 {
		return fmt.Errorf("%w: more than %d bytes", errSize, len(block))
	}
	return nil
}
