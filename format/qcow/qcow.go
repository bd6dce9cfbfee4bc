// Package qcow reads QEMU Copy-On-Write images of version 1 (qemu's "qcow"
// format, the predecessor of qcow2): a 48-byte big-endian header, a
// two-level L1/L2 cluster table, clusters compressed with raw deflate, and
// an optional backing file that supplies the clusters the image does not
// store.
//
// qcow2 has the same magic; this reader accepts version 1 only and qcow2's
// reader versions 2 and 3.
package qcow

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/tablecache"
)

// Name is qemu's name for the format.
const Name = "qcow"

// Priority orders probing among the registered formats.
const Priority = 62

// Header: 48 bytes, big-endian, at offset 0.
const (
	headerSize = 48
	magic      = "QFI\xfb"
	version1   = 1

	hdrVersion       = 4  // uint32: must be 1
	hdrBackingOffset = 8  // uint64: file offset of the backing file name, 0 for none
	hdrBackingSize   = 16 // uint32: length of the backing file name
	hdrMtime         = 20 // uint32: modification time of the backing file (unused)
	hdrSize          = 24 // uint64: virtual disk size in bytes
	hdrClusterBits   = 32 // uint8: log2 of the cluster size
	hdrL2Bits        = 33 // uint8: log2 of the number of entries in an L2 table
	hdrCryptMethod   = 36 // uint32: 0 none, 1 AES-CBC
	hdrL1Offset      = 40 // uint64: file offset of the L1 table
)

// Limits qemu enforces on the header.
const (
	minClusterBits = 9  // 512-byte clusters
	maxClusterBits = 16 // 64 KiB clusters
	minL2Bits      = 6  // L2 tables of 512 bytes
	maxL2Bits      = 13 // L2 tables of 64 KiB
	cryptNone      = 0
	cryptAES       = 1
	// maxBackingName is qemu's limit on the stored backing file name.
	maxBackingName = 1023
	sectorSize     = 512
)

// oflagCompressed marks an L2 entry of a compressed cluster; the bits
// below bit 63 hold the compressed size and the host offset.
const oflagCompressed = 1 << 63

// l2CacheBytes bounds the L2 tables kept in memory.
const l2CacheBytes = 32 << 20

func init() {
	format.Register(&format.Format{Name: Name, Priority: Priority, Probe: Probe, Open: format.OpensFile(Open)})
}

// Probe reports whether f starts with the qcow magic and version 1.
func Probe(f format.File) bool {
	var b [8]byte
	n, _ := f.ReadAt(b[:], 0)
	return n == len(b) && string(b[:4]) == magic && binary.BigEndian.Uint32(b[hdrVersion:]) == version1
}

// Image is an open qcow (version 1) image: this file's layer of a backing
// chain.
type Image struct {
	format.Base
	fileSize    int64
	clusterBits uint
	clusterSize int64
	l2Entries   int64
	tables      tablecache.Tables
	encrypted   bool
	backing     *format.Backing

	mu     sync.Mutex
	zIndex int64 // guest cluster held in zbuf; -1 for none
	zbuf   []byte
}

