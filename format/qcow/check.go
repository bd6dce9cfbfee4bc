package qcow

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/diskimg/diskimg/format"
)

// minSpans is the number of used file ranges a check always keeps for the
// overlap test; beyond it the limit grows with the file (see Check).
const minSpans = 1 << 20

// Kinds of span.
const (
	spanHeader = iota
	spanBackingName
	spanL1
	spanL2
	spanData
	spanCompressed
)

// span is a range of the file that one structure uses, named by its kind
// and, for tables and clusters, where it is referenced. Names are built
// only for problem lines, so a large image costs no strings.
type span struct {
	start, end int64
	kind       uint8
	run        bool  // data clusters stored one after another
	l1i, l2i   int64 // the L1 entry (L2 tables, clusters) and L2 entry (clusters)
	ref        int64 // file offset of the referencing entry
}

func (s span) String() string {
	switch s.kind {
	case spanHeader:
		return "header"
	case spanBackingName:
		return fmt.Sprintf("backing file name at offset %d", s.start)
	case spanL1:
		return fmt.Sprintf("L1 table at offset %d", s.start)
	case spanL2:
		return fmt.Sprintf("L2 table of L1 table entry %d at offset %d", s.l1i, s.start)
	}
	kind := "data"
	if s.kind == spanCompressed {
		kind = "compressed"
	}
	name := fmt.Sprintf("%s cluster of L2 table entry %d of L1 table entry %d at offset %d", kind, s.l2i, s.l1i, s.ref)
	if s.run {
		name += " (and the clusters stored right after it)"
	}
	return name
}

// Check verifies the tables of a qcow (version 1) image. qemu-img cannot
// check this format ("This image format does not support checks", exit
// 63); this is diskimg's own check, reported with qemu-img check's keys.
//
// Open has already verified that the L1 table and every L2 table it names
// lie inside the file. Check reads every L2 table and verifies that each
// data cluster (and each compressed cluster) lies inside the file, and
// that no two structures share bytes: header, backing file name, L1
// table, L2 tables and clusters must not overlap.
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	r := &format.CheckResult{Format: Name, Filename: img.File.Name()}
	var hdr [headerSize]byte
	if err := format.ReadFull(img.File, hdr[:], 0, Name, "header"); err != nil {
		return nil, err
	}
	spans := []span{{start: 0, end: headerSize, kind: spanHeader}}
	if off := int64(binary.BigEndian.Uint64(hdr[hdrBackingOffset:])); off != 0 {
		n := int64(binary.BigEndian.Uint32(hdr[hdrBackingSize:]))
		spans = append(spans, span{start: off, end: off + n, kind: spanBackingName})
	}
	spans = append(spans, span{start: img.tables.L1Offset, end: img.tables.L1Offset + 8*int64(len(img.tables.L1)), kind: spanL1})

	// Every used range goes into spans for the overlap test. A hostile
	// file can name far more clusters than it holds, so the list is
	// capped by the file's size; past the cap, overlaps go unchecked and
	// that is a check error.
	limit := max(int64(minSpans), img.fileSize/64)
	add := func(s span) {
		if n := len(spans); n > 0 && spans[n-1].end == s.start && s.start > spans[n-1].start &&
			s.kind == spanData && spans[n-1].kind == spanData {
			// Data clusters stored one after another: one range, named
			// by its first cluster.
			spans[n-1].run = true
			spans[n-1].end = s.end
			return
		}
		if int64(len(spans)) < limit {
			spans = append(spans, s)
		} else if int64(len(spans)) == limit {
			r.Errorf("more than %d used ranges in a file of %d bytes: overlaps not checked", limit, img.fileSize)
			spans = append(spans, span{}) // marks the error as reported
		}
	}
	seenL2 := map[uint64]int{}
	l2Size := img.l2Entries * 8
	raw := make([]byte, l2Size)
	for i, l2 := range img.tables.L1 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if l2 == 0 {
			continue
		}
		at := img.tables.L1Offset + 8*int64(i)
		if prev, dup := seenL2[l2]; dup {
			// Reading it again would only repeat its entries.
			r.BoundedCorruptf("L1 table entry %d at offset %d: L2 table at offset %d is also used by L1 table entry %d", i, at, l2, prev)
			continue
		}
		seenL2[l2] = i
		add(span{start: int64(l2), end: int64(l2) + l2Size, kind: spanL2, l1i: int64(i)})
		if err := format.ReadFull(img.File, raw, int64(l2), Name, fmt.Sprintf("L2 table of L1 entry %d", i)); err != nil {
			return nil, err
		}
		for j := range img.l2Entries {
			e := binary.BigEndian.Uint64(raw[8*j:])
			if e == 0 {
				continue
			}
			ci := int64(i)<<img.tables.Bits + j
			if ci<<img.clusterBits >= img.Size() {
				// Past the disk: never read, but qemu's allocator never
				// writes these either.
				r.BoundedCorruptf("L2 table entry %d of L1 table entry %d at offset %d: allocated past the end of the disk", j, i, int64(l2)+8*j)
				continue
			}
			s := span{kind: spanData, l1i: int64(i), l2i: j, ref: int64(l2) + 8*j}
			var n int64
			if e&oflagCompressed != 0 {
				s.kind = spanCompressed
				n = int64(e>>(63-img.clusterBits)) & (img.clusterSize - 1)
				s.start = int64(e & (1<<(63-img.clusterBits) - 1))
			} else {
				n = min(img.clusterSize, img.Size()-ci<<img.clusterBits)
				s.start = int64(e) // the flag bit is clear: not negative
			}
			if s.start > img.fileSize || n > img.fileSize-s.start {
				r.BoundedCorruptf("%v: %d bytes at offset %d extend past the end of the file (%d bytes)", s, n, s.start, img.fileSize)
				continue
			}
			s.end = s.start + n
			add(s)
		}
	}
	if int64(len(spans)) <= limit {
		overlaps(r, spans)
	}
	return r, nil
}

// overlaps reports each span that shares bytes with an earlier one.
func overlaps(r *format.CheckResult, spans []span) {
	sort.SliceStable(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	for k := 1; k < len(spans); k++ {
		p, s := spans[k-1], spans[k]
		if s.start < p.end && s.end > s.start {
			r.BoundedCorruptf("%v overlaps the %v", s, p)
			if p.end > s.end {
				spans[k] = p // keep the furthest-reaching span to compare with
			}
		}
	}
}
