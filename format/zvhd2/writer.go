package zvhd2

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// The ZVHD2 writer follows §2.7 of docs/ZVHD2.md: a header descriptor, one
// record per non-zero 2 MiB block in ascending order, a mid-footer, the
// index, the bitmap and the trailer. Nothing is ever written twice or out
// of order, so the output streams into a pipe; the same bytes go to a file.

// Writer options, by qemu-img's names.
const (
	OptCompressionType = "compression_type" // qemu-img's name for the codec option
	CompressionZstd    = "zstd"             // compress_method 1, the driver's default
	CompressionZlib    = "zlib"             // compress_method 0
)

// zlibLevel is the driver's deflate level (its header is 78 01).
const zlibLevel = 1

func init() {
	vhdspec.RegisterWriter(format.WriterFormat{
		Name: Name,
		Options: []format.OptionSpec{{
			Name:     OptCompressionType,
			Help:     "block codec: zstd (the default) or zlib",
			Validate: format.OneOf(CompressionZstd, CompressionZlib),
		}},
		New:     format.Creates(NewWriter),
		Measure: Measure,
	})
}

// Measure answers `measure`: file sizes for the conversion described by o.
// A record's size depends on how well its block compresses, so the
// figures are upper bounds: every block that may hold data is counted at
// its worst-case record length.
func Measure(o format.WriteOptions) (format.Measurement, error) {
	maxBlk := vhdspec.CeilDiv(uint64(vhdspec.OrigSize(o.Size)), vhdspec.BlockSize)
	// The last block may be partial: its zero padding compresses to
	// almost nothing.
	last := vhdspec.RecordLen(vhdspec.PayloadBound)
	if tail := o.Size % vhdspec.BlockSize; tail != 0 {
		last = vhdspec.RecordLen(tail + tail>>7 + (vhdspec.BlockSize-tail)>>6 + 4096)
	}
	file := func(stored uint64, withLast bool) int64 {
		n := int64(3*vhdspec.SlotSize + // header, mid-footer, trailer
			vhdspec.CeilDiv(stored, vhdspec.SegBlocks)*vhdspec.IndexSegSize +
			vhdspec.CeilDiv(maxBlk, vhdspec.BitmapBlocks)*vhdspec.BitmapSegSize)
		if withLast && stored > 0 {
			return n + int64(stored-1)*vhdspec.RecordLen(vhdspec.PayloadBound) + last
		}
		return n + int64(stored)*vhdspec.RecordLen(vhdspec.PayloadBound)
	}
	data, lastData, err := vhdspec.DataBlocks(o)
	if err != nil {
		return format.Measurement{}, err
	}
	return format.Measurement{Required: file(data, lastData), FullyAllocated: file(maxBlk, true)}, nil
}

// Writer writes a ZVHD2 image front to back. It never seeks, so dst may
// be a pipe; on a regular file it writes the same bytes.
type Writer struct {
	*vhdspec.Stream
	d       *vhdspec.Descriptor // the header; the trailer adds the index fields
	method  uint8
	entries []vhdspec.IndexEntry
}

// NewWriter starts a ZVHD2 image of o.Size bytes on dst and writes its
// header. The codec is o.Options["compression_type"] (zstd by default).
func NewWriter(dst format.Target, o format.WriteOptions) (*Writer, error) {
	method := uint8(vhdspec.MethodZstd)
	switch c := o.Options[OptCompressionType]; c {
	case "", CompressionZstd:
	case CompressionZlib:
		method = vhdspec.MethodZlib
	default:
		return nil, fmt.Errorf("%s: %s=%s: must be %s or %s", Name, OptCompressionType, c, CompressionZstd, CompressionZlib)
	}
	s, d, err := vhdspec.NewStream(dst, Name, vhdspec.CookieZVHD2, o.Size)
	if err != nil {
		return nil, err
	}
	// The header carries what is known before the data (§2.7): sizes,
	// block size and count, codec. Index and bitmap fields stay zero.
	d.Version = vhdspec.VersionIndexed
	d.BlockSize = vhdspec.BlockSize
	d.MaxBlkNum = uint32(vhdspec.CeilDiv(d.OrigSize, vhdspec.BlockSize))
	d.CompressMethod = method
	w := &Writer{Stream: s, d: d, method: method}
	if err := w.Put(vhdspec.Slot(d)); err != nil {
		return nil, err
	}
	return w, nil
}

