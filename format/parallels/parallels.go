// Package parallels reads Parallels expandable images, qemu's "parallels"
// format (.hds; docs/interop/parallels.txt in qemu's tree): a 64-byte
// little-endian header, a catalog (BAT) of 32-bit cluster offsets, and the
// clusters. Both magics are read: "WithoutFreeSpace", whose catalog counts
// sectors, and "WithouFreSpacExt", whose catalog counts clusters. The
// format extension (dirty bitmaps) is validated as qemu-img does before it
// reads the image, and otherwise not used.
package parallels

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/diskimg/diskimg/format"
)

// Name is qemu's name for the format.
const Name = "parallels"

// Priority orders probing among the registered formats.
const Priority = 63

// Header layout, little-endian.
const (
	headerSize   = 64
	magicSectors = "WithoutFreeSpace" // catalog entries count sectors
	magicExt     = "WithouFreSpacExt" // catalog entries count clusters
	magicLen     = 16
	version      = 2

	hdrVersion    = 16 // uint32: must be 2
	hdrHeads      = 20 // uint32: geometry, unused
	hdrCylinders  = 24 // uint32: geometry, unused
	hdrTracks     = 28 // uint32: sectors per cluster
	hdrBATEntries = 32 // uint32: catalog entries
	hdrNbSectors  = 36 // uint64: disk size in sectors (low 32 bits only with magicSectors)
	hdrInUse      = 44 // uint32: inUseMagic while open read-write
	hdrDataOff    = 48 // uint32: first data sector
	hdrFlags      = 52 // uint32
	hdrExtOff     = 56 // uint64: format extension cluster, in sectors

	inUseMagic  = 0x746f6e59 // opened read-write and not closed since
	closedMagic = 0x312e3276 // closed by software that knows the format extension
	sectorSize  = 512
	entrySize   = 4

	// qemu's bounds: a cluster whose byte size fits in an int after
	// qemu's arithmetic, a catalog whose byte size fits in an int.
	maxTracks     = math.MaxInt32 / 513
	maxBATEntries = math.MaxInt32 / entrySize
)

func init() {
	format.Register(&format.Format{Name: Name, Priority: Priority, Probe: Probe, Open: format.OpensFile(Open), CheckFile: CheckFile})
}

// Probe reports whether f starts with either magic and version 2, as
// qemu's probe does.
func Probe(f format.File) bool {
	var b [magicLen + 4]byte
	n, _ := f.ReadAt(b[:], 0)
	if n != len(b) || binary.LittleEndian.Uint32(b[hdrVersion:]) != version {
		return false
	}
	m := string(b[:magicLen])
	return m == magicSectors || m == magicExt
}

// Image is an open Parallels image.
type Image struct {
	format.Base
	clusterSize int64
	unit        int64 // sectors per catalog unit: 1, or a cluster's with magicExt
	bat         []uint32
	dataOff     int64 // first data sector, as the header gives it
	extOff      int64 // format extension cluster in sectors; 0 when none
}

// header is the parsed header and catalog; outside lists the catalog
// entries whose cluster does not lie in the file.
type header struct {
	img     *Image
	outside []int
}

func errorf(field string, off int64, reason string, args ...any) error {
	return format.Errorf(Name, field, off, reason, args...)
}

