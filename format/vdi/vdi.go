// Package vdi reads VirtualBox Disk Images (version 1.1), dynamic and
// static: a 512-byte little-endian header after a text pre-header, a block
// map of 32-bit entries, and 1 MiB data blocks.
//
// Like qemu, it reads images without a parent (no differencing or
// snapshot images) and with the standard block size only.
package vdi

import (
	"encoding/binary"
	"fmt"

	"github.com/diskimg/diskimg/format"
)

// Name is qemu's name for the format.
const Name = "vdi"

// Priority orders probing among the registered formats.
const Priority = 61

// Header: little-endian, at offset 0; 64 bytes of text ("<<< Oracle VM
// VirtualBox Disk Image >>>\n" or another tool's) come first.
const (
	headerSize = 512
	signature  = 0xbeda107f
	version11  = 0x00010001 // major 1, minor 1

	hdrSignature      = 0x40  // uint32
	hdrVersion        = 0x44  // uint32: major << 16 | minor
	hdrHeaderSize     = 0x48  // uint32: bytes of header from here on
	hdrImageType      = 0x4c  // uint32: one of the image types below
	hdrOffsetBmap     = 0x154 // uint32: file offset of the block map
	hdrOffsetData     = 0x158 // uint32: file offset of block 0
	hdrSectorSize     = 0x168 // uint32: must be 512
	hdrDiskSize       = 0x170 // uint64: virtual disk size in bytes
	hdrBlockSize      = 0x178 // uint32: bytes of guest data per block
	hdrBlockExtra     = 0x17c // uint32: bytes of private data before each block
	hdrBlocksInImage  = 0x180 // uint32: entries in the block map
	hdrBlocksAlloc    = 0x184 // uint32: blocks stored in the file
	hdrUUIDLink       = 0x1a8 // [16]byte: must be zero (no link)
	hdrUUIDParent     = 0x1b8 // [16]byte: must be zero (no parent)
	minHeaderSize     = 0x180 // the fields above, as qemu writes them
	uuidSize          = 16
	sectorSize        = 512
	defaultBlockSize  = 1 << 20
	maxBlocksInImage  = 0x3fffffff // qemu's limit: a block map of at most 4 GiB
	maxDiskSize       = maxBlocksInImage * defaultBlockSize
	bmapEntrySize     = 4
	imageTypeDynamic  = 1
	imageTypeStatic   = 2
	blockUnallocated  = 0xffffffff // never written: reads as zeros
	blockDiscarded    = 0xfffffffe // discarded: reads as zeros
	firstSpecialEntry = blockDiscarded
)

func init() {
	format.Register(&format.Format{
		Name:     Name,
		Priority: Priority,
		Probe:    Probe,
		Open:     func(f format.File, o *format.Opener) (format.Image, error) { return Open(f) },
	})
}

// Probe reports whether f carries the VDI signature after the pre-header.
func Probe(f format.File) bool {
	var b [4]byte
	n, _ := f.ReadAt(b[:], hdrSignature)
	return n == len(b) && binary.LittleEndian.Uint32(b[:]) == signature
}

// Image is an open VDI image.
type Image struct {
	format.Base
	blockSize  int64
	offsetData int64
	bmap       []uint32
	static     bool // blocks allocated at creation: qemu looks for holes under them
}

