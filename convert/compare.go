package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/diskimg/diskimg/format"
)

// compareSector is qemu-img compare's granularity: it reports the start
// of the first 512-byte sector that differs.
const compareSector = 512

const compareChunk = 1 << 20

// Compare compares the guest contents of a and b as `qemu-img compare`
// does without -s: when the sizes differ the common part is compared and
// the rest of the larger image must read as zeros. Ranges that both extent
// maps call zero or unallocated are skipped without reading, so comparing
// two empty images of any size is instant. firstDiff is the offset qemu-img
// prints ("Content mismatch at offset N!"): the start of the first
// differing 512-byte sector; it is -1 when the images are identical.
func Compare(ctx context.Context, a, b format.Image) (identical bool, firstDiff int64, err error) {
	ca, cb := &cursor{img: a}, &cursor{img: b}
	bufA, bufB := make([]byte, compareChunk), make([]byte, compareChunk)
	common := min(a.Size(), b.Size())
	for pos := int64(0); pos < common; {
		if err := ctx.Err(); err != nil {
			return false, -1, err
		}
		ea, err := ca.at(pos)
		if err != nil {
			return false, -1, err
		}
		eb, err := cb.at(pos)
		if err != nil {
			return false, -1, err
		}
		end := min(ea.End(), eb.End(), common)
		da, db := ea.Status == format.Data, eb.Status == format.Data
		if !da && !db {
			pos = end
			continue
		}
		end = min(end, pos+compareChunk)
		n := end - pos
		if da {
			if err := readFull(a, bufA[:n], pos, "first"); err != nil {
				return false, -1, err
			}
		} else {
			clear(bufA[:n])
		}
		if db {
			if err := readFull(b, bufB[:n], pos, "second"); err != nil {
				return false, -1, err
			}
		} else {
			clear(bufB[:n])
		}
		if !bytes.Equal(bufA[:n], bufB[:n]) {
			i := int64(0)
			for bufA[i] == bufB[i] {
				i++
			}
			return false, sectorOf(pos + i), nil
		}
		pos = end
	}
	// The rest of the larger image must be zeros.
	big, c, which := a, ca, "first"
	if b.Size() > a.Size() {
		big, c, which = b, cb, "second"
	}
	for pos := common; pos < big.Size(); {
		if err := ctx.Err(); err != nil {
			return false, -1, err
		}
		e, err := c.at(pos)
		if err != nil {
			return false, -1, err
		}
		if e.Status != format.Data {
			pos = e.End()
			continue
		}
		end := min(e.End(), pos+compareChunk)
		n := end - pos
		if err := readFull(big, bufA[:n], pos, which); err != nil {
			return false, -1, err
		}
		if !format.IsZero(bufA[:n]) {
			i := int64(0)
			for bufA[i] == 0 {
				i++
			}
			return false, sectorOf(pos + i), nil
		}
		pos = end
	}
	return true, -1, nil
}

func sectorOf(off int64) int64 { return off / compareSector * compareSector }

func readFull(img format.Image, p []byte, off int64, which string) error {
	n, err := img.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("reading %s image at offset %d: %w", which, off+int64(n), err)
}

// cursor caches the extent around the current position of a walk.
type cursor struct {
	img format.Image
	cur format.Extent
}

func (c *cursor) at(pos int64) (format.Extent, error) {
	if c.cur.Length > 0 && pos >= c.cur.Start && pos < c.cur.End() {
		return c.cur, nil
	}
	e, err := c.img.Extent(pos)
	if err != nil {
		return e, err
	}
	if e.Start != pos || e.Length <= 0 || e.Length > c.img.Size()-pos {
		return e, fmt.Errorf("%s: extent map returned [%d,+%d) at offset %d", c.img.Info().Format, e.Start, e.Length, pos)
	}
	c.cur = e
	return e, nil
}

// Measure answers `qemu-img measure -O <w>` for converting src with the
// given options: the bytes the output file needs, and needs when fully
// allocated. A nil src measures a new empty image of opts' size, as
// qemu-img measure --size does (pass the size in size).
func Measure(src format.Image, size int64, w *format.WriterFormat, opts Options) (format.Measurement, error) {
	if w.Measure == nil {
		return format.Measurement{}, fmt.Errorf("%s: measure is not supported for this format", w.Name)
	}
	wo := format.WriteOptions{Size: size, Options: opts.WriterOptions, Compress: opts.Compress}
	if src != nil {
		wo.Size = src.Size()
		wo.Layout = format.LayoutOf(src)
	}
	if err := w.Validate(wo); err != nil {
		return format.Measurement{}, err
	}
	return w.Measure(wo)
}

// StatusMismatch returns the first offset, below the smaller size, where
// a and b's extent maps disagree, as qemu-img compare -s compares block
// status: a range's status (data, zero or unallocated: qemu's data, zero
// and present flags), whether it has a host offset (qemu's offset-valid:
// not for compressed data or unallocated ranges), and whether its run
// reaches the end of the image (qemu's EOF flag, which makes a raw file
// that is data to its end differ at 0 from a qcow2 whose last cluster is
// not allocated). -1 when they agree everywhere.
func StatusMismatch(ctx context.Context, a, b format.Image) (int64, error) {
	ca, cb := &cursor{img: a}, &cursor{img: b}
	common := min(a.Size(), b.Size())
	for pos := int64(0); pos < common; {
		if err := ctx.Err(); err != nil {
			return -1, err
		}
		ea, err := ca.at(pos)
		if err != nil {
			return -1, err
		}
		eb, err := cb.at(pos)
		if err != nil {
			return -1, err
		}
		za, da := ea.MapFlags()
		zb, db := eb.MapFlags()
		if ea.Status == format.Unallocated != (eb.Status == format.Unallocated) || za != zb || da != db || (ea.Offset < 0) != (eb.Offset < 0) || (ea.End() == a.Size()) != (eb.End() == b.Size()) {
			return pos, nil
		}
		pos = min(ea.End(), eb.End())
	}
	return -1, nil
}
