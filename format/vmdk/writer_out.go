package vmdk

import (
	"fmt"
	"io"

	"github.com/diskimg/diskimg/format"
)

// Output buffering: small writes (headers, tables, markers, compressed
// grains) gather in a buffer; writes of at least directBytes go straight
// to the target. On a file, zero runs of at least holeBytes are skipped
// (a hole), shorter ones written.
const (
	outBufBytes = 1 << 20
	directBytes = 64 << 10
	holeBytes   = 64 << 10
)

// wout writes the output front to back: buffered bytes, holes skipped by
// seeking forward on a file, zeros written on a pipe.
type wout struct {
	dst   format.Target
	rt    format.RandomTarget // nil on a pipe
	buf   []byte
	end   int64 // file offset just past the buffered bytes
	zpend int64 // zeros owed after them
	seek  bool  // the file position is not at end-len(buf)
}

func newWout(dst format.Target) (*wout, error) {
	o := &wout{dst: dst, buf: make([]byte, 0, outBufBytes)}
	if rt, ok := format.Seekable(dst); ok {
		pos, err := rt.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		if pos != 0 {
			return nil, fmt.Errorf("vmdk: destination is at offset %d, not at its start", pos)
		}
		o.rt = rt
	}
	return o, nil
}

// pos is the file offset of the next byte written.
func (o *wout) pos() int64 { return o.end + o.zpend }

// zeros owes n zero bytes.
func (o *wout) zeros(n int64) error {
	if n < 0 {
		return fmt.Errorf("vmdk: writer went back %d bytes", -n)
	}
	o.zpend += n
	return nil
}

// settle turns owed zeros into a hole or buffered zeros.
func (o *wout) settle() error {
	if o.zpend == 0 {
		return nil
	}
	if o.rt != nil && o.zpend >= holeBytes {
		if err := o.flush(); err != nil {
			return err
		}
		o.end += o.zpend
		o.zpend = 0
		o.seek = true
		return nil
	}
	for o.zpend > 0 {
		k := min(o.zpend, format.ZerosLen)
		if err := o.append(format.Zeros(k)); err != nil {
			return err
		}
		o.zpend -= k
	}
	return nil
}

// append buffers p, without owed zeros.
func (o *wout) append(p []byte) error {
	if len(o.buf)+len(p) > cap(o.buf) || len(p) >= directBytes {
		if err := o.flush(); err != nil {
			return err
		}
	}
	if len(p) >= directBytes {
		o.end += int64(len(p))
		return o.raw(p)
	}
	o.buf = append(o.buf, p...)
	o.end += int64(len(p))
	return nil
}

// write writes p after any owed zeros.
func (o *wout) write(p []byte) error {
	if err := o.settle(); err != nil {
		return err
	}
	return o.append(p)
}

// raw writes p at the file position the buffer ended at (after flush).
func (o *wout) raw(p []byte) error {
	if o.seek {
		if _, err := o.rt.Seek(o.end-int64(len(p)), io.SeekStart); err != nil {
			return err
		}
		o.seek = false
	}
	_, err := o.dst.Write(p)
	return err
}

// flush writes the buffer.
func (o *wout) flush() error {
	if len(o.buf) == 0 {
		return nil
	}
	err := o.raw(o.buf)
	o.buf = o.buf[:0]
	return err
}

// finish writes everything and makes the output length bytes long.
func (o *wout) finish(length int64) error {
	if length < o.end {
		return fmt.Errorf("vmdk: output of %d bytes longer than its layout's %d", o.end, length)
	}
	o.zpend = length - o.end
	if o.rt == nil {
		if err := o.settle(); err != nil {
			return err
		}
		return o.flush()
	}
	if o.zpend < holeBytes {
		if err := o.settle(); err != nil {
			return err
		}
	}
	if err := o.flush(); err != nil {
		return err
	}
	if o.zpend > 0 {
		o.zpend = 0
		return o.rt.Truncate(length)
	}
	return nil
}

// rewind starts writing again at offset 0 of a file whose bytes were all
// written (finish), over a region left as a hole: a header and tables
// written last.
func (o *wout) rewind() error {
	if o.rt == nil {
		return format.ErrNotSeekable
	}
	if err := o.flush(); err != nil {
		return err
	}
	o.end, o.zpend, o.seek = 0, 0, true
	return nil
}

// endRewrite flushes what rewind's caller wrote; zeros still owed stay
// the hole they fall in.
func (o *wout) endRewrite() error {
	o.zpend = 0
	return o.flush()
}
