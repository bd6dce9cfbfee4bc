package format

import (
	"fmt"
	"io"
)

// Output sizes: small writes (headers, tables, compressed clusters) gather
// in a buffer of OutputBufSize bytes; a write of at least outputDirect
// bytes (a data block) goes straight to the target, after the buffer.
const (
	OutputBufSize = 1 << 20
	outputDirect  = 64 << 10
)

// StartTarget returns dst as a RandomTarget when it can seek (a regular
// file), after checking that it is at its start: a writer lays the whole
// image out from offset 0. A pipe gives ok false and no error.
func StartTarget(dst Target, format string) (rt RandomTarget, ok bool, err error) {
	rt, ok = Seekable(dst)
	if !ok {
		return nil, false, nil
	}
	pos, err := rt.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, false, err
	}
	if pos != 0 {
		return nil, false, fmt.Errorf("%s: destination is at offset %d, not at its start", format, pos)
	}
	return rt, true, nil
}

// Output writes an image front to back: each byte at the lowest offset not
// yet written. Ranges skipped read as zeros: on a file a hole (a seek
// forward, never filled later), on a pipe written zeros. A skip is owed
// until the next write, so skips at the end of a rewrite (Rewind) leave
// what is there.
type Output struct {
	format string
	dst    Target
	rt     RandomTarget // nil on a pipe
	buf    []byte       // bytes for file offset at onward
	at     int64
	owed   int64 // zeros skipped after the buffered bytes
	wpos   int64 // the target's own offset; -1 when unknown
	// MinHole is the shortest skip left as a hole on a file; shorter ones
	// are written as zeros. 0 makes every skip a hole.
	MinHole int64
}

// NewOutput returns an Output on dst, which must be at its start (see
// StartTarget); format names the writer in errors.
func NewOutput(dst Target, format string) (*Output, error) {
	rt, _, err := StartTarget(dst, format)
	if err != nil {
		return nil, err
	}
	return &Output{format: format, dst: dst, rt: rt, buf: make([]byte, 0, OutputBufSize)}, nil
}

// Seekable reports whether the output is a file, where skips are holes
// and Rewind works.
func (o *Output) Seekable() bool { return o.rt != nil }

// Pos is the file offset of the next byte written.
func (o *Output) Pos() int64 { return o.at + int64(len(o.buf)) + o.owed }

// Write writes p after any skipped bytes.
func (o *Output) Write(p []byte) (int, error) {
	if err := o.settle(); err != nil {
		return 0, err
	}
	if len(o.buf)+len(p) > cap(o.buf) || len(p) >= outputDirect {
		if err := o.Flush(); err != nil {
			return 0, err
		}
	}
	if len(p) >= outputDirect {
		return len(p), o.put(p)
	}
	o.buf = append(o.buf, p...)
	return len(p), nil
}

// Skip advances n bytes that read as zeros.
func (o *Output) Skip(n int64) error {
	if n < 0 {
		return fmt.Errorf("%s: internal error: skip of %d bytes", o.format, n)
	}
	o.owed += n
	return nil
}

// SkipTo skips to file offset off, which must not be behind Pos.
func (o *Output) SkipTo(off int64) error {
	if off < o.Pos() {
		return fmt.Errorf("%s: write at file offset %d after offset %d was written", o.format, off, o.Pos())
	}
	return o.Skip(off - o.Pos())
}

// settle turns owed zeros into a hole or buffered zeros.
func (o *Output) settle() error {
	if o.owed == 0 {
		return nil
	}
	if o.rt != nil && o.owed >= o.MinHole {
		if err := o.Flush(); err != nil {
			return err
		}
		o.at += o.owed
		o.owed = 0
		return nil
	}
	n := o.owed
	o.owed = 0
	for n > 0 {
		k := min(n, ZerosLen)
		if _, err := o.Write(Zeros(k)); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// put writes p at the buffer's offset, seeking there first after a hole.
func (o *Output) put(p []byte) error {
	if o.wpos != o.at {
		if o.rt == nil {
			return fmt.Errorf("%s: internal error: seek on a stream", o.format)
		}
		if _, err := o.rt.Seek(o.at, io.SeekStart); err != nil {
			return err
		}
		o.wpos = o.at
	}
	n, err := o.dst.Write(p)
	o.wpos += int64(n)
	o.at += int64(n)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return err
}

// Flush writes the buffered bytes; skipped bytes after them stay owed.
func (o *Output) Flush() error {
	if len(o.buf) == 0 {
		return nil
	}
	err := o.put(o.buf)
	o.buf = o.buf[:0]
	return err
}

// Finish writes everything and makes the output length bytes long: on a
// file that ends in a hole, by setting its length.
func (o *Output) Finish(length int64) error {
	if err := o.SkipTo(length); err != nil {
		return err
	}
	if o.rt == nil || o.owed < o.MinHole {
		if err := o.settle(); err != nil {
			return err
		}
	}
	if err := o.Flush(); err != nil {
		return err
	}
	if o.owed > 0 {
		o.owed = 0
		return o.rt.Truncate(length)
	}
	return nil
}

// Rewind starts writing again at offset 0 of a file whose bytes were all
// written (Finish), over a range left as zeros: a header and tables
// written last. Flush ends the rewrite.
func (o *Output) Rewind() error {
	if o.rt == nil {
		return ErrNotSeekable
	}
	if err := o.Flush(); err != nil {
		return err
	}
	o.at, o.owed, o.wpos = 0, 0, -1
	return nil
}

// EndRewrite writes what was written since Rewind; zeros still owed stay
// what the file holds there.
func (o *Output) EndRewrite() error {
	o.owed = 0
	return o.Flush()
}
