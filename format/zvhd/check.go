package zvhd

import (
	"context"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// CheckFile checks the ZVHD file f as vhdspec.Check says. A descriptor
// Open refuses (checksum, sizes, the copy in the last slot) is an error.
// Then every record from the first slot to the copy is
// walked (§3.3): a record Open would refuse is a corruption, and the
// records after it cannot be located; so is a record whose payload does
// not look like a piece of the file's zlib stream (the first starts with
// the zlib header, each ends with a sync flush, §3.2). Bytes no reader
// looks at that the writers write as zeros (slot padding, the reserved
// descriptor bytes from 87 on, unused record header fields) give
// warnings. Records are read, not inflated: --verify compares contents.
// The records lie back to back, so the format leaks nothing.
func CheckFile(ctx context.Context, f format.File) (*format.CheckResult, error) {
	d, trailerOff, err := readDescriptors(f)
	if err != nil {
		return nil, err
	}
	maxBlk := int64(vhdspec.CeilDiv(d.OrigSize, vhdspec.BlockSize))
	c := vhdspec.NewCheck(Name, f, maxBlk)
	header, err := c.Slot(0, "descriptor")
	if err != nil {
		return nil, err
	}
	c.Reserved(header, vhdspec.OffVersion, 0, "descriptor")
	if _, err := c.Slot(trailerOff, "descriptor copy"); err != nil {
		return nil, err
	}
	prev := int64(-1)
	for off := int64(vhdspec.SlotSize); off < trailerOff; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r, l, err := nextRecord(f, off, trailerOff, maxBlk, prev)
		if err != nil {
			c.Corrupt("%s; the records after it cannot be located", c.Problem(err))
			break
		}
		rec, err := c.Read(off, l, "record")
		if err != nil {
			return nil, err
		}
		codec := vhdspec.CodecZlibNext
		if prev < 0 {
			codec = vhdspec.CodecZlibFirst
		}
		c.Record(rec, off, codec)
		c.R.AllocatedClusters++
		c.R.CompressedClusters++
		off, prev = off+l, r.block
	}
	return c.R, nil
}

// Check checks the image's structure as CheckFile does.
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	return CheckFile(ctx, img.File)
}
