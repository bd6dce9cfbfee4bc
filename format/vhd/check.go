package vhd

import (
	"bytes"
	"context"
	"fmt"
	"sort"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// Check verifies the structure of a VHD. qemu-img cannot check this
// format ("This image format does not support checks", exit 63); this is
// diskimg's own check, reported with qemu-img check's keys.
//
// Open has already verified the footer, the dynamic disk header and their
// checksums, and that every BAT entry's block lies inside the file. Check
// adds, for dynamic and differencing disks: the footer at the end of the
// file must be present, have a valid checksum and match the copy at
// offset 0; and no block may overlap another block, the footer copies,
// the dynamic disk header or the BAT.
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	r := &format.CheckResult{Format: Name, Filename: img.File.Name()}
	if img.diskType == typeFixed {
		return r, nil // one footer, verified by Open; no tables
	}
	head := make([]byte, vhdspec.FooterSize)
	if err := img.readPadded(head, 0, "footer copy"); err != nil {
		return nil, err
	}
	tailOff := footerPos(img.fileSize)
	tail := make([]byte, vhdspec.FooterSize)
	if err := img.readPadded(tail, tailOff, "footer"); err != nil {
		return nil, err
	}
	sumErr := checkSum(tail, vhdspec.OffChecksum, tailOff, "footer checksum")
	switch {
	case string(tail[:len(cookie)]) != cookie:
		r.BoundedCorruptf("footer at offset %d: no %q cookie (the footer at the end of the file is missing)", tailOff, cookie)
	case sumErr != nil:
		r.BoundedCorruptf("%v", sumErr)
	case !bytes.Equal(head, tail):
		r.BoundedCorruptf("footer at offset %d differs from its copy at offset 0 (first difference at byte %d)", tailOff, footerDiff(head, tail))
	}

	// Metadata the blocks must stay clear of.
	type span struct {
		start, end int64
		what       string
	}
	hdrOff := int64(be64(head[vhdspec.OffDataOffset:]))
	meta := []span{
		{0, vhdspec.FooterSize, "footer copy at offset 0"},
		{hdrOff, hdrOff + dynHeaderSize, fmt.Sprintf("dynamic disk header at offset %d", hdrOff)},
		{img.batOffset, img.batOffset + roundUp(img.entries*4, sectorSize), fmt.Sprintf("BAT at offset %d", img.batOffset)},
		{tailOff, tailOff + vhdspec.FooterSize, fmt.Sprintf("footer at offset %d", tailOff)},
	}
	type block struct {
		start, end int64
		entry      int
	}
	var blocks []block
	// Blocks that do not overlap fit in the file; more than that many
	// must overlap, and are not kept, so memory stays bounded by the file.
	limit := int(img.fileSize/(img.bitmapSize+img.blockSize)) + 1
	for k, u := range img.used {
		if k%(1<<20) == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		i, e := int(u.index), u.sector
		b := block{int64(e) * sectorSize, int64(e)*sectorSize + img.bitmapSize + img.blockSize, i}
		for _, m := range meta {
			if b.start < m.end && m.start < b.end {
				r.BoundedCorruptf("bat entry %d at offset %d: block at offset %d overlaps the %s", i, img.batOffset+4*int64(i), b.start, m.what)
			}
		}
		if len(blocks) == limit {
			r.BoundedCorruptf("bat entry %d at offset %d: more blocks allocated than a file of %d bytes holds; further overlaps not listed", i, img.batOffset+4*int64(i), img.fileSize)
			blocks = append(blocks, block{start: -1}) // reported once
			continue
		}
		if len(blocks) < limit {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) > limit {
		blocks = blocks[:limit]
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].start < blocks[j].start })
	for k := 1; k < len(blocks); k++ {
		// Compare with the furthest-reaching earlier block, so a long
		// chain of overlaps reports each block once.
		p, b := blocks[k-1], blocks[k]
		if b.start < p.end {
			r.BoundedCorruptf("bat entry %d at offset %d: block at offset %d overlaps the block of bat entry %d at offset %d",
				b.entry, img.batOffset+4*int64(b.entry), b.start, p.entry, p.start)
			if p.end > b.end {
				blocks[k] = p
			}
		}
	}
	return r, nil
}

func be64(b []byte) uint64 { return uint64(be32(b))<<32 | uint64(be32(b[4:])) }

func footerDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
