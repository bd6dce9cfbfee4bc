package zvhd

import (
	"sync"

	"github.com/klauspost/compress/flate"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// The ZVHD writer follows §3 of docs/ZVHD2.md: the descriptor slot, one record
// per non-zero 2 MiB block in ascending order, and a byte-identical copy of
// the descriptor slot. Everything is known up front, so it streams.
//
// The record payloads are consecutive pieces of one zlib stream, as the
// format requires: a zlib header at the start of the first payload, then
// each block deflated and sync-flushed, never finished. Unlike the driver,
// which runs one compressor through the whole file, each block is
// deflated on its own (no back-references into the previous block), so
// the blocks compress in parallel. The concatenation is still one valid
// stream: a sync flush ends on a byte boundary and leaves the inflater
// between blocks, and a block that refers to no earlier data is valid
// anywhere in a stream. The cost is the first 32 KiB window of each 2 MiB
// block compressing without history: well under 1%.

// Compression constants.
const (
	// Level is OpenSSL COMP_zlib's level, zlib's default.
	Level = 6
	// zlibHeader is the RFC 1950 header of a level-6 stream with a 32 KiB
	// window, as deflateInit writes it: CMF 0x78, FLG 0x9c.
	zlibHeader = "\x78\x9c"
)

func init() {
	vhdspec.RegisterWriter(format.WriterFormat{
		Name:    Name,
		New:     format.Creates(NewWriter),
		Measure: Measure,
	})
}

// Measure answers `measure`: file sizes for the conversion described by
// o, upper bounds since a record's size depends on its compression.
func Measure(o format.WriteOptions) (format.Measurement, error) {
	maxBlk := vhdspec.CeilDiv(uint64(vhdspec.OrigSize(o.Size)), vhdspec.BlockSize)
	// The zlib header makes the first record 2 bytes longer: one more
	// 4 KiB unit at worst, counted once.
	rec := vhdspec.RecordLen(vhdspec.PayloadBound + 2)
	file := func(stored uint64) int64 { return 2*vhdspec.SlotSize + int64(stored)*rec }
	data, _, err := vhdspec.DataBlocks(o)
	if err != nil {
		return format.Measurement{}, err
	}
	return format.Measurement{Required: file(data), FullyAllocated: file(maxBlk)}, nil
}

// Writer writes a ZVHD image front to back. It never seeks, so dst may be
// a pipe; on a regular file it writes the same bytes.
type Writer struct {
	*vhdspec.Stream
	slot   []byte // the descriptor slot, written first and last
	stored int64  // records written
}

// NewWriter starts a ZVHD image of o.Size bytes on dst and writes its
// descriptor.
func NewWriter(dst format.Target, o format.WriteOptions) (*Writer, error) {
	s, d, err := vhdspec.NewStream(dst, Name, vhdspec.CookieZVHD, o.Size)
	if err != nil {
		return nil, err
	}
	w := &Writer{Stream: s, slot: vhdspec.Slot(d)}
	if err := w.Put(w.slot); err != nil {
		return nil, err
	}
	return w, nil
}

// Encode deflates each non-zero 2 MiB block of b, leaving room before the
// payload for the record header and, if it turns out to be the first
// record, the zlib header.
func (w *Writer) Encode(b *format.Block) error {
	return w.Stream.Encode(b, func(dst, block []byte) ([]byte, error) {
		return vhdspec.SyncFlush(&flatePool, append(dst, zlibHeader...), block)
	})
}

// Write completes and appends b's records. The first record of the file
// keeps the zlib header in its payload; later ones start 2 bytes on, over
// it.
func (w *Writer) Write(b *format.Block) error {
	recs, err := w.Records(b)
	if err != nil {
		return err
	}
	for _, r := range recs {
		buf := r.Buf
		if w.stored > 0 {
			buf = buf[len(zlibHeader):]
		}
		if err := w.Put(vhdspec.FinishRecord(buf, r.Block)); err != nil {
			return err
		}
		w.stored++
		r.Free()
	}
	return nil
}

// Close writes the copy of the descriptor slot and flushes.
func (w *Writer) Close() error {
	if err := w.Complete(); err != nil {
		return err
	}
	if err := w.Put(w.slot); err != nil {
		return err
	}
	return w.Out.Flush()
}

// flatePool holds raw deflate compressors: the zlib header is written
// once, before the first payload.
var flatePool = sync.Pool{New: func() any {
	fw, err := flate.NewWriter(nil, Level)
	if err != nil {
		panic(err) // a constant, valid level
	}
	return fw
}}