// Open opens f as a qcow image; its backing file is the chain's
// (format.Layer).
func Open(f format.File) (*Image, error) {
	img := &Image{Base: format.Base{File: f}, fileSize: f.Size(), zIndex: -1}
	hdr := make([]byte, headerSize)
	if n, _ := f.ReadAt(hdr[:8], 0); n < 8 || string(hdr[:4]) != magic {
		return nil, fmt.Errorf("qcow: no %q magic at offset 0: %w", magic, format.ErrWrongType)
	}
	if v := binary.BigEndian.Uint32(hdr[hdrVersion:]); v != version1 {
		return nil, fmt.Errorf("qcow: version %d is not 1 (versions 2 and 3 are qcow2): %w", v, format.ErrWrongType)
	}
	if err := format.ReadFull(f, hdr, 0, Name, "header"); err != nil {
		return nil, err
	}
	be64 := func(off int) uint64 { return binary.BigEndian.Uint64(hdr[off:]) }
	be32 := func(off int) uint32 { return binary.BigEndian.Uint32(hdr[off:]) }

	rawSize := be64(hdrSize)
	if rawSize <= 1 {
		return nil, format.Errorf(Name, "size", hdrSize, "%d bytes is too small (must be at least 2 bytes)", rawSize)
	}
	if rawSize > format.MaxVirtualSize {
		return nil, format.Errorf(Name, "size", hdrSize, "%d bytes exceeds the %d-byte limit", rawSize, int64(format.MaxVirtualSize))
	}
	// qemu counts whole sectors only.
	img.Meta.VirtualSize = int64(rawSize) / sectorSize * sectorSize

	cb := uint(hdr[hdrClusterBits])
	if cb < minClusterBits || cb > maxClusterBits {
		return nil, format.Errorf(Name, "cluster_bits", hdrClusterBits, "%d is outside [%d, %d] (cluster size must be between 512 and 64k)", cb, minClusterBits, maxClusterBits)
	}
	l2b := uint(hdr[hdrL2Bits])
	if l2b < minL2Bits || l2b > maxL2Bits {
		return nil, format.Errorf(Name, "l2_bits", hdrL2Bits, "%d is outside [%d, %d] (L2 table size must be between 512 and 64k)", l2b, minL2Bits, maxL2Bits)
	}
	img.clusterBits, img.clusterSize = cb, 1<<cb
	img.l2Entries = 1 << l2b

	switch cm := be32(hdrCryptMethod); cm {
	case cryptNone:
	case cryptAES:
		img.encrypted = true
	default:
		return nil, format.Errorf(Name, "crypt_method", hdrCryptMethod, "unknown encryption method %d", cm)
	}

	// One L1 entry per L2 table's worth of guest bytes, from the header's
	// size as qemu computes it.
	shift := cb + l2b
	l1Entries := int64((rawSize + 1<<shift - 1) >> shift)
	l1Off := be64(hdrL1Offset)
	if l1Off > uint64(img.fileSize) {
		return nil, format.Errorf(Name, "l1_table_offset", hdrL1Offset, "L1 table at %d is past the end of the file (%d bytes)", l1Off, img.fileSize)
	}
	img.tables = tablecache.Tables{File: f, Format: Name, Order: binary.BigEndian, L1Offset: int64(l1Off), Bits: l2b, Cache: tablecache.New(l2CacheBytes)}
	l2Size := uint64(img.l2Entries * 8)
	err := img.tables.LoadL1(l1Entries, func(e uint64) error {
		if e > uint64(img.fileSize) || uint64(img.fileSize)-e < l2Size {
			return fmt.Errorf("L2 table at %d (%d bytes) extends past the end of the file (%d bytes)", e, l2Size, img.fileSize)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	img.Meta = format.Info{Format: Name, VirtualSize: img.Size(), ClusterSize: img.clusterSize, Encrypted: img.encrypted}
	if bOff := be64(hdrBackingOffset); bOff != 0 {
		n := be32(hdrBackingSize)
		if n > maxBackingName {
			return nil, format.Errorf(Name, "backing_file_size", hdrBackingSize, "backing file name of %d bytes is longer than %d", n, maxBackingName)
		}
		if bOff > uint64(img.fileSize) || uint64(img.fileSize)-bOff < uint64(n) {
			return nil, format.Errorf(Name, "backing_file_offset", hdrBackingOffset, "backing file name at %d (%d bytes) extends past the end of the file (%d bytes)", bOff, n, img.fileSize)
		}
		name := make([]byte, n)
		if err := format.ReadFull(f, name, int64(bOff), Name, "backing file name"); err != nil {
			return nil, err
		}
		// qemu keeps the name as a C string.
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if len(name) > 0 {
			// qcow stores no backing format: it is probed.
			img.backing = &format.Backing{Names: []string{string(name)}}
		}
	}
	return img, nil
}

// Backing names the backing file; nil when there is none.
func (img *Image) Backing() *format.Backing { return img.backing }

// Kinds of cluster.
const (
	kindUnalloc = iota
	kindData
	kindCompressed
)

// cluster is what an L2 entry says about one guest cluster.
type cluster struct {
	kind  int
	host  int64 // file offset of the data (compressed or not)
	csize int64 // compressed bytes, kindCompressed only
}

// clusterAt decodes the L2 entry of guest cluster ci, validating that its
// data lies inside the file.
func (img *Image) clusterAt(ci int64) (cluster, error) {
	t, err := img.tables.Holding(ci)
	if t == nil || err != nil {
		return cluster{kind: kindUnalloc}, err
	}
	return img.decode(t, ci)
}

// decode interprets entry ci of t, the L2 table holding guest cluster ci.
func (img *Image) decode(t []uint64, ci int64) (cluster, error) {
	e := t[img.tables.Index(ci)]
	if e == 0 {
		return cluster{kind: kindUnalloc}, nil
	}
	if e&oflagCompressed != 0 {
		csize := int64(e>>(63-img.clusterBits)) & (img.clusterSize - 1)
		host := int64(e & (1<<(63-img.clusterBits) - 1))
		if host > img.fileSize || csize > img.fileSize-host {
			return cluster{}, img.tables.EntryError(ci, "compressed cluster of %d bytes at %d extends past the end of the file (%d bytes)", csize, host, img.fileSize)
		}
		return cluster{kind: kindCompressed, host: host, csize: csize}, nil
	}
	// The guest part of the cluster must be stored in the file.
	need := uint64(min(img.clusterSize, img.Size()-ci<<img.clusterBits))
	if e > uint64(img.fileSize) || uint64(img.fileSize)-e < need {
		return cluster{}, img.tables.EntryError(ci, "data cluster at %d extends past the end of the file (%d bytes)", e, img.fileSize)
	}
	return cluster{kind: kindData, host: int64(e)}, nil
}

// runAt returns the longest run from off, ending at or before limit, of
// clusters of one kind: unallocated, compressed, or uncompressed and
// contiguous in the file. first describes the cluster at off, host
// offsets are of off itself.
func (img *Image) runAt(off, limit int64) (first cluster, length int64, err error) {
	cs := img.clusterSize
	ci := off >> img.clusterBits
	first, err = img.clusterAt(ci)
	if err != nil {
		return cluster{}, 0, err
	}
	unalloc := first.kind == kindUnalloc
	next, err := img.tables.Run(ci, (limit-1)>>img.clusterBits, unalloc, func(t []uint64, next int64) (bool, error) {
		if unalloc {
			return t[img.tables.Index(next)] == 0, nil
		}
		c, err := img.decode(t, next)
		return c.kind == first.kind && (c.kind != kindData || c.host == first.host+(next-ci)*cs), err
	})
	if err != nil {
		return cluster{}, 0, err
	}
	if first.kind == kindData {
		first.host += off & (cs - 1)
	}
	return first, min(next<<img.clusterBits, limit) - off, nil
}

// Extent returns the run at off with one status and contiguous host
// offset, from the cluster tables alone.
func (img *Image) Extent(off int64) (format.Extent, error) { return img.ExtentTo(off, img.Size()) }

// ExtentTo is Extent with the run cut at limit; clusters the image does
// not store are Unallocated.
func (img *Image) ExtentTo(off, limit int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, fmt.Errorf("qcow: extent offset %d out of range [0,%d)", off, img.Size())
	}
	c, n, err := img.runAt(off, min(limit, img.Size()))
	if err != nil {
		return format.Extent{}, err
	}
	e := format.Extent{Start: off, Length: n, Status: format.Data, Offset: -1}
	switch {
	case c.kind == kindCompressed:
		e.Compressed = true
	case c.kind == kindData && !img.encrypted:
		e.Offset, e.File = c.host, img.File
	case c.kind == kindUnalloc:
		e.Status = format.Unallocated
	}
	return e, nil
}

// errEncrypted is returned when reading data of an AES-encrypted image.
var errEncrypted = errors.New("qcow: the image is AES-encrypted; diskimg does not decrypt it")

// ReadAt reads guest bytes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	return format.ReadRuns(p, off, img.Size(), img.ExtentTo, func(buf []byte, e format.Extent) error {
		switch {
		case e.Status == format.Data && img.encrypted:
			return errEncrypted
		case e.Compressed:
			return img.readCompressed(buf, e.Start)
		}
		return readStored(buf, e)
	})
}