// Open opens f as a VDI image.
func Open(f format.File) (*Image, error) {
	if !Probe(f) {
		return nil, fmt.Errorf("vdi: no signature %#x at offset %d: %w", signature, hdrSignature, format.ErrWrongType)
	}
	hdr := make([]byte, headerSize)
	if err := format.ReadFull(f, hdr, 0, Name, "header"); err != nil {
		return nil, err
	}
	le32 := func(off int) uint32 { return binary.LittleEndian.Uint32(hdr[off:]) }
	fileSize := f.Size()

	if v := le32(hdrVersion); v != version11 {
		return nil, format.Errorf(Name, "version", hdrVersion, "%d.%d is not 1.1", v>>16, v&0xffff)
	}
	if hs := le32(hdrHeaderSize); hs < minHeaderSize || hs > headerSize-hdrHeaderSize {
		return nil, format.Errorf(Name, "header size", hdrHeaderSize, "%d is outside [%d, %d]", hs, minHeaderSize, headerSize-hdrHeaderSize)
	}
	it := le32(hdrImageType)
	if it != imageTypeDynamic && it != imageTypeStatic {
		return nil, format.Errorf(Name, "image type", hdrImageType, "%d is neither dynamic (%d) nor static (%d)", it, imageTypeDynamic, imageTypeStatic)
	}
	if ss := le32(hdrSectorSize); ss != sectorSize {
		return nil, format.Errorf(Name, "sector size", hdrSectorSize, "%d is not %d", ss, sectorSize)
	}
	bs := int64(le32(hdrBlockSize))
	if bs != defaultBlockSize {
		return nil, format.Errorf(Name, "block size", hdrBlockSize, "%d is not %d", bs, defaultBlockSize)
	}
	if extra := le32(hdrBlockExtra); extra != 0 {
		return nil, format.Errorf(Name, "block extra", hdrBlockExtra, "%d bytes of private data per block are not supported", extra)
	}
	for _, u := range []struct {
		off  int
		name string
	}{{hdrUUIDLink, "link UUID"}, {hdrUUIDParent, "parent UUID"}} {
		for _, c := range hdr[u.off : u.off+uuidSize] {
			if c != 0 {
				return nil, format.Errorf(Name, u.name, int64(u.off), "is set: differencing and snapshot images are not supported")
			}
		}
	}
	blocks := int64(le32(hdrBlocksInImage))
	if blocks > maxBlocksInImage {
		return nil, format.Errorf(Name, "blocks in image", hdrBlocksInImage, "%d exceeds %d", blocks, maxBlocksInImage)
	}
	if alloc := int64(le32(hdrBlocksAlloc)); alloc > blocks {
		return nil, format.Errorf(Name, "blocks allocated", hdrBlocksAlloc, "%d exceeds the %d blocks in the image", alloc, blocks)
	}
	disk := binary.LittleEndian.Uint64(hdr[hdrDiskSize:])
	if disk > maxDiskSize || disk > format.MaxVirtualSize {
		return nil, format.Errorf(Name, "disk size", hdrDiskSize, "%d bytes exceeds the %d-byte limit", disk, int64(maxDiskSize))
	}
	// qemu rounds an odd size (from VBoxManage convertfromraw) up to
	// whole sectors.
	size := (int64(disk) + sectorSize - 1) / sectorSize * sectorSize
	if size > blocks*bs {
		return nil, format.Errorf(Name, "disk size", hdrDiskSize, "%d bytes do not fit in %d blocks of %d bytes", size, blocks, bs)
	}
	offBmap := int64(le32(hdrOffsetBmap))
	if offBmap%sectorSize != 0 || offBmap < headerSize {
		return nil, format.Errorf(Name, "offset blocks", hdrOffsetBmap, "block map at %d is not a whole sector after the header", offBmap)
	}
	offData := int64(le32(hdrOffsetData))
	if offData%sectorSize != 0 || offData < headerSize {
		return nil, format.Errorf(Name, "offset data", hdrOffsetData, "data at %d is not a whole sector after the header", offData)
	}
	if err := format.CheckTable(Name, "offset blocks (block map)", offBmap, blocks*bmapEntrySize, fileSize); err != nil {
		return nil, err
	}
	raw := make([]byte, blocks*bmapEntrySize)
	if err := format.ReadFull(f, raw, offBmap, Name, "block map"); err != nil {
		return nil, err
	}
	img := &Image{Base: format.Base{File: f, Meta: format.Info{Format: Name, VirtualSize: size, ClusterSize: bs}},
		blockSize: bs, offsetData: offData, bmap: make([]uint32, blocks), static: it == imageTypeStatic}
	for i := range img.bmap {
		e := binary.LittleEndian.Uint32(raw[bmapEntrySize*i:])
		img.bmap[i] = e
		if e >= firstSpecialEntry {
			continue
		}
		// The guest part of the block must be stored in the file.
		guest := min(bs, size-int64(i)*bs)
		if guest <= 0 {
			continue // past the disk: never read
		}
		if host := offData + int64(e)*bs; host > fileSize-guest {
			return nil, format.Errorf(Name, fmt.Sprintf("block map entry %d", i), offBmap+bmapEntrySize*int64(i),
				"block %d at offset %d extends past the end of the file (%d bytes)", e, host, fileSize)
		}
	}
	return img, nil
}

// runAt returns the run from off, ending at or before limit, of blocks
// that are all unallocated, all discarded, or allocated and stored
// contiguously. host is the file offset of off, -1 when not stored.
func (img *Image) runAt(off, limit int64) (entry uint32, host, length int64) {
	bi := off / img.blockSize
	entry = img.bmap[bi]
	end := (bi + 1) * img.blockSize
	for end < limit {
		next := img.bmap[end/img.blockSize]
		if entry >= firstSpecialEntry {
			if next != entry {
				break
			}
		} else if next != entry+uint32(end/img.blockSize-bi) {
			break
		}
		end += img.blockSize
	}
	host = -1
	if entry < firstSpecialEntry {
		host = img.offsetData + int64(entry)*img.blockSize + off%img.blockSize
	}
	return entry, host, min(end, limit) - off
}

// Extent returns the run at off with one status and contiguous host
// offset, from the block map alone.
func (img *Image) Extent(off int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, fmt.Errorf("vdi: extent offset %d out of range [0,%d)", off, img.Size())
	}
	entry, host, n := img.runAt(off, img.Size())
	e := format.Extent{Start: off, Length: n, Status: format.Data, Offset: host, File: img.File, Preallocated: img.static}
	// VDI has no backing files, so qemu counts a block the map does not
	// store as present and zero, not as unallocated.
	if entry == blockUnallocated || entry == blockDiscarded {
		e.Status, e.File = format.Zero, nil
	}
	return e, nil
}

// ReadAt reads guest bytes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, img.Size())
	if n == 0 {
		return 0, clipErr
	}
	done := 0
	for done < n {
		pos := off + int64(done)
		_, host, length := img.runAt(pos, off+int64(n))
		buf := p[done : done+int(length)]
		if host < 0 {
			clear(buf)
		} else if err := format.ReadFull(img.File, buf, host, Name, fmt.Sprintf("data block of guest offset %d", pos)); err != nil {
			return done, err
		}
		done += len(buf)
	}
	return n, clipErr
}
