// Package vhd reads Microsoft Virtual Hard Disk images (qemu's "vpc"
// format), following the "Virtual Hard Disk Image Format Specification":
// fixed disks (the data followed by a 512-byte footer), dynamic disks (a
// block allocation table of sparse blocks) and differencing disks (a
// dynamic disk whose unwritten sectors come from a parent disk).
//
// Where qemu-img 7.2 decides something the specification leaves open (the
// virtual size, which footer copy counts), this reader decides the same.
package vhd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// Name is qemu's name for the format.
const Name = "vpc"

// Priority orders probing among the registered formats.
const Priority = 40

// The footer ("hard disk footer", fields in vhdspec): 512 bytes,
// big-endian, at the end of every image and also at offset 0 of dynamic
// and differencing disks. Its geometry is cylinders (u16), heads (u8)
// and sectors per track (u8).
const (
	cookie        = "conectix"
	footerHeads   = vhdspec.OffGeometry + 2
	footerSectors = vhdspec.OffGeometry + 3
)

// Disk types.
const (
	typeFixed        = 2
	typeDynamic      = 3
	typeDifferencing = 4
)

// Dynamic disk header: 1024 bytes at the footer's data offset.
const (
	dynHeaderSize = 1024
	dynCookie     = "cxsparse"

	dynTableOffset = 16  // uint64: file offset of the BAT
	dynMaxEntries  = 28  // uint32: entries in the BAT
	dynBlockSize   = 32  // uint32: bytes of guest data per block
	dynChecksum    = 36  // uint32: as the footer's, over the header
	dynParentID    = 40  // [16]byte: unique id of the parent's footer
	dynParentName  = 64  // [512]byte: parent file name, UTF-16BE
	dynLocators    = 576 // 8 parent locator entries of locatorSize bytes

	parentNameSize = 512
	numLocators    = 8
	locatorSize    = 24
)

// Parent locator entry fields, relative to the entry.
const (
	locPlatform   = 0  // [4]byte: platform code
	locDataLength = 8  // uint32: bytes of locator data
	locDataOffset = 16 // uint64: file offset of the locator data
)

// Platform codes of the parent locators this reader follows.
const (
	platformW2ru = "W2ru" // relative Windows path, UTF-16LE
	platformW2ku = "W2ku" // absolute Windows path, UTF-16LE
	platformMacX = "MacX" // file:// URL, UTF-8
)

const (
	sectorSize = 512
	// batUnused marks a block with no storage in the BAT.
	batUnused = 0xFFFFFFFF
	// maxSectors is qemu's limit of 2040 GiB.
	maxSectors = 0xff000000
	// maxLocatorBytes caps a parent locator: a Windows path holds at most
	// 32767 UTF-16 units.
	maxLocatorBytes = 65536
	// bitmapCacheBytes bounds the sector bitmaps of differencing disks
	// kept in memory.
	bitmapCacheBytes = 8 << 20
)

// creatorsUsingSize are the creator applications whose images take their
// size from the footer's current size rather than the CHS geometry (qemu's
// table: Hyper-V, qemu with force_size, Disk2vhd, XenConverter, XenServer).
var creatorsUsingSize = []string{"win ", "qem2", "d2v ", "CTXS", "tap\x00"}

func init() {
	format.Register(&format.Format{
		Name:     Name,
		Aliases:  []string{"vhd"},
		Priority: Priority,
		Probe:    Probe,
		Open:     format.OpensFile(Open),
	})
}

// Probe reports whether f carries the footer cookie at offset 0 (dynamic
// and differencing disks) or at the footer position at the end (fixed).
func Probe(f format.File) bool {
	if format.HasMagic(f, 0, cookie) {
		return true
	}
	off := footerPos(f.Size())
	return off >= 0 && format.HasMagic(f, off, cookie)
}

