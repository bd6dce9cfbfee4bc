package vhdspec

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/diskimg/diskimg/format"
)

// RegisterWriter registers the writer wf of either format. Every block is
// compressed anyway: -c is accepted so qemu-img command lines port
// unchanged.
func RegisterWriter(wf format.WriterFormat) {
	wf.Compress = true
	wf.MaxSize = MaxSize
	format.RegisterWriter(&wf)
}

// Stream is what the two writers share: the output, the disk size and
// the guest offset the next block must start at.
type Stream struct {
	Out  *format.Output
	name string
	size int64
	next int64
}

// NewStream checks a writer's disk size and returns its stream on dst and
// a descriptor for the disk with cookie.
func NewStream(dst format.Target, name, cookie string, size int64) (*Stream, *Descriptor, error) {
	if size < 0 || size > MaxSize {
		return nil, nil, fmt.Errorf("%s: virtual size %d is out of range (0 to %d bytes)", name, size, int64(MaxSize))
	}
	out, err := format.NewOutput(dst, name)
	if err != nil {
		return nil, nil, err
	}
	d, err := NewDescriptor(cookie, size)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Stream{Out: out, name: name, size: size}, d, nil
}

// BlockSize is the formats' 2 MiB block.
func (s *Stream) BlockSize() int64 { return BlockSize }

// Encode keeps in b.Encoded, for a Data block, the records EncodeBlocks
// makes of it with compress.
func (s *Stream) Encode(b *format.Block, compress func(dst, block []byte) ([]byte, error)) error {
	if b.Status != format.Data {
		return nil
	}
	recs, err := EncodeBlocks(b, compress)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	b.Encoded = recs
	return nil
}

// Records checks that b is the next block of the disk, as the writer
// contract promises, and returns the records Encode made for it (none for
// a block without data).
func (s *Stream) Records(b *format.Block) ([]Record, error) {
	switch {
	case b.Start != s.next:
		return nil, fmt.Errorf("%s: block at %d arrived, expected %d", s.name, b.Start, s.next)
	case b.Length <= 0 || b.End() > s.size:
		return nil, fmt.Errorf("%s: block [%d,+%d) is empty or past the disk size %d", s.name, b.Start, b.Length, s.size)
	}
	s.next = b.End()
	if b.Status != format.Data {
		return nil, nil
	}
	recs, ok := b.Encoded.([]Record)
	if !ok {
		return nil, fmt.Errorf("%s: data block at %d was not encoded", s.name, b.Start)
	}
	b.Encoded = nil
	return recs, nil
}

// Put writes p to the output.
func (s *Stream) Put(p []byte) error {
	_, err := s.Out.Write(p)
	return err
}

// Complete checks, at Close, that the blocks covered the disk.
func (s *Stream) Complete() error {
	if s.next != s.size {
		return fmt.Errorf("%s: blocks end at %d, the disk at %d", s.name, s.next, s.size)
	}
	return nil
}

// DataBlocks counts, for `measure`, the 2 MiB blocks of o's layout that
// may hold data, and reports whether the disk's last block is one of them.
// Without a layout there are none.
func DataBlocks(o format.WriteOptions) (n uint64, last bool, err error) {
	if o.Layout == nil {
		return 0, false, nil
	}
	err = o.Layout.Align(o.Size, BlockSize)(func(e format.Extent) error {
		if e.Status == format.Data {
			n += CeilDiv(uint64(e.Length), BlockSize)
			last = e.End() == o.Size
		}
		return nil
	})
	return n, last, err
}

// Flusher is a deflate or zlib compressor.
type Flusher interface {
	Reset(io.Writer)
	io.Writer
	Flush() error
}

var errShortFlush = errors.New("compressor wrote nothing")

// SyncFlush appends block to dst compressed by a Flusher from pool,
// sync-flushed and not finished, so that the stream could go on.
func SyncFlush(pool *sync.Pool, dst, block []byte) ([]byte, error) {
	fw := pool.Get().(Flusher)
	defer pool.Put(fw)
	a := appender{b: dst}
	fw.Reset(&a)
	if _, err := fw.Write(block); err != nil {
		return nil, err
	}
	if err := fw.Flush(); err != nil {
		return nil, err
	}
	if len(a.b) == len(dst) {
		return nil, errShortFlush
	}
	return a.b, nil
}

// appender is an io.Writer appending to a slice.
type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error) { a.b = append(a.b, p...); return len(p), nil }
