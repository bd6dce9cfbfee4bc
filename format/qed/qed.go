// Package qed reads QEMU Enhanced Disk images, following qemu's
// docs/interop/qed_spec.txt: a little-endian header, a two-level table of
// clusters (an L1 table of L2 tables, each table_size clusters long), zero
// clusters, and an optional backing file for the clusters the image does
// not store.
package qed

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/tablecache"
)

// Name is qemu's name for the format.
const Name = "qed"

// Priority orders probing among the registered formats.
const Priority = 60

// Header: little-endian, at offset 0.
const (
	headerSize = 64
	magic      = "QED\x00"

	hdrClusterSize     = 4  // uint32: bytes per cluster
	hdrTableSize       = 8  // uint32: clusters per L1 or L2 table
	hdrHeaderSize      = 12 // uint32: clusters taken by the header
	hdrFeatures        = 16 // uint64: feature bits the reader must know
	hdrCompatFeatures  = 24 // uint64: feature bits a reader may ignore
	hdrAutoclear       = 32 // uint64: feature bits a writer clears
	hdrL1Offset        = 40 // uint64: file offset of the L1 table
	hdrImageSize       = 48 // uint64: virtual disk size in bytes
	hdrBackingNameOff  = 56 // uint32: file offset of the backing file name
	hdrBackingNameSize = 60 // uint32: length of the backing file name
)

// Feature bits.
const (
	featBackingFile    = 1 << 0 // the image has a backing file
	featNeedCheck      = 1 << 1 // not closed cleanly: tables may be inconsistent
	featBackingNoProbe = 1 << 2 // the backing file is raw; do not probe it
	knownFeatures      = featBackingFile | featNeedCheck | featBackingNoProbe
)

// Limits from the specification and qemu.
const (
	minClusterSize = 4 << 10
	maxClusterSize = 64 << 20
	minTableSize   = 1
	maxTableSize   = 16
	sectorSize     = 512
	// maxBackingName is qemu's buffer for the name, less its NUL.
	maxBackingName = 4095
)

// Special L2 entries.
const (
	entryUnalloc = 0 // not stored here: read the backing file
	entryZero    = 1 // reads as zeros
)

// l2CacheBytes bounds the L2 tables kept in memory.
const l2CacheBytes = 64 << 20

func init() {
	format.Register(&format.Format{Name: Name, Priority: Priority, Probe: Probe, Open: format.OpensFile(Open)})
}

// Probe reports whether f starts with the QED magic.
func Probe(f format.File) bool {
	return format.HasMagic(f, 0, magic)
}

// Image is an open QED image: this file's layer of a backing chain.
type Image struct {
	format.Base
	fileSize    int64 // rounded down to whole clusters, as qemu does
	clusterSize int64
	clusterBits uint
	tableBytes  int64 // bytes of one L1 or L2 table
	headerBytes int64
	tables      tablecache.Tables
	backing     *format.Backing
}