// footerPos returns where the trailing footer starts: qemu sees the file
// padded with zeros to whole sectors, so an image whose last sector is cut
// short (the 511-byte footer of old Virtual PC images) still has one.
func footerPos(size int64) int64 {
	return roundUp(size, sectorSize) - vhdspec.FooterSize
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

// Image is an open VHD image: of a differencing disk, this file's layer of
// the chain.
type Image struct {
	format.Base
	fileSize int64
	padSize  int64 // fileSize rounded up to whole sectors, read as zeros
	diskType uint32
	uniqueID [16]byte

	// Dynamic and differencing disks.
	blockSize  int64
	bitmapSize int64
	entries    int64       // BAT entries
	used       []usedBlock // the BAT's entries in use, by block index
	batOffset  int64
	parent     *format.Backing // differencing disks

	mu      sync.Mutex
	bitmaps map[uint32][]byte // sector bitmaps by block, differencing only
	cached  int64
}

// Open opens f as a VHD image; a differencing disk's parent is the
// chain's (format.Layer).
func Open(f format.File) (*Image, error) {
	img := &Image{Base: format.Base{File: f}, fileSize: f.Size(), padSize: roundUp(f.Size(), sectorSize)}
	if img.fileSize < len64(cookie) {
		return nil, fmt.Errorf("vpc: file of %d bytes: %w", img.fileSize, format.ErrWrongType)
	}
	footer := make([]byte, vhdspec.FooterSize)
	footerOff := int64(0)
	if err := img.readPadded(footer, 0, "footer"); err != nil {
		return nil, err
	}
	if string(footer[:len(cookie)]) != cookie {
		// Only a fixed disk lacks the copy at offset 0.
		footerOff = footerPos(img.fileSize)
		if footerOff < 0 {
			return nil, fmt.Errorf("vpc: file of %d bytes is too small for a footer: %w", img.fileSize, format.ErrWrongType)
		}
		if err := img.readPadded(footer, footerOff, "footer"); err != nil {
			return nil, err
		}
		if string(footer[:len(cookie)]) != cookie {
			return nil, fmt.Errorf("vpc: no %q cookie at offset 0 or %d: %w", cookie, footerOff, format.ErrWrongType)
		}
	}
	if err := checkSum(footer, vhdspec.OffChecksum, footerOff, "footer checksum"); err != nil {
		return nil, err
	}
	img.diskType = be32(footer[vhdspec.OffDiskType:])
	switch {
	case footerOff > 0 && img.diskType != typeFixed:
		return nil, format.Errorf(Name, "footer disk type", footerOff+vhdspec.OffDiskType,
			"type %d in the footer at the end of a file with no footer copy at offset 0 (only fixed disks, type %d, have none)", img.diskType, typeFixed)
	case footerOff == 0 && img.diskType != typeDynamic && img.diskType != typeDifferencing:
		return nil, format.Errorf(Name, "footer disk type", vhdspec.OffDiskType,
			"type %d in the footer at offset 0 (want dynamic %d or differencing %d)", img.diskType, typeDynamic, typeDifferencing)
	}
	copy(img.uniqueID[:], footer[vhdspec.OffUniqueID:])

	// The size rule of qemu's vpc_open: the CHS geometry, unless the
	// creator is known to use the current size or the geometry is the
	// maximum one (which cannot describe the real size).
	sectors := int64(be16(footer[vhdspec.OffGeometry:])) * int64(footer[footerHeads]) * int64(footer[footerSectors])
	sizeField, sizeOff := "footer disk geometry", footerOff+vhdspec.OffGeometry
	if sectors == vhdspec.MaxGeometry || usesCurrentSize(footer[vhdspec.OffCreatorApp:vhdspec.OffCreatorApp+4]) {
		cur := binary.BigEndian.Uint64(footer[vhdspec.OffCurrentSize:])
		sectors = int64(min(cur/sectorSize, maxSectors+1))
		sizeField, sizeOff = "footer current size", footerOff+vhdspec.OffCurrentSize
	}
	if sectors > maxSectors {
		return nil, format.Errorf(Name, sizeField, sizeOff, "disk of %d sectors exceeds the 2040 GiB limit", sectors)
	}
	img.Meta = format.Info{Format: Name, VirtualSize: sectors * sectorSize, Subformat: subformatName(img.diskType)}

	if img.diskType == typeFixed {
		if img.Size() > footerOff {
			return nil, format.Errorf(Name, sizeField, sizeOff,
				"fixed disk of %d bytes does not fit before its footer at offset %d", img.Size(), footerOff)
		}
		return img, nil
	}
	if err := img.openDynamic(footer); err != nil {
		return nil, err
	}
	return img, nil
}

func len64(s string) int64 { return int64(len(s)) }

// unusedOnly reports whether a piece of the BAT (a multiple of 4 bytes)
// holds only batUnused entries, all bits set: the first entry is, and
// every byte equals the one 4 bytes before it. The overlapping compare
// runs at memcmp speed, several times faster than a loop over entries.
func unusedOnly(b []byte) bool {
	return len(b) < 4 || be32(b) == batUnused && bytes.Equal(b[4:], b[:len(b)-4])
}

func usesCurrentSize(app []byte) bool {
	for _, c := range creatorsUsingSize {
		if string(app) == c {
			return true
		}
	}
	return false
}

// openDynamic reads the dynamic disk header and the BAT, and the parent
// locators of a differencing disk.
func (img *Image) openDynamic(footer []byte) error {
	hdrOff64 := binary.BigEndian.Uint64(footer[vhdspec.OffDataOffset:])
	if hdrOff64 > uint64(img.fileSize) || uint64(img.fileSize)-hdrOff64 < dynHeaderSize {
		return format.Errorf(Name, "footer data offset", vhdspec.OffDataOffset,
			"dynamic disk header at %d does not fit in a file of %d bytes", hdrOff64, img.fileSize)
	}
	hdrOff := int64(hdrOff64)
	hdr := make([]byte, dynHeaderSize)
	if err := format.ReadFull(img.File, hdr, hdrOff, Name, "dynamic disk header"); err != nil {
		return err
	}
	if string(hdr[:len(dynCookie)]) != dynCookie {
		return format.Errorf(Name, "dynamic disk header cookie", hdrOff, "got %q, want %q", hdr[:len(dynCookie)], dynCookie)
	}
	if err := checkSum(hdr, dynChecksum, hdrOff, "dynamic disk header checksum"); err != nil {
		return err
	}
	bs := int64(be32(hdr[dynBlockSize:]))
	if bs < sectorSize || bs&(bs-1) != 0 {
		return format.Errorf(Name, "block size", hdrOff+dynBlockSize, "%d is not a power of two of at least %d", bs, sectorSize)
	}
	img.blockSize = bs
	// One bit per sector, padded to whole sectors.
	img.bitmapSize = roundUp(bs/sectorSize/8, sectorSize)
	img.Meta.ClusterSize = bs

	entries := int64(be32(hdr[dynMaxEntries:]))
	if entries*bs < img.Size() {
		return format.Errorf(Name, "max table entries", hdrOff+dynMaxEntries,
			"%d blocks of %d bytes cover less than the disk's %d bytes", entries, bs, img.Size())
	}
	batOff64 := binary.BigEndian.Uint64(hdr[dynTableOffset:])
	if batOff64 > uint64(img.fileSize) {
		return format.Errorf(Name, "table offset", hdrOff+dynTableOffset, "BAT at %d is past the end of the file (%d bytes)", batOff64, img.fileSize)
	}
	img.batOffset = int64(batOff64)
	if err := format.CheckTable(Name, "table offset (BAT)", img.batOffset, entries*4, img.fileSize); err != nil {
		return err
	}
	img.entries = entries
	// Read in pieces and keep only the entries in use: a fresh process
	// pays for every page it faults in, and a whole table (2 MiB for an
	// empty 1 TiB disk) cost more than the rest of the open.
	raw := make([]byte, min(entries*4, 64<<10))
	for first := int64(0); first < entries; first += int64(len(raw) / 4) {
		chunk := raw[:min(int64(len(raw)), (entries-first)*4)]
		if err := format.ReadFull(img.File, chunk, img.batOffset+first*4, Name, "BAT"); err != nil {
			return err
		}
		if unusedOnly(chunk) {
			continue // the common case in a sparse disk
		}
		for k := range int64(len(chunk) / 4) {
			i, e := first+k, be32(chunk[4*k:])
			if e == batUnused {
				continue
			}
			img.used = append(img.used, usedBlock{index: uint32(i), sector: e})
			// qemu refuses an image any of whose blocks ends past the
			// end of the file, used or not: it means the file was
			// truncated.
			if int64(e)*sectorSize+img.bitmapSize+bs > img.padSize {
				return format.Errorf(Name, fmt.Sprintf("bat entry %d", i), img.batOffset+4*i,
					"block at sector %d (offset %d) ends past the end of the file (%d bytes)", e, int64(e)*sectorSize, img.fileSize)
			}
		}
	}
	if img.diskType == typeDifferencing {
		img.bitmaps = map[uint32][]byte{}
		return img.readParent(hdr, hdrOff)
	}
	return nil
}

// readParent reads how a differencing disk names its parent: its locators,
// the relative path first, else the parent's stored name.
func (img *Image) readParent(hdr []byte, hdrOff int64) error {
	var names []string
	for _, want := range []string{platformW2ru, platformW2ku, platformMacX} {
		for i := 0; i < numLocators; i++ {
			loc := hdr[dynLocators+i*locatorSize:][:locatorSize]
			if string(loc[locPlatform:locPlatform+4]) != want {
				continue
			}
			field := fmt.Sprintf("parent locator %d", i)
			at := hdrOff + dynLocators + int64(i*locatorSize)
			n := int64(be32(loc[locDataLength:]))
			off64 := binary.BigEndian.Uint64(loc[locDataOffset:])
			if n == 0 {
				continue
			}
			if n > maxLocatorBytes || off64 > uint64(img.fileSize) || n > img.fileSize-int64(off64) {
				return format.Errorf(Name, field, at, "%d bytes of locator data at offset %d do not fit in a file of %d bytes (or exceed %d)", n, off64, img.fileSize, maxLocatorBytes)
			}
			data := make([]byte, n)
			if err := format.ReadFull(img.File, data, int64(off64), Name, field+" data"); err != nil {
				return err
			}
			name, err := decodeLocator(want, data)
			if err != nil {
				return format.Errorf(Name, field, at, "%v", err)
			}
			if name != "" {
				names = append(names, name)
			}
		}
	}
	if len(names) == 0 {
		name := format.UTF16Z(hdr[dynParentName:dynParentName+parentNameSize], binary.BigEndian)
		if name == "" {
			return format.Errorf(Name, "parent locator", hdrOff+dynLocators, "differencing disk names no parent")
		}
		names = append(names, name)
	}
	want := [16]byte(hdr[dynParentID : dynParentID+16])
	img.parent = &format.Backing{Names: names, Verify: func(name string, parent format.Image) error {
		if p, ok := parent.(*Image); ok && p.uniqueID != want {
			return format.Errorf(Name, "parent unique id", hdrOff+dynParentID,
				"parent %s has unique id %x, the differencing disk expects %x", name, p.uniqueID, want)
		}
		return nil
	}}
	return nil
}

// Backing names a differencing disk's parent; nil for other disks.
func (img *Image) Backing() *format.Backing { return img.parent }

// decodeLocator turns a locator's data into a path for this host: Windows
// separators become slashes, a file:// URL loses its scheme.
func decodeLocator(platform string, data []byte) (string, error) {
	var s string
	switch platform {
	case platformW2ru, platformW2ku:
		if len(data)%2 != 0 {
			return "", fmt.Errorf("UTF-16 path of odd length %d", len(data))
		}
		s = format.UTF16Z(data, binary.LittleEndian)
	case platformMacX:
		s = strings.TrimRight(string(data), "\x00")
		if !strings.HasPrefix(s, "file://") {
			return "", fmt.Errorf("MacX locator %q is not a file:// URL", s)
		}
		s = strings.TrimPrefix(s, "file://")
		if strings.HasPrefix(s, "localhost/") {
			s = strings.TrimPrefix(s, "localhost")
		}
	}
	if platform == platformW2ru {
		s = strings.ReplaceAll(s, `\`, "/")
	}
	return s, nil
}

// checkSum verifies a footer or header checksum.
func checkSum(b []byte, field int, base int64, name string) error {
	if want, got := be32(b[field:]), vhdspec.Checksum(b, field); got != want {
		return format.Errorf(Name, name, base+int64(field), "stored %#08x, computed %#08x", want, got)
	}
	return nil
}

func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

// readPadded reads len(p) bytes at off as qemu does: the file is padded
// with zeros to a whole number of sectors, and nothing beyond.
func (img *Image) readPadded(p []byte, off int64, field string) error {
	if off < 0 || off > img.padSize || int64(len(p)) > img.padSize-off {
		return format.Errorf(Name, field, off, "%d bytes do not fit in a file of %d bytes", len(p), img.fileSize)
	}
	n := len(p)
	if off+int64(n) > img.fileSize {
		n = int(max(img.fileSize-off, 0))
		clear(p[n:])
	}
	if n == 0 {
		return nil
	}
	return format.ReadFull(img.File, p[:n], off, Name, field)
}

// usedBlock is a BAT entry in use: block index starts at sector.
type usedBlock struct{ index, sector uint32 }

// nextUsed returns the position in img.used of the first block at or
// after block bi, len(img.used) when there is none.
func (img *Image) nextUsed(bi int64) int {
	return sort.Search(len(img.used), func(k int) bool { return int64(img.used[k].index) >= bi })
}

// sector returns the BAT entry of block bi: where it starts, or batUnused.
func (img *Image) sector(bi int64) uint32 {
	if k := img.nextUsed(bi); k < len(img.used) && int64(img.used[k].index) == bi {
		return img.used[k].sector
	}
	return batUnused
}

// run is a stretch of guest bytes inside the image: stored in the file at
// host (when host >= 0), or not stored here at all.
type run struct {
	length int64
	host   int64 // -1 when the image stores nothing for the run
}

// runAt returns the run at guest offset off (0 <= off < size) within its
// block: a whole block for fixed and dynamic disks, a stretch of sectors
// sharing one bitmap bit for differencing disks.
func (img *Image) runAt(off int64) (run, error) {
	bi := off / img.blockSize
	inBlock := off % img.blockSize
	end := min(img.blockSize-inBlock, img.Size()-off)
	e := img.sector(bi)
	if e == batUnused {
		return run{length: end, host: -1}, nil
	}
	host := int64(e)*sectorSize + img.bitmapSize + inBlock
	if img.diskType != typeDifferencing {
		// qemu reads every sector of an allocated block of a dynamic
		// disk from the block, whatever its bitmap says.
		return run{length: end, host: host}, nil
	}
	bm, err := img.bitmap(uint32(bi))
	if err != nil {
		return run{}, err
	}
	s := inBlock / sectorSize
	set := bitSet(bm, s)
	n := sectorSize - inBlock%sectorSize
	for s++; n < end && bitSet(bm, s) == set; s++ {
		n += sectorSize
	}
	n = min(n, end)
	if !set {
		host = -1
	}
	return run{length: n, host: host}, nil
}

// bitSet reports bit s of a sector bitmap; sector 0 is the high bit of
// the first byte.
func bitSet(bm []byte, s int64) bool { return bm[s/8]&(0x80>>(s%8)) != 0 }

// bitmap returns the sector bitmap of allocated block bi.
func (img *Image) bitmap(bi uint32) ([]byte, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	if bm, ok := img.bitmaps[bi]; ok {
		return bm, nil
	}
	bm := make([]byte, img.bitmapSize)
	if err := img.readPadded(bm, int64(img.sector(int64(bi)))*sectorSize, fmt.Sprintf("sector bitmap of block %d", bi)); err != nil {
		return nil, err
	}
	if img.cached+img.bitmapSize > bitmapCacheBytes {
		clear(img.bitmaps)
		img.cached = 0
	}
	img.bitmaps[bi] = bm
	img.cached += img.bitmapSize
	return bm, nil
}

// Extent returns the run at off with one status and contiguous host
// offset, from the BAT and sector bitmaps alone.
func (img *Image) Extent(off int64) (format.Extent, error) { return img.ExtentTo(off, img.Size()) }

// ExtentTo is Extent with the run cut at limit. The sectors a differencing
// disk does not store are Unallocated: its parent's.
func (img *Image) ExtentTo(off, limit int64) (format.Extent, error) {
	size := img.Size()
	if off < 0 || off >= size {
		return format.Extent{}, fmt.Errorf("vpc: extent offset %d out of range [0,%d)", off, size)
	}
	limit = min(limit, size)
	if img.diskType == typeFixed {
		return format.Extent{Start: off, Length: limit - off, Status: format.Data, Offset: off, File: img.File, Preallocated: true}, nil
	}
	r, err := img.runAt(off)
	if err != nil {
		return format.Extent{}, err
	}
	if r.host >= 0 {
		// Blocks are never contiguous with each other: a bitmap lies
		// between them.
		return format.Extent{Start: off, Length: min(r.length, limit-off), Status: format.Data, Offset: r.host, File: img.File}, nil
	}
	// Extend over following runs that the image does not store either.
	end := off + r.length
	if img.diskType != typeDifferencing {
		// end is at a block boundary (or the disk's end): skip to the
		// next block in use.
		k := img.nextUsed(end / img.blockSize)
		end = size
		if k < len(img.used) {
			end = min(int64(img.used[k].index)*img.blockSize, size)
		}
	} else {
		for end < limit {
			next, err := img.runAt(end)
			if err != nil {
				return format.Extent{}, err
			}
			if next.host >= 0 {
				break
			}
			end += next.length
		}
	}
	e := format.Extent{Start: off, Length: min(end, limit) - off, Status: format.Unallocated, Offset: -1}
	if img.diskType == typeDynamic {
		// qemu reports unallocated blocks of a dynamic disk as zeros it
		// stores (present, zero), since it has no backing file.
		e.Status = format.Zero
	}
	return e, nil
}

// ReadAt reads guest bytes; a differencing disk reads the sectors it does
// not store as zeros (the chain reads them from the parent).
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, img.Size())
	if n == 0 {
		return 0, clipErr
	}
	if img.diskType == typeFixed {
		if err := format.ReadFull(img.File, p[:n], off, Name, "fixed disk data"); err != nil {
			return 0, err
		}
		return n, clipErr
	}
	done := 0
	for done < n {
		pos := off + int64(done)
		r, err := img.runAt(pos)
		if err != nil {
			return done, err
		}
		m := int(min(r.length, int64(n-done)))
		buf := p[done : done+m]
		if r.host >= 0 {
			if err := img.readPadded(buf, r.host, fmt.Sprintf("data of block %d", pos/img.blockSize)); err != nil {
				return done, err
			}
		} else {
			clear(buf)
		}
		done += m
	}
	return n, clipErr
}

// subformatName names a disk type as qemu-img's subformat option does.
func subformatName(t uint32) string {
	switch t {
	case typeFixed:
		return "fixed"
	case typeDynamic:
		return "dynamic"
	case typeDifferencing:
		return "differencing"
	}
	return ""
}
