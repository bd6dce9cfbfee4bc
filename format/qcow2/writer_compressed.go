package qcow2

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"

	"github.com/diskimg/diskimg/format"
)

// zlibWindow is the deflate window qemu inflates compressed clusters
// with (windowBits 12): a match reaching further back would not decode.
const zlibWindow = 1 << 12

var (
	flatePool = sync.Pool{New: func() any {
		w, err := flate.NewWriterWindow(nil, zlibWindow)
		if err != nil {
			panic(err) // zlibWindow is a valid constant size
		}
		return w
	}}
	zstdOnce sync.Once
	zstdEnc  *zstd.Encoder
	zstdErr  error
)

// zstdEncoder returns the shared zstd encoder; EncodeAll is safe for
// concurrent use and runs up to its concurrency at once, one per engine
// worker.
func zstdEncoder() (*zstd.Encoder, error) {
	zstdOnce.Do(func() {
		zstdEnc, zstdErr = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithLowerEncoderMem(true))
	})
	return zstdEnc, zstdErr
}

// encoded is the result of Encode for one block: per cluster, the length
// of its compressed form in buf, or -1 when it is stored uncompressed
// because compression did not make it smaller than a cluster.
type encoded struct {
	lens []int
	buf  []byte
}

// compressedWriter writes an image of compressed clusters; see the
// layout at the top of writer.go.
type compressedWriter struct {
	p     *params
	dst   format.Target
	out   *format.Output // dst
	spool *os.File       // the body, on a pipe
	// bw takes the body: out after the header cluster on a file, a buffer
	// on the spool on a pipe.
	bw interface {
		io.Writer
		Flush() error
	}
	size int64
	next int64 // guest offset of the next block
	pos  int64 // file offset of the next body byte

	l1     []uint64
	l2     []byte // the L2 table being filled
	l2Span int64  // its L1 index, -1 for none

	win      int64    // refcount block index whose counts are in refs
	refs     []byte   // that block's refcounts, in the on-disk encoding
	reftable []uint64 // offsets of the refcount blocks written so far
	pad      []byte   // a cluster for padding the disk's last cluster
}

func newCompressedWriter(dst format.Target, out *format.Output, p *params, size int64) (*compressedWriter, error) {
	if p.zstd {
		if _, err := zstdEncoder(); err != nil {
			return nil, err
		}
	}
	w := &compressedWriter{p: p, dst: dst, out: out, size: size, pos: p.cs, l2Span: -1,
		l1: make([]uint64, p.l1Size), l2: make([]byte, p.cs), refs: make([]byte, p.cs)}
	if out.Seekable() {
		// The header cluster is written last.
		w.bw = out
		if err := out.Skip(p.cs); err != nil {
			return nil, err
		}
	} else {
		f, err := os.CreateTemp("", "diskimg-qcow2-*.spool")
		if err != nil {
			return nil, fmt.Errorf("qcow2: compressed output to a stream needs a spool file: %w", err)
		}
		// Unlinked at once: the space is freed however the conversion ends.
		os.Remove(f.Name())
		w.spool, w.bw = f, bufio.NewWriterSize(f, format.OutputBufSize)
	}
	w.addRef(0, 1) // the header cluster
	return w, nil
}

// BlockSize is the cluster size: each cluster is compressed on its own.
func (w *compressedWriter) BlockSize() int64 { return w.p.cs }

// Encode compresses each cluster of b; the disk's last cluster is padded
// with zeros to a whole cluster first, as qemu does.
func (w *compressedWriter) Encode(b *format.Block) error {
	cs := w.p.cs
	n := (b.Length + cs - 1) / cs
	e := &encoded{lens: make([]int, n), buf: make([]byte, 0, min(b.Length, 4*cs))}
	var fw *flate.Writer
	if !w.p.zstd {
		fw = flatePool.Get().(*flate.Writer)
		defer flatePool.Put(fw)
	}
	var pad []byte
	for i := int64(0); i < n; i++ {
		src := b.Data[i*cs : min((i+1)*cs, int64(len(b.Data)))]
		if int64(len(src)) < cs {
			pad = make([]byte, cs)
			copy(pad, src)
			src = pad
		}
		start := len(e.buf)
		if w.p.zstd {
			e.buf = zstdEnc.EncodeAll(src, e.buf)
		} else {
			out := bytes.NewBuffer(e.buf)
			fw.Reset(out)
			if _, err := fw.Write(src); err != nil {
				return err
			}
			if err := fw.Close(); err != nil {
				return err
			}
			e.buf = out.Bytes()
		}
		e.lens[i] = len(e.buf) - start
		if int64(e.lens[i]) >= cs {
			e.buf, e.lens[i] = e.buf[:start], -1
		}
	}
	b.Encoded = e
	return nil
}

