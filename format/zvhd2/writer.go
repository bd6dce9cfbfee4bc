package zvhd2

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"

	"github.com/diskimg/diskimg/format"
)

// The ZVHD2 writer follows §2.7 of the spec: a header descriptor, one
// record per non-zero 2 MiB block in ascending order, a mid-footer, the
// index, the bitmap and the trailer. Nothing is ever written twice or out
// of order, so the output streams into a pipe; the same bytes go to a file.

// Writer options, by qemu-img's names.
const (
	OptCompressionType = "compression_type" // qemu-img's name for the codec option
	CompressionZstd    = "zstd"             // compress_method 1, the driver's default
	CompressionZlib    = "zlib"             // compress_method 0
)

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
	// zlibLevel is the driver's deflate level (its header is 78 01).
	zlibLevel = 1
	// bufSize buffers the descriptor and bitmap writes; records and index
	// segments are larger and go to the target directly.
	bufSize = 64 << 10
)

func init() {
	format.RegisterWriter(&format.WriterFormat{
		Name: Name,
		Options: []format.OptionSpec{{
			Name:     OptCompressionType,
			Help:     "block codec: zstd (the default) or zlib",
			Validate: format.OneOf(CompressionZstd, CompressionZlib),
		}},
		// Every block is compressed anyway; -c is accepted so qemu-img
		// command lines port unchanged.
		Compress: true,
		MaxSize:  MaxSize,
		New:      func(dst format.Target, o format.WriteOptions) (format.Writer, error) { return NewWriter(dst, o) },
		Measure:  Measure,
	})
}

