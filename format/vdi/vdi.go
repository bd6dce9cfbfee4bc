// Package vdi reads VirtualBox Disk Images (version 1.1), dynamic, static
// and differencing: a 512-byte little-endian header after a text
// pre-header, a block map of 32-bit entries, and 1 MiB data blocks.
//
// A differencing image (VirtualBox snapshots; qemu reads none) names its
// parent only by UUID, so the parent comes from the user
// (format.Policy.Parents, --parent) and the chain layer checks its UUID.
// Only the standard block size is read, as by qemu.
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
	hdrUUIDCreate     = 0x188 // [16]byte: the image's UUID
	hdrUUIDModify     = 0x198 // [16]byte: changed when the image is written
	hdrUUIDLink       = 0x1a8 // [16]byte: the parent's UUID; zero without a parent
	hdrUUIDParent     = 0x1b8 // [16]byte: the parent's UUID of modification; zero without a parent
	minHeaderSize     = 0x180 // the fields above, as qemu writes them
	uuidSize          = 16
	sectorSize        = 512
	defaultBlockSize  = 1 << 20
	maxBlocksInImage  = 0x3fffffff // qemu's limit: a block map of at most 4 GiB
	maxDiskSize       = maxBlocksInImage * defaultBlockSize
	bmapEntrySize     = 4
	imageTypeDynamic  = 1
	imageTypeStatic   = 2
	imageTypeUndo     = 3 // VirtualBox's undo images, long gone
	imageTypeDiff     = 4
	blockUnallocated  = 0xffffffff // never written: zeros, or a differencing image's parent
	blockDiscarded    = 0xfffffffe // discarded: reads as zeros
	firstSpecialEntry = blockDiscarded
)

func init() {
	format.Register(&format.Format{Name: Name, Priority: Priority, Probe: Probe, Open: format.OpensFile(Open)})
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
	uuid       uuid // uuidCreate: a differencing child's link UUID names it
	link       uuid // the parent's UUID; zero without a parent
	static     bool // blocks allocated at creation: qemu looks for holes under them
}

// uuid is a VirtualBox UUID as stored: the first three fields
// little-endian, as VirtualBox shows and names files ({uuid}.vdi).
type uuid [uuidSize]byte

func (u uuid) String() string {
	return fmt.Sprintf("{%02x%02x%02x%02x-%02x%02x-%02x%02x-%x-%x}", u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6], u[8:10], u[10:])
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
	switch it {
	case imageTypeDynamic, imageTypeStatic, imageTypeDiff:
	case imageTypeUndo:
		return nil, format.Errorf(Name, "image type", hdrImageType, "undo VDI (type %d) not supported", it)
	default:
		return nil, format.Errorf(Name, "image type", hdrImageType, "%d is not dynamic (%d), static (%d) or differencing (%d)", it, imageTypeDynamic, imageTypeStatic, imageTypeDiff)
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
	link := uuid(hdr[hdrUUIDLink:])
	switch {
	case it == imageTypeDiff && link == uuid{}:
		return nil, format.Errorf(Name, "image type", hdrImageType, "differencing VDI whose link UUID is zero: it names no parent")
	case it != imageTypeDiff:
		// As qemu, which reads no differencing VDI.
		for _, u := range []struct {
			off  int
			name string
		}{{hdrUUIDLink, "link UUID"}, {hdrUUIDParent, "parent UUID"}} {
			if !format.IsZero(hdr[u.off : u.off+uuidSize]) {
				return nil, format.Errorf(Name, u.name, int64(u.off), "is set in an image of type %d, which has no parent", it)
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
		blockSize: bs, offsetData: offData, bmap: make([]uint32, blocks), uuid: uuid(hdr[hdrUUIDCreate:]),
		static: it == imageTypeStatic}
	if it == imageTypeDiff {
		img.link = link
		img.Meta.Subformat = "differencing"
		// qemu shows no format-specific data for VDI; it reads no
		// differencing VDI either, whose parent the user must find.
		img.Meta.Specific = &Specific{UUID: img.uuid.String(), ParentUUID: link.String()}
	}
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

// Specific is the format-specific data of a differencing VDI.
type Specific struct {
	UUID       string `json:"uuid"`
	ParentUUID string `json:"parent-uuid"`
}

// Backing names a differencing image's parent by its UUID alone: the
// chain takes it from the parents the user gave and checks it here.
func (img *Image) Backing() *format.Backing {
	if img.link == (uuid{}) {
		return nil
	}
	return &format.Backing{Format: Name, ID: "UUID " + img.link.String(),
		Verify: func(name string, parent format.Image) error {
			p, ok := parent.(*Image)
			if !ok {
				return fmt.Errorf("vdi: parent %s is a %s image; a differencing VDI's parent %s is a VDI", name, parent.Info().Format, img.link)
			}
			if p.uuid != img.link {
				return format.Errorf(Name, "link UUID", hdrUUIDLink, "parent %s has UUID %s, the differencing VDI's parent is %s", name, p.uuid, img.link)
			}
			return nil
		}}
}

// Extent returns the run at off with one status and contiguous host
// offset, from the block map alone.
func (img *Image) Extent(off int64) (format.Extent, error) { return img.ExtentTo(off, img.Size()) }

// ExtentTo is Extent with the run cut at limit.
func (img *Image) ExtentTo(off, limit int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, fmt.Errorf("vdi: extent offset %d out of range [0,%d)", off, img.Size())
	}
	entry, host, n := img.runAt(off, min(limit, img.Size()))
	e := format.Extent{Start: off, Length: n, Status: format.Data, Offset: host, File: img.File, Preallocated: img.static}
	switch {
	case entry == blockUnallocated && img.link != uuid{}:
		// A differencing image's parent holds the block.
		e.Status, e.File = format.Unallocated, nil
	case entry == blockUnallocated || entry == blockDiscarded:
		// Without a parent, qemu counts a block the map does not store
		// as present and zero, not as unallocated.
		e.Status, e.File = format.Zero, nil
	}
	return e, nil
}

// ReadAt reads guest bytes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	return format.ReadRuns(p, off, img.Size(), img.ExtentTo, readStored)
}

var readStored = format.ReadStored(Name, "data block")