// Write appends the block's clusters to the body and notes them in the L2
// table; zero and unallocated blocks stay unallocated.
func (w *compressedWriter) Write(b *format.Block) error {
	if b.Start != w.next || b.Length <= 0 || b.End() > w.size {
		return fmt.Errorf("qcow2: block [%d,+%d) out of order or outside the disk (next %d, size %d)", b.Start, b.Length, w.next, w.size)
	}
	w.next = b.End()
	if b.Status != format.Data {
		return nil
	}
	e, ok := b.Encoded.(*encoded)
	cs := w.p.cs
	if !ok || int64(len(e.lens)) != (b.Length+cs-1)/cs || int64(len(b.Data)) != b.Length {
		return fmt.Errorf("qcow2: data block [%d,+%d) was not encoded", b.Start, b.Length)
	}
	x := 62 - (w.p.clusterBits - 8) // first bit of the sector count
	var used int
	for i, n := range e.lens {
		c := b.Start/cs + int64(i)
		var entry uint64
		if n < 0 {
			off, err := w.place(cs, true)
			if err != nil {
				return err
			}
			src := b.Data[int64(i)*cs : min(int64(i+1)*cs, b.Length)]
			if _, err := w.bw.Write(src); err != nil {
				return err
			}
			if err := writeZeros(w.bw, cs-int64(len(src))); err != nil {
				return err
			}
			w.addRef(off, cs)
			w.pos += cs
			entry = uint64(off) | l2Copied
		} else {
			off, err := w.place(int64(n), false)
			if err != nil {
				return err
			}
			if _, err := w.bw.Write(e.buf[used : used+n]); err != nil {
				return err
			}
			used += n
			w.addRef(off, int64(n))
			w.pos += int64(n)
			sectors := uint64((off+int64(n)-1)/compressedUnit - off/compressedUnit)
			entry = uint64(off) | sectors<<x | l2Compressed
		}
		if err := w.setL2(c, entry); err != nil {
			return err
		}
	}
	return nil
}

// setL2 stores the L2 entry of guest cluster c, writing out the previous
// L2 table when c is in a new span.
func (w *compressedWriter) setL2(c int64, entry uint64) error {
	span := c / w.p.l2Entries()
	if span != w.l2Span {
		if err := w.flushL2(); err != nil {
			return err
		}
		w.l2Span = span
	}
	binary.BigEndian.PutUint64(w.l2[c%w.p.l2Entries()*l2Entry:], entry)
	return nil
}

func (w *compressedWriter) flushL2() error {
	if w.l2Span < 0 {
		return nil
	}
	off, err := w.place(w.p.cs, true)
	if err != nil {
		return err
	}
	if _, err := w.bw.Write(w.l2); err != nil {
		return err
	}
	w.addRef(off, w.p.cs)
	w.pos += w.p.cs
	w.l1[w.l2Span] = uint64(off) | l2Copied
	clear(w.l2)
	w.l2Span = -1
	return nil
}

// place returns the file offset for n bytes (at most a cluster) at the
// end of the body, padding to a cluster boundary when aligned is set, when
// the current cluster's refcount is full, or when the bytes would reach a
// cluster past the refcount block in memory, which is then written out.
func (w *compressedWriter) place(n int64, aligned bool) (int64, error) {
	cs, per := w.p.cs, w.p.refsPerBlock()
	if w.pos%cs != 0 && (aligned || w.getRef(w.pos/cs) >= w.p.maxRef()) {
		if err := w.alignUp(); err != nil {
			return 0, err
		}
	}
	for (w.pos+n-1)/cs/per != w.win {
		if w.pos%cs != 0 {
			if err := w.alignUp(); err != nil {
				return 0, err
			}
			continue
		}
		// The window's clusters are all behind: write its refcount block
		// here, in the next window.
		off := w.pos
		if _, err := w.bw.Write(w.refs); err != nil {
			return 0, err
		}
		w.reftable = append(w.reftable, uint64(off))
		w.win++
		clear(w.refs)
		w.addRef(off, cs)
		w.pos += cs
	}
	return w.pos, nil
}

