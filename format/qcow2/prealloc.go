package qcow2

import (
	"encoding/binary"
	"os"
	"syscall"
)

// The refcounts read to decide metadataPreallocated are bounded: a
// preallocated image's first clusters are all in use, so it is told
// early; a file that is mostly free clusters (or a hostile one) is not
// preallocated once the bound is reached.
const (
	maxPreallocRead     = 64 << 20 // bytes of refcount table and blocks
	maxPreallocClusters = 1 << 24
)

// metadataPreallocated decides as qemu's qcow2 driver does before it
// looks for holes in the host file under its clusters: an image counts as
// preallocated (preallocation=metadata) when clearly more of its file's
// clusters are in use (a refcount above 0) than the host filesystem has
// allocated: a ninth more, and at least two. qemu maps the holes under
// the clusters of such an image "zero": true and under any other's as
// data; the Extent flag Preallocated carries the answer to the map. Only
// a local file, whose allocation can be asked, can be preallocated.
func (img *Image) metadataPreallocated() bool {
	st, ok := img.File.(interface{ Stat() (os.FileInfo, error) })
	if !ok {
		return false
	}
	fi, err := st.Stat()
	if err != nil {
		return false
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	cs := img.clusterSize
	real := sys.Blocks * 512 / cs
	threshold := max(real*10/9, real+2)
	end := (img.File.Size() + cs - 1) / cs
	if end < threshold {
		return false // not enough clusters in the file to be in use
	}
	c := &checker{img: img, fileSize: img.File.Size(), cs: cs, bits: img.clusterBits,
		refOrder: v2RefcountOrder, blocks: map[int64][]byte{}, budget: maxPreallocRead}
	var h [minHeaderLenV3]byte
	n, _ := img.File.ReadAt(h[:], 0)
	be := binary.BigEndian
	if n < headerLenV2 {
		return false
	}
	if be.Uint32(h[offVersion:]) == 3 {
		if n < len(h) {
			return false
		}
		c.refOrder = uint(be.Uint32(h[offRefcountOrder:]))
	}
	if c.readRefcountTable(c.refcountTablePlace(h[:])) != nil {
		return false
	}
	var used int64
	for k := int64(0); k < min(end, maxPreallocClusters) && used < threshold; k++ {
		v, _, err := c.storedRef(k)
		if err != nil {
			return false
		}
		if v != 0 {
			used++
		}
	}
	return used >= threshold
}

// preallocated is metadataPreallocated, decided once, when the map first
// needs it (qemu asks lazily too: it reads refcount blocks).
func (img *Image) preallocated() bool {
	img.prealloc.once.Do(func() { img.prealloc.yes = img.metadataPreallocated() })
	return img.prealloc.yes
}