var readStored = format.ReadStored(Name, "data cluster")

// readCompressed fills buf from the compressed clusters at guest offset
// pos, decompressing each once.
func (img *Image) readCompressed(buf []byte, pos int64) error {
	for len(buf) > 0 {
		m, err := img.copyCluster(buf, pos)
		if err != nil {
			return err
		}
		buf = buf[m:]
		pos += int64(m)
	}
	return nil
}

// copyCluster copies guest bytes from pos to the end of its compressed
// cluster into buf and returns how many it copied. The last cluster
// decompressed is kept for the next read.
func (img *Image) copyCluster(buf []byte, pos int64) (int, error) {
	ci := pos >> img.clusterBits
	c, err := img.clusterAt(ci)
	if err != nil {
		return 0, err
	}
	if c.kind != kindCompressed {
		return 0, fmt.Errorf("qcow: cluster %d is no longer compressed", ci)
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.zIndex != ci {
		in := make([]byte, c.csize)
		if err := format.ReadFull(img.File, in, c.host, Name, fmt.Sprintf("compressed cluster of guest offset %d", ci<<img.clusterBits)); err != nil {
			return 0, err
		}
		if img.zbuf == nil {
			img.zbuf = make([]byte, img.clusterSize)
		}
		img.zIndex = -1
		// qemu requires the stream to fill exactly one cluster; whatever
		// follows is ignored.
		if _, err := io.ReadFull(flate.NewReader(bytes.NewReader(in)), img.zbuf); err != nil {
			return 0, &format.FormatError{Format: Name, Field: "compressed cluster", Offset: c.host,
				Reason: fmt.Sprintf("%d bytes do not inflate to a %d-byte cluster", c.csize, img.clusterSize), Err: err}
		}
		img.zIndex = ci
	}
	return copy(buf, img.zbuf[pos&(img.clusterSize-1):]), nil
}