// Open opens f as a Parallels image.
func Open(f format.File) (*Image, error) {
	h, err := parse(f)
	if err != nil {
		return nil, err
	}
	img := h.img
	if len(h.outside) > 0 {
		i := h.outside[0]
		return nil, errorf(fmt.Sprintf("catalog entry %d", i), batOffset(i),
			"cluster at sector %d extends past the end of the file (%d bytes)", img.sector(i), f.Size())
	}
	if img.extOff != 0 {
		if err := img.checkExtension(); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func batOffset(i int) int64 { return headerSize + entrySize*int64(i) }

// parse validates the header and loads the catalog. Clusters outside
// the file are listed, not refused: check reports them as qemu-img does.
func parse(f format.File) (*header, error) {
	if !Probe(f) {
		return nil, fmt.Errorf("parallels: no %q or %q magic with version %d: %w", magicSectors, magicExt, version, format.ErrWrongType)
	}
	var hdr [headerSize]byte
	if err := format.ReadFull(f, hdr[:], 0, Name, "header"); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	tracks := int64(le.Uint32(hdr[hdrTracks:]))
	switch {
	case tracks == 0:
		return nil, errorf("tracks", hdrTracks, "zero sectors per cluster")
	case tracks > maxTracks:
		return nil, errorf("tracks", hdrTracks, "%d sectors per cluster exceed %d", tracks, maxTracks)
	}
	img := &Image{clusterSize: tracks * sectorSize, unit: 1}
	sectors := le.Uint64(hdr[hdrNbSectors:])
	if string(hdr[:magicLen]) == magicExt {
		img.unit = tracks
	} else {
		sectors &= math.MaxUint32 // the old format uses the low 32 bits only
	}
	if sectors > format.MaxVirtualSize/sectorSize {
		return nil, errorf("nb_sectors", hdrNbSectors, "%d sectors exceed the %d-byte limit", sectors, int64(format.MaxVirtualSize))
	}
	entries := int64(le.Uint32(hdr[hdrBATEntries:]))
	if entries > maxBATEntries {
		return nil, errorf("bat_entries", hdrBATEntries, "%d catalog entries exceed %d", entries, maxBATEntries)
	}
	fileSize := f.Size()
	if err := format.CheckTable(Name, "bat_entries (catalog)", headerSize, entries*entrySize, fileSize); err != nil {
		return nil, err
	}
	raw := make([]byte, entries*entrySize)
	if err := format.ReadFull(f, raw, headerSize, Name, "catalog"); err != nil {
		return nil, err
	}
	img.Base = format.Base{File: f, Meta: format.Info{Format: Name, VirtualSize: int64(sectors) * sectorSize,
		Dirty: le.Uint32(hdr[hdrInUse:]) == inUseMagic, NoDirtyFlag: true}}
	img.dataOff = int64(le.Uint32(hdr[hdrDataOff:]))
	if ext := le.Uint64(hdr[hdrExtOff:]); ext != 0 {
		if ext > uint64(fileSize/sectorSize) {
			return nil, errorf("ext_off", hdrExtOff, "format extension at sector %d is past the end of the file (%d bytes)", ext, fileSize)
		}
		img.extOff = int64(ext)
	}
	h := &header{img: img}
	img.bat = make([]uint32, entries)
	size := img.Size()
	for i := range img.bat {
		e := le.Uint32(raw[entrySize*i:])
		img.bat[i] = e
		// Only the part of a cluster inside the disk is ever read.
		guest := min(img.clusterSize, size-int64(i)*img.clusterSize)
		if e == 0 || guest <= 0 {
			continue
		}
		if s := img.sector(i); s > fileSize/sectorSize || s*sectorSize > fileSize-guest {
			h.outside = append(h.outside, i)
		}
	}
	return h, nil
}

// sector returns the file sector catalog entry i points at (0: none).
func (img *Image) sector(i int) int64 { return int64(img.bat[i]) * img.unit }

// runAt returns the run from off, ending at or before limit, of clusters
// that are all unallocated or allocated and stored contiguously; host is
// the file offset of off, -1 when not stored.
func (img *Image) runAt(off, limit int64) (host, length int64) {
	ci := off / img.clusterSize
	first := img.sectorOf(ci)
	end := (ci + 1) * img.clusterSize
	for end < limit {
		if first == 0 && end/img.clusterSize >= int64(len(img.bat)) {
			end = limit // past the catalog: unallocated to the end
			break
		}
		next := img.sectorOf(end / img.clusterSize)
		if (first == 0) != (next == 0) || first != 0 && next != first+(end/img.clusterSize-ci)*(img.clusterSize/sectorSize) {
			break
		}
		end += img.clusterSize
	}
	host = -1
	if first != 0 {
		host = first*sectorSize + off%img.clusterSize
	}
	return host, min(end, limit) - off
}

// sectorOf returns the file sector of cluster ci, 0 when it is not
// allocated (a disk larger than its catalog reads zeros past it, as in
// qemu).
func (img *Image) sectorOf(ci int64) int64 {
	if ci >= int64(len(img.bat)) {
		return 0
	}
	return img.sector(int(ci))
}

// Extent returns the run at off from the catalog. An unallocated cluster
// is Unallocated, as qemu maps it (the format could have a backing file).
func (img *Image) Extent(off int64) (format.Extent, error) { return img.ExtentTo(off, img.Size()) }

// ExtentTo is Extent with the run cut at limit.
func (img *Image) ExtentTo(off, limit int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, fmt.Errorf("parallels: extent offset %d out of range [0,%d)", off, img.Size())
	}
	host, n := img.runAt(off, min(limit, img.Size()))
	e := format.Extent{Start: off, Length: n, Status: format.Unallocated, Offset: -1}
	if host >= 0 {
		e.Status, e.Offset, e.File = format.Data, host, img.File
	}
	return e, nil
}

// ReadAt reads guest bytes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	return format.ReadRuns(p, off, img.Size(), img.ExtentTo, readStored)
}

var readStored = format.ReadStored(Name, "cluster")
