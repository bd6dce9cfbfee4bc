package qed

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/blockset"
)

// Check verifies the tables as qemu's qed_check does: every L2 table and
// data cluster offset is cluster-aligned, after the header and inside the
// file; no cluster is used twice (the L1 table included); and every
// cluster after the header that nothing uses is a leak. Like qemu it
// counts allocated and fragmented clusters, and skips the leak scan when
// an L2 table could not be read.
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	cs := img.clusterSize
	r := &format.CheckResult{Format: Name, Filename: img.File.Name(),
		TotalClusters: (img.Size() + cs - 1) / cs}
	n := img.fileSize / cs // img.fileSize is whole clusters
	used := blockset.New(n)
	// mark sets the bits of count clusters from off and reports whether
	// none was set before; each cluster used again is a corruption.
	mark := func(off uint64, count int64, what string) bool {
		ok := true
		for c := int64(off / uint64(cs)); c < int64(off/uint64(cs))+count; c++ {
			if c >= n {
				break // offsets were checked against the file size
			}
			if used.Has(c) {
				r.BoundedCorruptf("%s: cluster at offset %d is used twice", what, c*cs)
				ok = false
			}
			used.Add(c)
		}
		return ok
	}
	tableClusters := img.tableBytes / cs
	mark(uint64(img.tables.L1Offset), tableClusters, fmt.Sprintf("L1 table at offset %d", img.tables.L1Offset))

	readFailed := false
	raw := make([]byte, img.tableBytes)
	for i, e := range img.tables.L1 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if e == entryUnalloc {
			continue
		}
		at := img.tables.L1Offset + 8*int64(i)
		what := fmt.Sprintf("L1 table entry %d at offset %d", i, at)
		if err := img.checkTable(e); err != nil {
			r.BoundedCorruptf("%s: L2 table %v", what, err)
			continue
		}
		if !mark(e, tableClusters, what) {
			continue // an L2 table inside another structure: not read
		}
		if err := format.ReadFull(img.File, raw, int64(e), Name, "L2 table"); err != nil {
			r.Errorf("%s: %v", what, err)
			readFailed = true
			continue
		}
		var last uint64
		for j := range img.tableBytes / 8 {
			d := binary.LittleEndian.Uint64(raw[8*j:])
			if d == entryUnalloc || d == entryZero {
				continue
			}
			r.AllocatedClusters++
			if last != 0 && last+uint64(cs) != d {
				r.FragmentedClusters++
			}
			last = d
			what := fmt.Sprintf("L2 table entry %d of L1 entry %d at offset %d", j, i, int64(e)+8*j)
			if err := img.checkCluster(d); err != nil {
				r.BoundedCorruptf("%s: data cluster %v", what, err)
				continue
			}
			mark(d, 1, what)
		}
	}
	if !readFailed {
		for c := img.headerBytes / cs; c < n; c++ {
			if !used.Has(c) {
				r.BoundedLeakf("cluster at offset %d: used by no table", c*cs)
			}
		}
	}
	return r, nil
}