// Open opens f as a QED image; its backing file is the chain's
// (format.Layer).
func Open(f format.File) (*Image, error) {
	hdr := make([]byte, headerSize)
	if n, _ := f.ReadAt(hdr[:4], 0); n < 4 || string(hdr[:4]) != magic {
		return nil, fmt.Errorf("qed: no %q magic at offset 0: %w", magic, format.ErrWrongType)
	}
	if err := format.ReadFull(f, hdr, 0, Name, "header"); err != nil {
		return nil, err
	}
	le32 := func(off int) uint32 { return binary.LittleEndian.Uint32(hdr[off:]) }
	le64 := func(off int) uint64 { return binary.LittleEndian.Uint64(hdr[off:]) }

	features := le64(hdrFeatures)
	if unknown := features &^ knownFeatures; unknown != 0 {
		return nil, format.Errorf(Name, "features", hdrFeatures, "unsupported feature bits %#x", unknown)
	}
	cs := int64(le32(hdrClusterSize))
	if cs < minClusterSize || cs > maxClusterSize || cs&(cs-1) != 0 {
		return nil, format.Errorf(Name, "cluster_size", hdrClusterSize, "%d is not a power of two in [%d, %d]", cs, minClusterSize, maxClusterSize)
	}
	ts := int64(le32(hdrTableSize))
	if ts < minTableSize || ts > maxTableSize || ts&(ts-1) != 0 {
		return nil, format.Errorf(Name, "table_size", hdrTableSize, "%d is not a power of two in [%d, %d]", ts, minTableSize, maxTableSize)
	}
	hs := int64(le32(hdrHeaderSize))
	if hs < 1 || hs*cs > 1<<32-1 {
		return nil, format.Errorf(Name, "header_size", hdrHeaderSize, "%d clusters of %d bytes is not in [1 cluster, 4 GiB)", hs, cs)
	}
	img := &Image{
		Base:        format.Base{File: f},
		fileSize:    f.Size() &^ (cs - 1),
		clusterSize: cs,
		clusterBits: log2(cs),
		tableBytes:  cs * ts,
		headerBytes: hs * cs,
	}
	l2Bits := log2(cs * ts / 8)
	entries := img.tableBytes / 8
	// Two levels of tables address entries² clusters; with the largest
	// clusters and tables that is 2^80 bytes, so saturate.
	maxSize := uint64(math.MaxUint64)
	if bits := 2*l2Bits + img.clusterBits; bits < 64 {
		maxSize = 1 << bits
	}
	size := le64(hdrImageSize)
	switch {
	case size%sectorSize != 0:
		return nil, format.Errorf(Name, "image_size", hdrImageSize, "%d is not a multiple of %d", size, sectorSize)
	case size > maxSize:
		return nil, format.Errorf(Name, "image_size", hdrImageSize, "%d exceeds the %d bytes two levels of %d-entry tables address", size, maxSize, entries)
	case size > format.MaxVirtualSize:
		return nil, format.Errorf(Name, "image_size", hdrImageSize, "%d exceeds the %d-byte limit", size, int64(format.MaxVirtualSize))
	}
	img.Meta.VirtualSize = int64(size)

	l1Off := le64(hdrL1Offset)
	if err := img.checkTable(l1Off); err != nil {
		return nil, format.Errorf(Name, "l1_table_offset", hdrL1Offset, "%v", err)
	}
	img.tables = tablecache.Tables{File: f, Format: Name, Order: binary.LittleEndian, L1Offset: int64(l1Off), Bits: l2Bits, Cache: tablecache.New(l2CacheBytes)}
	if err := img.tables.LoadL1(entries, img.checkTable); err != nil {
		return nil, err
	}

	img.Meta = format.Info{Format: Name, VirtualSize: img.Size(), ClusterSize: cs, Dirty: features&featNeedCheck != 0}
	if features&featBackingFile != 0 {
		if err := img.readBackingName(hdr, features); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func log2(n int64) uint {
	var b uint
	for n > 1 {
		n >>= 1
		b++
	}
	return b
}

// checkCluster applies qemu's rule for a cluster's file offset: aligned
// to a cluster, after the header, and wholly inside the file.
func (img *Image) checkCluster(off uint64) error {
	switch {
	case off&uint64(img.clusterSize-1) != 0:
		return fmt.Errorf("offset %d is not a multiple of the cluster size %d", off, img.clusterSize)
	case off < uint64(img.headerBytes):
		return fmt.Errorf("offset %d lies inside the %d-byte header", off, img.headerBytes)
	case off >= uint64(img.fileSize):
		return fmt.Errorf("cluster at %d extends past the end of the file (%d bytes)", off, img.fileSize)
	}
	return nil
}

// checkTable applies checkCluster to a table's first and last clusters.
func (img *Image) checkTable(off uint64) error {
	if err := img.checkCluster(off); err != nil {
		return err
	}
	if off+uint64(img.tableBytes) > uint64(img.fileSize) {
		return fmt.Errorf("table of %d bytes at %d extends past the end of the file (%d bytes)", img.tableBytes, off, img.fileSize)
	}
	return nil
}

// readBackingName reads the backing file name from the header cluster.
func (img *Image) readBackingName(hdr []byte, features uint64) error {
	off := binary.LittleEndian.Uint32(hdr[hdrBackingNameOff:])
	n := binary.LittleEndian.Uint32(hdr[hdrBackingNameSize:])
	if n > maxBackingName {
		return format.Errorf(Name, "backing_filename_size", hdrBackingNameSize, "backing file name of %d bytes is longer than %d", n, maxBackingName)
	}
	if uint64(off)+uint64(n) > uint64(img.headerBytes) {
		return format.Errorf(Name, "backing_filename_offset", hdrBackingNameOff, "backing file name at %d (%d bytes) does not fit in the %d-byte header", off, n, img.headerBytes)
	}
	name := make([]byte, n)
	if err := format.ReadFull(img.File, name, int64(off), Name, "backing file name"); err != nil {
		return err
	}
	for i, c := range name {
		if c == 0 { // qemu keeps the name as a C string
			name = name[:i]
			break
		}
	}
	if len(name) == 0 {
		return format.Errorf(Name, "backing_filename_size", hdrBackingNameSize, "the backing file feature is set but the name is empty")
	}
	img.backing = &format.Backing{Names: []string{string(name)}}
	if features&featBackingNoProbe != 0 {
		img.backing.Format = "raw"
	}
	return nil
}

// Backing names the backing file; nil when there is none.
func (img *Image) Backing() *format.Backing { return img.backing }

// entryAt returns the L2 entry of guest cluster ci (entryUnalloc for a
// missing L2 table), validated.
func (img *Image) entryAt(ci int64) (uint64, error) {
	t, err := img.tables.Holding(ci)
	if t == nil || err != nil {
		return entryUnalloc, err
	}
	return img.check(t, ci)
}

// check returns entry ci of t, the L2 table holding guest cluster ci,
// after validating a data cluster's offset.
func (img *Image) check(t []uint64, ci int64) (uint64, error) {
	e := t[img.tables.Index(ci)]
	if e == entryUnalloc || e == entryZero {
		return e, nil
	}
	if err := img.checkCluster(e); err != nil {
		return 0, img.tables.EntryError(ci, "%v", err)
	}
	return e, nil
}

// runAt returns the longest run from off, ending at or before limit, of
// clusters that are all unallocated, all zero, or all data stored
// contiguously; e is the entry of the cluster at off and host the file
// offset of off (-1 when not stored).
func (img *Image) runAt(off, limit int64) (e uint64, host int64, length int64, err error) {
	cs := img.clusterSize
	ci := off >> img.clusterBits
	e, err = img.entryAt(ci)
	if err != nil {
		return 0, 0, 0, err
	}
	special := e == entryUnalloc || e == entryZero
	next, err := img.tables.Run(ci, (limit-1)>>img.clusterBits, e == entryUnalloc, func(t []uint64, next int64) (bool, error) {
		if special {
			return t[img.tables.Index(next)] == e, nil
		}
		x, err := img.check(t, next)
		return x == e+uint64((next-ci)*cs), err
	})
	if err != nil {
		return 0, 0, 0, err
	}
	host = -1
	if !special {
		host = int64(e) + off&(cs-1)
	}
	return e, host, min(next<<img.clusterBits, limit) - off, nil
}

// Extent returns the run at off with one status and contiguous host
// offset, from the cluster tables alone.
func (img *Image) Extent(off int64) (format.Extent, error) { return img.ExtentTo(off, img.Size()) }

// ExtentTo is Extent with the run cut at limit; clusters the image does
// not store are Unallocated.
func (img *Image) ExtentTo(off, limit int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, fmt.Errorf("qed: extent offset %d out of range [0,%d)", off, img.Size())
	}
	e, host, n, err := img.runAt(off, min(limit, img.Size()))
	if err != nil {
		return format.Extent{}, err
	}
	x := format.Extent{Start: off, Length: n, Status: format.Data, Offset: host, File: img.File}
	switch e {
	case entryZero:
		x.Status, x.File = format.Zero, nil
	case entryUnalloc:
		x.Status, x.File = format.Unallocated, nil
	}
	return x, nil
}

// ReadAt reads guest bytes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	return format.ReadRuns(p, off, img.Size(), img.ExtentTo, readStored)
}

var readStored = format.ReadStored(Name, "data cluster")
