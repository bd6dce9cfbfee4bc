package vhdx

import (
	"context"
	"encoding/binary"
	"math"

	"github.com/diskimg/diskimg/format"
)

// Check re-reads the image's metadata and checks it as CheckFile does.
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	return CheckFile(ctx, img.File)
}

// CheckFile checks the structure of the VHDX file f as qemu-img check
// does, without opening it as an image first: Open refuses a file whose
// BAT points past its end, while qemu-img check (which opens with
// BDRV_O_CHECK) reports such entries as corruptions, and so does this.
//
// The headers, log, region table and metadata are read as Open reads
// them: a file whose current header, log or metadata is unusable is an
// error (qemu-img cannot open it for checking either). Then, like qemu's
// vhdx_co_check, every BAT entry in the fully present state must name a
// whole block inside the file, and a payload block must not overlap the
// header section, the log, the BAT, the metadata or another region.
// diskimg also reports a first region table that is corrupt while the
// second is intact (qemu-img refuses to open such a file); a corrupt
// non-current header or second region table is the state a torn update
// leaves and is not a corruption, as for qemu.
func CheckFile(ctx context.Context, f format.File) (*format.CheckResult, error) {
	l, err := readLayout(f)
	if err != nil {
		return nil, err
	}
	r := &format.CheckResult{Format: Name, Filename: f.Name()}
	if err := checkRegionTable1(f, r); err != nil {
		return nil, err
	}
	fileSize := f.Size()
	img := &Image{Base: format.Base{File: f}}
	if err := img.readMetadata(l.meta); err != nil {
		return nil, err
	}
	blocks := (img.Size() + img.blockSize - 1) / img.blockSize
	var entries int64
	if blocks > 0 {
		entries = blocks + (blocks-1)/img.chunkRatio
	}
	length := entries * batEntrySize
	if length > l.bat.end-l.bat.start {
		return nil, errorf("BAT region", l.bat.start, "%d entries for a %d-byte disk need %d bytes, the region has %d", entries, img.Size(), length, l.bat.end-l.bat.start)
	}
	if err := format.CheckTable(Name, "BAT", l.bat.start, length, fileSize); err != nil {
		return nil, err
	}
	// Read the BAT in pieces, so a large one costs little memory.
	const chunk = 64 << 10 // entries per read
	buf := make([]byte, min(entries, chunk)*batEntrySize)
	for first := int64(0); first < entries; first += chunk {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := min(entries-first, chunk)
		b := buf[:n*batEntrySize]
		if err := format.ReadFull(f, b, l.bat.start+first*batEntrySize, Name, "BAT"); err != nil {
			return nil, err
		}
		for k := range n {
			i := first + k
			e := binary.LittleEndian.Uint64(b[k*batEntrySize:])
			if st := e & batStateMask; st != blockFullyPresent && (st != blockPartiallyPresent || !img.diff) {
				continue
			}
			at := l.bat.start + i*batEntrySize
			off := e & batOffsetMask
			if off > math.MaxInt64-uint64(img.blockSize) || int64(off)+img.blockSize > fileSize {
				r.BoundedCorruptf("BAT entry %d at offset %d: block at offset %d extends past the end of the file (%d bytes)", i, at, off, fileSize)
				continue
			}
			if (i+1)%(img.chunkRatio+1) == 0 {
				continue // a sector bitmap block: no region check, as in qemu
			}
			for _, q := range l.regions {
				if int64(off) < q.end && q.start < int64(off)+img.blockSize {
					r.BoundedCorruptf("BAT entry %d at offset %d: payload block at offset %d overlaps the %s at [%d, %d)", i, at, off, q.name, q.start, q.end)
					break
				}
			}
		}
	}
	return r, nil
}

// checkRegionTable1 reports a first region table that fails its signature
// or checksum: qemu-img reads only that copy, so it cannot open the file.
func checkRegionTable1(f format.File, r *format.CheckResult) error {
	b := make([]byte, regionTableSize)
	if err := format.ReadFull(f, b, regionTable1Offset, Name, "region table"); err != nil {
		return err
	}
	switch {
	case string(b[:4]) != regionSignature:
		r.BoundedCorruptf("region table 1 at offset %d: signature %q is not %q", regionTable1Offset, b[:4], regionSignature)
	case binary.LittleEndian.Uint32(b[rtChecksum:]) != checksum(b, rtChecksum):
		r.BoundedCorruptf("region table 1 at offset %d: CRC-32C %#08x does not match the table (%#08x)", regionTable1Offset,
			binary.LittleEndian.Uint32(b[rtChecksum:]), checksum(b, rtChecksum))
	}
	return nil
}