func (w *compressedWriter) alignUp() error {
	r := w.pos % w.p.cs
	if r == 0 {
		return nil
	}
	if err := writeZeros(w.bw, w.p.cs-r); err != nil {
		return err
	}
	w.pos += w.p.cs - r
	return nil
}

// addRef counts one more reference to each cluster that [off, off+n)
// touches; they are all in the window.
func (w *compressedWriter) addRef(off, n int64) {
	for c := off / w.p.cs; c <= (off+n-1)/w.p.cs; c++ {
		w.p.putRef(w.refs, c-w.win*w.p.refsPerBlock(), w.getRef(c)+1)
	}
}

func (w *compressedWriter) getRef(c int64) uint64 {
	i := c - w.win*w.p.refsPerBlock()
	switch w.p.refOrder {
	case 3:
		return uint64(w.refs[i])
	case 4:
		return uint64(binary.BigEndian.Uint16(w.refs[i*2:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(w.refs[i*4:]))
	default:
		return binary.BigEndian.Uint64(w.refs[i*8:])
	}
}

// Close writes the last L2 table, the L1 table, the remaining refcount
// blocks and the refcount table, then the header, and on a pipe copies the
// spooled body out after it.
func (w *compressedWriter) Close() error {
	if w.next != w.size {
		return fmt.Errorf("qcow2: blocks end at %d, the disk at %d", w.next, w.size)
	}
	if err := w.flushL2(); err != nil {
		return err
	}
	if err := w.alignUp(); err != nil {
		return err
	}
	p, cs, per := w.p, w.p.cs, w.p.refsPerBlock()
	end := w.pos / cs // first free cluster
	l1c := (p.l1Size*l1Entry + cs - 1) / cs
	// The tail: L1, refcount blocks from the window on, refcount table.
	var nb, rtc int64
	for {
		total := end + l1c + (nb - w.win) + rtc
		nb2 := max((total+per-1)/per, w.win+1)
		rtc2 := (nb2*refTableEntry + cs - 1) / cs
		if nb2 == nb && rtc2 == rtc {
			break
		}
		nb, rtc = nb2, rtc2
	}
	l1Off := end * cs
	rbOff := l1Off + l1c*cs
	rtOff := rbOff + (nb-w.win)*cs
	total := rtOff/cs + rtc

	// L1.
	var entry [8]byte
	for _, e := range w.l1 {
		binary.BigEndian.PutUint64(entry[:], e)
		if _, err := w.bw.Write(entry[:]); err != nil {
			return err
		}
	}
	if err := writeZeros(w.bw, l1c*cs-p.l1Size*l1Entry); err != nil {
		return err
	}
	// Refcount blocks: every tail cluster is used once.
	for b := w.win; b < nb; b++ {
		if b > w.win {
			clear(w.refs)
		}
		for c := max(b*per, end); c < min((b+1)*per, total); c++ {
			p.putRef(w.refs, c-b*per, 1)
		}
		if _, err := w.bw.Write(w.refs); err != nil {
			return err
		}
		w.reftable = append(w.reftable, uint64(rbOff+(b-w.win)*cs))
	}
	for _, off := range w.reftable {
		binary.BigEndian.PutUint64(entry[:], off)
		if _, err := w.bw.Write(entry[:]); err != nil {
			return err
		}
	}
	if err := writeZeros(w.bw, rtc*cs-int64(len(w.reftable))*refTableEntry); err != nil {
		return err
	}
	if err := w.bw.Flush(); err != nil {
		return err
	}
	hdr := p.header(l1Off, rtOff, rtc)
	if w.spool == nil {
		if err := w.out.Rewind(); err != nil {
			return err
		}
		if _, err := w.out.Write(hdr); err != nil {
			return err
		}
		return w.out.EndRewrite()
	}
	if _, err := w.out.Write(hdr); err != nil {
		return err
	}
	if err := w.out.Flush(); err != nil {
		return err
	}
	defer w.spool.Close()
	if _, err := w.spool.Seek(0, io.SeekStart); err != nil {
		return err
	}
	buf := make([]byte, format.OutputBufSize)
	_, err := io.CopyBuffer(struct{ io.Writer }{w.dst}, struct{ io.Reader }{w.spool}, buf)
	return err
}