// Encode compresses each non-zero 2 MiB block of b into a complete record.
// All-zero blocks are dropped: the format has no stored zero block.
func (w *Writer) Encode(b *format.Block) error {
	err := w.Stream.Encode(b, func(dst, block []byte) ([]byte, error) {
		if w.method == vhdspec.MethodZstd {
			return zstdEncoder().EncodeAll(block, dst), nil
		}
		return vhdspec.SyncFlush(&zlibPool, dst, block)
	})
	if err != nil {
		return err
	}
	recs, _ := b.Encoded.([]vhdspec.Record) // none for a block without data
	for i := range recs {
		recs[i].Buf = vhdspec.FinishRecord(recs[i].Buf, recs[i].Block)
	}
	return nil
}

// Write appends b's records, remembering where each went for the index.
func (w *Writer) Write(b *format.Block) error {
	recs, err := w.Records(b)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if len(w.entries) >= vhdspec.MaxStoredBlocks {
			return fmt.Errorf("%s: more than %d non-zero blocks do not fit the index", Name, vhdspec.MaxStoredBlocks)
		}
		w.entries = append(w.entries, vhdspec.IndexEntry{Offset: uint64(w.Out.Pos()), Block: r.Block, Length: uint32(len(r.Buf))})
		if err := w.Put(r.Buf); err != nil {
			return err
		}
		r.Free()
	}
	return nil
}

// Close writes the mid-footer, index, bitmap and trailer and flushes.
func (w *Writer) Close() error {
	if err := w.Complete(); err != nil {
		return err
	}
	d := *w.d
	n := uint32(len(w.entries))
	// The mid-footer is the header with non_zero_blk_num filled in. The
	// driver leaves the header's (then stale) checksum in it; nobody reads
	// this slot's checksum, and a correct one costs nothing.
	d.NonZeroBlkNum = n
	if err := w.Put(vhdspec.Slot(&d)); err != nil {
		return err
	}
	d.IndexLBA = uint64(w.Out.Pos())
	d.IndexSegNum = uint32(vhdspec.CeilDiv(uint64(n), vhdspec.SegBlocks))
	d.IndexSize = d.IndexSegNum * vhdspec.IndexSegSize
	d.IndexSegSize = vhdspec.IndexSegSize
	if d.IndexSegNum > 0 {
		seg := make([]byte, vhdspec.IndexSegSize)
		for s := 0; s < len(w.entries); s += vhdspec.SegBlocks {
			clear(seg)
			for i, e := range w.entries[s:min(s+vhdspec.SegBlocks, len(w.entries))] {
				e.Encode(seg[i*vhdspec.EntrySize:])
			}
			if err := w.Put(seg); err != nil {
				return err
			}
		}
	}
	d.BitmapLBA = uint64(w.Out.Pos())
	d.BitmapSegNum = uint32(vhdspec.CeilDiv(uint64(d.MaxBlkNum), vhdspec.BitmapBlocks))
	d.BitmapSize = d.BitmapSegNum * vhdspec.BitmapSegSize
	d.BitmapSegSize = vhdspec.BitmapSegSize
	seg := make([]byte, vhdspec.BitmapSegSize)
	k := 0 // next entry to mark
	for s := range uint64(d.BitmapSegNum) {
		clear(seg)
		for ; k < len(w.entries) && uint64(w.entries[k].Block)/vhdspec.BitmapBlocks == s; k++ {
			b := w.entries[k].Block % vhdspec.BitmapBlocks
			seg[b/8] |= 1 << (b % 8)
		}
		if err := w.Put(seg); err != nil {
			return err
		}
	}
	if err := w.Put(vhdspec.Slot(&d)); err != nil {
		return err
	}
	return w.Out.Flush()
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

// zlibPool holds the driver's zlib compressor: level 1, sync-flushed and
// never finished, so a payload ends in 00 00 ff ff with no final block and
// no Adler-32 (§2.3).
var zlibPool = sync.Pool{New: func() any {
	zw, err := zlib.NewWriterLevel(nil, zlibLevel)
	if err != nil {
		panic(err) // a constant, valid level
	}
	return zw
}}