// Hooks for tests: the descriptor's timestamp and uuid are the only bytes
// that differ between two runs.
var (
	clock                = time.Now
	uuidSource io.Reader = rand.Reader
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
		Geometry:       Geometry(orig),
		DiskType:       DiskType,
	}
	copy(d.Cookie[:], cookie)
	copy(d.CreatorApp[:], CreatorApp)
	if secs := clock().Sub(epoch) / time.Second; secs > 0 {
		d.Timestamp = uint32(secs)
	}
	if _, err := io.ReadFull(uuidSource, d.UUID[:]); err != nil {
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

// Measure answers `measure`: file sizes for the conversion described by o.
// A record's size depends on how well its block compresses, so the
// figures are upper bounds: every block that may hold data is counted at
// its worst-case record length.
func Measure(o format.WriteOptions) (format.Measurement, error) {
	maxBlk := CeilDiv(uint64(OrigSize(o.Size)), BlockSize)
	// The last block may be partial: its zero padding compresses to
	// almost nothing.
	last := RecordLen(PayloadBound)
	if tail := o.Size % BlockSize; tail != 0 {
		last = RecordLen(tail + tail>>7 + (BlockSize-tail)>>6 + 4096)
	}
	file := func(stored uint64, withLast bool) int64 {
		n := int64(3*SlotSize + // header, mid-footer, trailer
			CeilDiv(stored, SegBlocks)*IndexSegSize +
			CeilDiv(maxBlk, BitmapBlocks)*BitmapSegSize)
		if withLast && stored > 0 {
			return n + int64(stored-1)*RecordLen(PayloadBound) + last
		}
		return n + int64(stored)*RecordLen(PayloadBound)
	}
	var data uint64
	var lastData bool // whether the last block may hold data
	if o.Layout != nil {
		err := o.Layout.Align(o.Size, BlockSize)(func(e format.Extent) error {
			if e.Status == format.Data {
				data += CeilDiv(uint64(e.Length), BlockSize)
				lastData = e.End() == o.Size
			}
			return nil
		})
		if err != nil {
			return format.Measurement{}, err
		}
	}
	return format.Measurement{Required: file(data, lastData), FullyAllocated: file(maxBlk, true)}, nil
}

// Writer writes a ZVHD2 image front to back. It never seeks, so dst may
// be a pipe; on a regular file it writes the same bytes.
type Writer struct {
	out     *bufio.Writer
	d       *Descriptor // the header; the trailer adds the index fields
	method  uint8
	size    int64 // guest bytes the blocks cover
	next    int64 // guest offset of the next block
	pos     int64 // file offset of the next byte
	entries []IndexEntry
}

// NewWriter starts a ZVHD2 image of o.Size bytes on dst and writes its
// header. The codec is o.Options["compression_type"] (zstd by default).
func NewWriter(dst format.Target, o format.WriteOptions) (*Writer, error) {
	if o.Size < 0 || o.Size > MaxSize {
		return nil, fmt.Errorf("%s: virtual size %d is out of range (0 to %d bytes)", Name, o.Size, int64(MaxSize))
	}
	method := uint8(MethodZstd)
	switch c := o.Options[OptCompressionType]; c {
	case "", CompressionZstd:
	case CompressionZlib:
		method = MethodZlib
	default:
		return nil, fmt.Errorf("%s: %s=%s: must be %s or %s", Name, OptCompressionType, c, CompressionZstd, CompressionZlib)
	}
	if _, _, err := format.StartTarget(dst, Name); err != nil {
		return nil, err
	}
	d, err := NewDescriptor(CookieZVHD2, o.Size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	// The header carries what is known before the data (§2.7): sizes,
	// block size and count, codec. Index and bitmap fields stay zero.
	d.Version = VersionIndexed
	d.BlockSize = BlockSize
	d.MaxBlkNum = uint32(CeilDiv(d.OrigSize, BlockSize))
	d.CompressMethod = method
	w := &Writer{out: bufio.NewWriterSize(dst, bufSize), d: d, method: method, size: o.Size}
	if err := w.write(Slot(d)); err != nil {
		return nil, err
	}
	return w, nil
}

// BlockSize is the format's 2 MiB block.
func (w *Writer) BlockSize() int64 { return BlockSize }

// Encode compresses each non-zero 2 MiB block of b into a complete record.
// All-zero blocks are dropped: the format has no stored zero block.
func (w *Writer) Encode(b *format.Block) error {
	if b.Status != format.Data {
		return nil
	}
	recs, err := EncodeBlocks(b, func(dst, block []byte) ([]byte, error) {
		if w.method == MethodZstd {
			return zstdEncoder().EncodeAll(block, dst), nil
		}
		return deflateBlock(dst, block)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", Name, err)
	}
	for i := range recs {
		recs[i].Buf = FinishRecord(recs[i].Buf, recs[i].Block)
	}
	b.Encoded = recs
	return nil
}

// Write appends b's records, remembering where each went for the index.
func (w *Writer) Write(b *format.Block) error {
	if err := CheckOrder(Name, b, w.next, w.size); err != nil {
		return err
	}
	w.next = b.End()
	if b.Status != format.Data {
		return nil
	}
	recs, ok := b.Encoded.([]Record)
	if !ok {
		return fmt.Errorf("%s: data block at %d was not encoded", Name, b.Start)
	}
	b.Encoded = nil
	for _, r := range recs {
		if len(w.entries) >= MaxStoredBlocks {
			return fmt.Errorf("%s: more than %d non-zero blocks do not fit the index", Name, MaxStoredBlocks)
		}
		w.entries = append(w.entries, IndexEntry{Offset: uint64(w.pos), Block: r.Block, Length: uint32(len(r.Buf))})
		if err := w.write(r.Buf); err != nil {
			return err
		}
		r.Free()
	}
	return nil
}

func (w *Writer) write(p []byte) error {
	n, err := w.out.Write(p)
	w.pos += int64(n)
	return err
}

// Close writes the mid-footer, index, bitmap and trailer and flushes.
func (w *Writer) Close() error {
	if w.next != w.size {
		return fmt.Errorf("%s: blocks end at %d, the disk at %d", Name, w.next, w.size)
	}
	d := *w.d
	n := uint32(len(w.entries))
	// The mid-footer is the header with non_zero_blk_num filled in. The
	// driver leaves the header's (then stale) checksum in it; nobody reads
	// this slot's checksum, and a correct one costs nothing.
	d.NonZeroBlkNum = n
	if err := w.write(Slot(&d)); err != nil {
		return err
	}
	d.IndexLBA = uint64(w.pos)
	d.IndexSegNum = uint32(CeilDiv(uint64(n), SegBlocks))
	d.IndexSize = d.IndexSegNum * IndexSegSize
	d.IndexSegSize = IndexSegSize
	if d.IndexSegNum > 0 {
		seg := make([]byte, IndexSegSize)
		for s := 0; s < len(w.entries); s += SegBlocks {
			clear(seg)
			for i, e := range w.entries[s:min(s+SegBlocks, len(w.entries))] {
				e.Encode(seg[i*EntrySize:])
			}
			if err := w.write(seg); err != nil {
				return err
			}
		}
	}
	d.BitmapLBA = uint64(w.pos)
	d.BitmapSegNum = uint32(CeilDiv(uint64(d.MaxBlkNum), BitmapBlocks))
	d.BitmapSize = d.BitmapSegNum * BitmapSegSize
	d.BitmapSegSize = BitmapSegSize
	seg := make([]byte, BitmapSegSize)
	k := 0 // next entry to mark
	for s := range uint64(d.BitmapSegNum) {
		clear(seg)
		for ; k < len(w.entries) && uint64(w.entries[k].Block)/BitmapBlocks == s; k++ {
			b := w.entries[k].Block % BitmapBlocks
			seg[b/8] |= 1 << (b % 8)
		}
		if err := w.write(seg); err != nil {
			return err
		}
	}
	if err := w.write(Slot(&d)); err != nil {
		return err
	}
	return w.out.Flush()
}

// CheckOrder checks that b is the block at next of a disk of size bytes,
// as the writer contract promises.
func CheckOrder(name string, b *format.Block, next, size int64) error {
	switch {
	case b.Start != next:
		return fmt.Errorf("%s: block at %d arrived, expected %d", name, b.Start, next)
	case b.Length <= 0 || b.End() > size:
		return fmt.Errorf("%s: block [%d,+%d) is empty or past the disk size %d", name, b.Start, b.Length, size)
	}
	return nil
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

// zstdEncoder is shared by all writers: EncodeAll is safe for concurrent
// use and keeps one encoder state per CPU. Frames look like the driver's
// (§2.3): single segment, content size, no checksum.
var zstdEncoder = sync.OnceValue(func() *zstd.Encoder {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithEncoderCRC(false),
		zstd.WithSingleSegment(true))
	if err != nil {
		panic(err) // only for invalid options, which are constants here
	}
	return enc
})

// appender is an io.Writer appending to a slice.
type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error) { a.b = append(a.b, p...); return len(p), nil }

var zlibPool = sync.Pool{New: func() any {
	zw, err := zlib.NewWriterLevel(nil, zlibLevel)
	if err != nil {
		panic(err) // a constant, valid level
	}
	return zw
}}

var errShortFlush = errors.New("zlib: nothing written")

// deflateBlock appends block to dst as the driver's zlib payload: a zlib
// stream at level 1, sync-flushed and never finished, so it ends in
// 00 00 ff ff with no final block and no Adler-32 (§2.3).
func deflateBlock(dst, block []byte) ([]byte, error) {
	zw := zlibPool.Get().(*zlib.Writer)
	defer zlibPool.Put(zw)
	a := appender{b: dst}
	zw.Reset(&a)
	if _, err := zw.Write(block); err != nil {
		return nil, err
	}
	if err := zw.Flush(); err != nil {
		return nil, err
	}
	if len(a.b) == len(dst) {
		return nil, errShortFlush
	}
	return a.b, nil
}
