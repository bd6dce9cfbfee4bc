package vmdk

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/flate"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/zlibfast"
)

// maxCompressedGrain is the most file bytes a grain takes in a stream:
// marker head, a deflate stream of stored blocks (5 bytes per 16 KiB
// block, zlib's 6 of header and checksum), padded to a sector.
const maxCompressedGrain = (grainMarkerBytes + WriterGrainSize + 5*(WriterGrainSize/16383+1) + 6 + sectorSize - 1) / sectorSize * sectorSize

// streamWriter writes streamOptimized.
type streamWriter struct {
	out  *format.Output
	p    *params
	gd   []uint32 // sector of each grain table, 0 for none
	gt   [writerGTEs]uint32
	cur  int64 // the table in gt
	used bool  // gt holds an entry
	done int64 // guest bytes written
}

// encoded is a Data block made ready by Encode: each grain's marker and
// compressed bytes, padded to a sector.
type encoded struct {
	buf  []byte
	offs []int // where each grain's marker starts in buf
}

var (
	encPool  = sync.Pool{New: func() any { return &encoded{buf: make([]byte, 0, 2*maxCompressedGrain)} }}
	zipPool  = sync.Pool{New: func() any { w, _ := zlibfast.NewWriter(nil, flate.DefaultCompression); return w }}
	padPool  = sync.Pool{New: func() any { b := make([]byte, WriterGrainSize); return &b }}
	zeroSect [sectorSize]byte
)

func newStreamWriter(out *format.Output, p *params, file string) (*streamWriter, error) {
	w := &streamWriter{out: out, p: p, gd: make([]uint32, p.gtCount)}
	if _, err := out.Write(p.prologue(0, gdAtEnd, streamOverhead, file)); err != nil {
		return nil, err
	}
	return w, out.Skip(streamOverhead*sectorSize - out.Pos())
}

// BlockSize is the grain.
func (w *streamWriter) BlockSize() int64 { return WriterGrainSize }

// appender is an io.Writer appending to a byte slice.
type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error) { a.b = append(a.b, p...); return len(p), nil }

// Encode compresses each grain of a Data block behind its grain marker.
// A short last grain is padded to a whole grain, as VMware stores it.
func (w *streamWriter) Encode(b *format.Block) error {
	enc := encPool.Get().(*encoded)
	enc.offs = enc.offs[:0]
	a := appender{b: enc.buf[:0]}
	zw := zipPool.Get().(*zlibfast.Writer)
	defer zipPool.Put(zw)
	for off := int64(0); off < b.Length; off += WriterGrainSize {
		data := b.Data[off:min(off+WriterGrainSize, b.Length)]
		if len(data) < WriterGrainSize {
			pad := padPool.Get().(*[]byte)
			defer padPool.Put(pad)
			n := copy(*pad, data)
			clear((*pad)[n:])
			data = *pad
		}
		start := len(a.b)
		enc.offs = append(enc.offs, start)
		var head [grainMarkerBytes]byte
		le.PutUint64(head[:], uint64((b.Start+off)/sectorSize))
		a.b = append(a.b, head[:]...)
		zw.Reset(&a)
		if _, err := zw.Write(data); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		le.PutUint32(a.b[start+8:], uint32(len(a.b)-start-grainMarkerBytes))
		if r := (len(a.b) - start) % sectorSize; r != 0 {
			a.b = append(a.b, zeroSect[:sectorSize-r]...)
		}
	}
	enc.buf = a.b
	b.Encoded = enc
	return nil
}

// Write appends the block's compressed grains and notes them in the grain
// table, writing the table when the block moves past it.
func (w *streamWriter) Write(b *format.Block) error {
	if err := checkBlock(b, w.done, w.p.size); err != nil {
		return err
	}
	w.done = b.End()
	if b.Status != format.Data {
		return nil
	}
	enc, ok := b.Encoded.(*encoded)
	if !ok || len(enc.offs) != int((b.Length+WriterGrainSize-1)/WriterGrainSize) {
		return fmt.Errorf("vmdk: data block [%d,+%d) was not encoded", b.Start, b.Length)
	}
	b.Encoded = nil
	defer encPool.Put(enc)
	if end := (w.out.Pos() + int64(len(enc.buf))) / sectorSize; end > maxHostSector {
		return fmt.Errorf("vmdk: the stream passes the 2 TiB a sparse extent can address")
	}
	// Grains in runs of one grain table; a table is written (behind the
	// grains it maps) when the next run belongs to another.
	first := b.Start / WriterGrainSize
	for i := 0; i < len(enc.offs); {
		t := (first + int64(i)) / writerGTEs
		j := i + 1
		for j < len(enc.offs) && (first+int64(j))/writerGTEs == t {
			j++
		}
		if t != w.cur {
			if err := w.flushGT(); err != nil {
				return err
			}
			w.cur = t
		}
		base := w.out.Pos() - int64(enc.offs[i])
		for k := i; k < j; k++ {
			w.gt[(first+int64(k))%writerGTEs] = uint32((base + int64(enc.offs[k])) / sectorSize)
		}
		w.used = true
		stop := len(enc.buf)
		if j < len(enc.offs) {
			stop = enc.offs[j]
		}
		if _, err := w.out.Write(enc.buf[enc.offs[i]:stop]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// flushGT writes the current grain table, if it maps anything, behind its
// marker.
func (w *streamWriter) flushGT() error {
	if !w.used {
		return nil
	}
	var m [sectorSize]byte
	le.PutUint64(m[:], gtSectors)
	le.PutUint32(m[12:], markerGT)
	if _, err := w.out.Write(m[:]); err != nil {
		return err
	}
	w.gd[w.cur] = uint32(w.out.Pos() / sectorSize)
	var t [gtBytes]byte
	for i, v := range w.gt {
		le.PutUint32(t[i*4:], v)
	}
	clear(w.gt[:])
	w.used = false
	_, err := w.out.Write(t[:])
	return err
}

// Close writes the last grain table, the directory, the footer and the
// end-of-stream marker.
func (w *streamWriter) Close() error {
	if w.done != w.p.size {
		return fmt.Errorf("vmdk: closed after %d of %d bytes", w.done, w.p.size)
	}
	if err := w.flushGT(); err != nil {
		return err
	}
	var m [sectorSize]byte
	le.PutUint64(m[:], uint64(w.p.gdSectors))
	le.PutUint32(m[12:], markerGD)
	if _, err := w.out.Write(m[:]); err != nil {
		return err
	}
	gdSector := w.out.Pos() / sectorSize
	gd := make([]byte, w.p.gdSectors*sectorSize)
	for i, v := range w.gd {
		le.PutUint32(gd[i*4:], v)
	}
	if _, err := w.out.Write(gd); err != nil {
		return err
	}
	clear(m[:])
	le.PutUint64(m[:], 1)
	le.PutUint32(m[12:], markerFooter)
	if _, err := w.out.Write(m[:]); err != nil {
		return err
	}
	if _, err := w.out.Write(w.p.header(0, uint64(gdSector), streamOverhead)); err != nil {
		return err
	}
	if _, err := w.out.Write(zeroSect[:]); err != nil { // end of stream
		return err
	}
	return w.out.Finish(w.out.Pos())
}
