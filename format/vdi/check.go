package vdi

import (
	"context"
	"encoding/binary"

	"github.com/diskimg/diskimg/format"
)

// Check verifies the block map as qemu-img check does: every allocated
// entry names a block below blocks-in-image, no block is named twice, and
// the header's blocks-allocated matches the entries that are allocated.
// Like qemu it reports nothing else (qemu's JSON carries check-errors and
// corruptions only).
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	r := &format.CheckResult{Format: Name, Filename: img.File.Name()}
	var hdr [hdrBlocksAlloc + 4]byte
	if err := format.ReadFull(img.File, hdr[:], 0, Name, "header"); err != nil {
		return nil, err
	}
	offBmap := int64(binary.LittleEndian.Uint32(hdr[hdrOffsetBmap:]))
	want := binary.LittleEndian.Uint32(hdr[hdrBlocksAlloc:])
	blocks := uint32(len(img.bmap))

	// owner[b] is 1 + the map entry that names block b, 0 when none does.
	owner := make([]uint32, len(img.bmap))
	var allocated uint32
	for i, e := range img.bmap {
		if i%(1<<20) == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if e >= firstSpecialEntry {
			continue
		}
		at := offBmap + bmapEntrySize*int64(i)
		if e >= blocks {
			r.BoundedCorruptf("block map entry %d at offset %d: block index %d is not below blocks in image (%d)", i, at, e, blocks)
			continue
		}
		allocated++
		if prev := owner[e]; prev != 0 {
			r.BoundedCorruptf("block map entry %d at offset %d: block %d is also used by block map entry %d", i, at, e, prev-1)
			continue
		}
		owner[e] = uint32(i) + 1
	}
	if allocated != want {
		r.BoundedCorruptf("blocks allocated at offset %d: header says %d, the block map holds %d", hdrBlocksAlloc, want, allocated)
	}
	return r, nil
}
