package inspect

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
)

// Reading files and directories of an NTFS volume: the $MFT mapping,
// attribute lists, non-resident streams and $I30 directory indexes.

// MFT record header and attribute header fields beyond those in fs_ntfs.go.
const (
	ntfsRecFlags      = 0x16 // u16: 1 in use, 2 directory
	ntfsRecInUse      = 0x01
	ntfsRecMFT        = 0 // $MFT
	ntfsRecRoot       = 5 // the root directory
	ntfsAttrList      = 0x20
	ntfsAttrIdxRoot   = 0x90
	ntfsAttrIdxAlloc  = 0xa0
	ntfsAttrNameOff   = 0x0a // u16 offset of the UTF-16 name
	ntfsAttrFlags     = 0x0c // u16
	ntfsAttrLowVCN    = 0x10 // u64 first VCN of a non-resident piece
	ntfsAttrHighVCN   = 0x18 // u64 last VCN of a non-resident piece
	ntfsAttrInitSize  = 0x38 // u64 initialised size (non-resident)
	ntfsAttrNonResLen = 0x40 // shortest non-resident header
	ntfsAttrResLen    = 0x18 // shortest resident header
	ntfsFlagCompress  = 0x0001
	ntfsFlagEncrypted = 0x4000
	ntfsRefMask       = 1<<48 - 1 // record number part of a file reference
	// ntfsMaxPieces bounds the attribute-list entries followed for one
	// attribute and ntfsMaxList the size of an attribute list.
	ntfsMaxPieces = 256
	ntfsMaxList   = 256 << 10

	// $ATTRIBUTE_LIST entry.
	ntfsListType    = 0x00 // u32
	ntfsListLen     = 0x04 // u16
	ntfsListNameLen = 0x06 // u8, UTF-16 units
	ntfsListNameOff = 0x07 // u8
	ntfsListVCN     = 0x08 // u64 first VCN of the piece
	ntfsListRef     = 0x10 // u64 file reference of the record holding it
	ntfsListMinLen  = 0x1a

	// $INDEX_ROOT value, INDX blocks and index entries.
	ntfsIdxRootType   = 0x00 // u32 indexed attribute type
	ntfsIdxRootBlock  = 0x08 // u32 index block size
	ntfsIdxRootHeader = 0x10 // the index node header
	ntfsIdxNodeFirst  = 0x00 // u32 offset of the first entry
	ntfsIdxNodeUsed   = 0x04 // u32 bytes used, from the node header
	ntfsIdxNodeHdrLen = 0x10
	ntfsIndxMagic     = "INDX"
	ntfsIndxVCN       = 0x10 // u64 VCN of this block
	ntfsIndxHeader    = 0x18 // the index node header
	ntfsEntryRef      = 0x00 // u64 file reference
	ntfsEntryLen      = 0x08 // u16
	ntfsEntryKeyLen   = 0x0a // u16
	ntfsEntryFlags    = 0x0c // u8
	ntfsEntryKey      = 0x10
	ntfsEntrySubnode  = 0x01
	ntfsEntryLast     = 0x02
	ntfsFNNameLen     = 0x40 // u8 in a $FILE_NAME key, UTF-16 units
	ntfsFNName        = 0x42
	ntfsAttrFileName  = 0x30
	ntfsMinIndexBlock = 512
	// ntfsMaxIndexBlocks bounds the index blocks read for one lookup.
	ntfsMaxIndexBlocks = 1024
)

// ntfsStream is the content of one attribute: resident bytes or runs.
type ntfsStream struct {
	v        *ntfsVol
	resident []byte
	runs     []ntfsRun // in VCN order
	size     int64
}

// eachAttr calls fn for every attribute of record b, stopping when fn
// returns false.
func eachAttr(b []byte, n int64, fn func(a ntfsAttr) bool) error {
	off := int64(le.Uint16(b[ntfsRecAttrOff:]))
	for off+8 <= int64(len(b)) {
		if le.Uint32(b[off:]) == ntfsAttrEnd {
			return nil
		}
		l := int64(le.Uint32(b[off+4:]))
		if l < ntfsAttrResLen || off+l > int64(len(b)) || l%8 != 0 {
			return fmt.Errorf("MFT record %d: attribute at %d has invalid length %d", n, off, l)
		}
		if !fn(ntfsAttr(b[off : off+l])) {
			return nil
		}
		off += l
	}
	return nil
}

func (a ntfsAttr) typ() uint32 { return le.Uint32(a) }

// name returns the attribute's name, "" when unnamed or malformed.
func (a ntfsAttr) name() string {
	n, off := int(a[ntfsAttrNameLen]), int(le.Uint16(a[ntfsAttrNameOff:]))
	if n == 0 || off+2*n > len(a) {
		return ""
	}
	return utf16le(append(append([]byte(nil), a[off:off+2*n]...), 0, 0))
}

// lowVCN is the first VCN of a non-resident piece (0 when resident).
func (a ntfsAttr) lowVCN() int64 {
	if a[ntfsAttrNonRes] == 0 || len(a) < ntfsAttrNonResLen {
		return 0
	}
	return int64(le.Uint64(a[ntfsAttrLowVCN:]))
}

// loadMFT maps the whole $MFT so records past its first run can be read.
func (v *ntfsVol) loadMFT() error {
	if v.mft != nil {
		return nil
	}
	s, err := v.stream(ntfsRecMFT, ntfsAttrData, "")
	if err != nil {
		return fmt.Errorf("$MFT: %w", err)
	}
	if s.resident != nil {
		return errors.New("$MFT: $DATA is resident")
	}
	v.mft = s
	return nil
}

// stream returns attribute typ named name of record n, gathering its
// pieces through the record's attribute list when it has one.
func (v *ntfsVol) stream(n int64, typ uint32, name string) (*ntfsStream, error) {
	b, err := v.record(n)
	if err != nil {
		return nil, err
	}
	if le.Uint16(b[ntfsRecFlags:])&ntfsRecInUse == 0 {
		return nil, fmt.Errorf("MFT record %d is not in use", n)
	}
	var list, first ntfsAttr
	err = eachAttr(b, n, func(a ntfsAttr) bool {
		switch {
		case a.typ() == ntfsAttrList && list == nil:
			list = a
		case a.typ() == typ && first == nil && a.name() == name && a.lowVCN() == 0:
			first = a
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	var pieces []ntfsAttr
	if first != nil && (first[ntfsAttrNonRes] == 0 || list == nil) {
		pieces = []ntfsAttr{first}
	} else if list != nil {
		if pieces, err = v.listPieces(n, b, list, typ, name); err != nil {
			return nil, err
		}
	}
	if len(pieces) == 0 {
		return nil, fmt.Errorf("MFT record %d has no attribute %#x %q", n, typ, name)
	}
	return v.joinPieces(n, pieces)
}

// listPieces finds the pieces of attribute typ/name named by the
// attribute list of record n (whose bytes are base).
func (v *ntfsVol) listPieces(n int64, base []byte, list ntfsAttr, typ uint32, name string) ([]ntfsAttr, error) {
	var lb []byte
	if val, ok := list.resident(); ok {
		lb = val
	} else {
		ls, err := v.joinPieces(n, []ntfsAttr{list})
		if err != nil {
			return nil, fmt.Errorf("attribute list: %w", err)
		}
		if ls.size > ntfsMaxList {
			return nil, fmt.Errorf("MFT record %d: attribute list of %d bytes is too large", n, ls.size)
		}
		if lb, err = ls.readAt(0, int(ls.size)); err != nil {
			return nil, err
		}
	}
	var pieces []ntfsAttr
	for p := 0; p+ntfsListMinLen <= len(lb); {
		e := lb[p:]
		l := int(le.Uint16(e[ntfsListLen:]))
		if l < ntfsListMinLen || l > len(e) {
			return nil, fmt.Errorf("MFT record %d: attribute list entry at %d has invalid length %d", n, p, l)
		}
		p += l
		nl, no := int(e[ntfsListNameLen]), int(e[ntfsListNameOff])
		if le.Uint32(e[ntfsListType:]) != typ || no+2*nl > l {
			continue
		}
		if utf16le(append(append([]byte(nil), e[no:no+2*nl]...), 0, 0)) != name {
			continue
		}
		if len(pieces) >= ntfsMaxPieces {
			return nil, fmt.Errorf("MFT record %d: attribute %#x has more than %d pieces", n, typ, ntfsMaxPieces)
		}
		vcn, ref := int64(le.Uint64(e[ntfsListVCN:])), int64(le.Uint64(e[ntfsListRef:])&ntfsRefMask)
		rec := base
		if ref != n {
			var err error
			if rec, err = v.record(ref); err != nil {
				return nil, err
			}
		}
		var piece ntfsAttr
		if err := eachAttr(rec, ref, func(a ntfsAttr) bool {
			if a.typ() == typ && a.name() == name && a.lowVCN() == vcn {
				piece = a
				return false
			}
			return true
		}); err != nil {
			return nil, err
		}
		if piece == nil {
			return nil, fmt.Errorf("MFT record %d: attribute %#x piece at VCN %d is missing from record %d", n, typ, vcn, ref)
		}
		pieces = append(pieces, piece)
	}
	return pieces, nil
}

// joinPieces makes one stream of an attribute's pieces, in VCN order.
func (v *ntfsVol) joinPieces(n int64, pieces []ntfsAttr) (*ntfsStream, error) {
	a := pieces[0]
	if a[ntfsAttrNonRes] == 0 {
		val, ok := a.resident()
		if !ok {
			return nil, fmt.Errorf("MFT record %d: resident attribute %#x has an invalid value", n, a.typ())
		}
		return &ntfsStream{v: v, resident: val, size: int64(len(val))}, nil
	}
	if len(a) < ntfsAttrNonResLen {
		return nil, fmt.Errorf("MFT record %d: attribute %#x header is truncated", n, a.typ())
	}
	if f := le.Uint16(a[ntfsAttrFlags:]); f&(ntfsFlagCompress|ntfsFlagEncrypted) != 0 {
		return nil, fmt.Errorf("MFT record %d: attribute %#x is compressed or encrypted (flags %#x)", n, a.typ(), f)
	}
	s := &ntfsStream{v: v, size: int64(le.Uint64(a[ntfsAttrDataSize:]))}
	var vcn int64
	for _, p := range pieces {
		if p[ntfsAttrNonRes] == 0 || len(p) < ntfsAttrNonResLen || p.lowVCN() != vcn {
			return nil, fmt.Errorf("MFT record %d: attribute %#x piece does not start at VCN %d", n, a.typ(), vcn)
		}
		runs, err := p.runs()
		if err != nil {
			return nil, fmt.Errorf("MFT record %d: attribute %#x: %v", n, a.typ(), err)
		}
		for _, r := range runs {
			if len(s.runs) >= ntfsMaxRuns {
				return nil, fmt.Errorf("MFT record %d: attribute %#x has more than %d runs", n, a.typ(), ntfsMaxRuns)
			}
			if r.lcn >= 0 && (r.clusters > v.clusters || r.lcn > v.clusters-r.clusters) {
				return nil, fmt.Errorf("MFT record %d: attribute %#x run at LCN %d (%d clusters) is past the end of the volume", n, a.typ(), r.lcn, r.clusters)
			}
			if r.clusters > (1<<62)/v.cs-vcn {
				return nil, fmt.Errorf("MFT record %d: attribute %#x maps more than 2^62 bytes", n, a.typ())
			}
			if r.lcn < -1 {
				return nil, fmt.Errorf("MFT record %d: attribute %#x run has negative LCN %d", n, a.typ(), r.lcn)
			}
			s.runs = append(s.runs, r)
			vcn += r.clusters
		}
	}
	if s.size < 0 || s.size > vcn*v.cs {
		return nil, fmt.Errorf("MFT record %d: attribute %#x data size %d exceeds its %d mapped clusters", n, a.typ(), s.size, vcn)
	}
	return s, nil
}

// readAt reads n bytes at off of the stream.
func (s *ntfsStream) readAt(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || off > s.size || int64(n) > s.size-off {
		return nil, fmt.Errorf("read of %d bytes at %d is outside the %d-byte attribute", n, off, s.size)
	}
	if s.resident != nil {
		return append([]byte(nil), s.resident[off:off+int64(n)]...), nil
	}
	out := make([]byte, n)
	cs := s.v.cs
	var start int64 // byte offset of the current run in the stream
	for _, r := range s.runs {
		end := start + r.clusters*cs
		lo, hi := max(off, start), min(off+int64(n), end)
		if lo < hi && r.lcn >= 0 {
			b, err := s.v.d.read(r.lcn*cs+lo-start, int(hi-lo))
			if err != nil {
				return nil, err
			}
			copy(out[lo-off:], b)
		}
		if end >= off+int64(n) {
			break
		}
		start = end
	}
	return out, nil
}

// lookup finds name (case-insensitively) in the $I30 index of directory
// record dir and returns the record number it names.
func (v *ntfsVol) lookup(dir int64, name string) (int64, error) {
	rs, err := v.stream(dir, ntfsAttrIdxRoot, "$I30")
	if err != nil {
		return 0, err
	}
	root := rs.resident
	if root == nil || len(root) < ntfsIdxRootHeader+ntfsIdxNodeHdrLen {
		return 0, fmt.Errorf("MFT record %d: $INDEX_ROOT is not a resident index root", dir)
	}
	if t := le.Uint32(root[ntfsIdxRootType:]); t != ntfsAttrFileName {
		return 0, fmt.Errorf("MFT record %d: $I30 indexes attribute %#x, not file names", dir, t)
	}
	ibs := int64(le.Uint32(root[ntfsIdxRootBlock:]))
	ref, subs, err := ntfsScanNode(root[ntfsIdxRootHeader:], name)
	if err != nil || ref >= 0 {
		return ref, err
	}
	if len(subs) == 0 {
		return 0, errNotFound
	}
	if ibs < ntfsMinIndexBlock || ibs > ntfsMaxRecordSize || ibs&(ibs-1) != 0 {
		return 0, fmt.Errorf("MFT record %d: index block size %d is invalid", dir, ibs)
	}
	alloc, err := v.stream(dir, ntfsAttrIdxAlloc, "$I30")
	if err != nil {
		return 0, err
	}
	// VCNs count clusters, or 512-byte units when blocks are smaller
	// than a cluster.
	unit := v.cs
	if ibs < v.cs {
		unit = ntfsMinIndexBlock
	}
	seen := map[int64]bool{}
	for len(subs) > 0 {
		vcn := subs[len(subs)-1]
		subs = subs[:len(subs)-1]
		if seen[vcn] {
			continue
		}
		seen[vcn] = true
		if len(seen) > ntfsMaxIndexBlocks {
			return 0, fmt.Errorf("MFT record %d: index has more than %d blocks", dir, ntfsMaxIndexBlocks)
		}
		if vcn < 0 || vcn > alloc.size/unit {
			return 0, fmt.Errorf("MFT record %d: index entry points to VCN %d past $INDEX_ALLOCATION", dir, vcn)
		}
		b, err := alloc.readAt(vcn*unit, int(ibs))
		if err != nil {
			return 0, fmt.Errorf("MFT record %d: index block at VCN %d: %w", dir, vcn, err)
		}
		if string(b[:4]) != ntfsIndxMagic {
			return 0, fmt.Errorf("MFT record %d: index block at VCN %d has no INDX signature", dir, vcn)
		}
		if err := ntfsFixup(b); err != nil {
			return 0, fmt.Errorf("MFT record %d: index block at VCN %d: %v", dir, vcn, err)
		}
		if got := int64(le.Uint64(b[ntfsIndxVCN:])); got != vcn {
			return 0, fmt.Errorf("MFT record %d: index block at VCN %d says it is VCN %d", dir, vcn, got)
		}
		ref, more, err := ntfsScanNode(b[ntfsIndxHeader:], name)
		if err != nil || ref >= 0 {
			return ref, err
		}
		subs = append(subs, more...)
	}
	return 0, errNotFound
}

// ntfsScanNode looks for name in one index node; ref is -1 when it is not
// there, and subs lists the child nodes' VCNs.
func ntfsScanNode(node []byte, name string) (ref int64, subs []int64, err error) {
	first, used := int64(le.Uint32(node[ntfsIdxNodeFirst:])), int64(le.Uint32(node[ntfsIdxNodeUsed:]))
	if first < ntfsIdxNodeHdrLen || used > int64(len(node)) || first > used {
		return -1, nil, fmt.Errorf("index node header (entries %d..%d) is invalid", first, used)
	}
	for p := first; p+ntfsEntryKey <= used; {
		e := node[p:used]
		l, kl, flags := int64(le.Uint16(e[ntfsEntryLen:])), int64(le.Uint16(e[ntfsEntryKeyLen:])), e[ntfsEntryFlags]
		if l < ntfsEntryKey || l > int64(len(e)) || l%8 != 0 {
			return -1, nil, fmt.Errorf("index entry at %d has invalid length %d", p, l)
		}
		if flags&ntfsEntrySubnode != 0 {
			if l < ntfsEntryKey+8 {
				return -1, nil, fmt.Errorf("index entry at %d is too short for a subnode", p)
			}
			subs = append(subs, int64(le.Uint64(e[l-8:])))
		}
		if flags&ntfsEntryLast != 0 {
			return -1, subs, nil
		}
		if kl >= ntfsFNName && ntfsEntryKey+kl <= l {
			k := e[ntfsEntryKey : ntfsEntryKey+kl]
			if nl := int64(k[ntfsFNNameLen]); ntfsFNName+2*nl <= kl && ntfsNameEqual(k[ntfsFNName:ntfsFNName+2*nl], name) {
				return int64(le.Uint64(e[ntfsEntryRef:]) & ntfsRefMask), nil, nil
			}
		}
		p += l
	}
	return -1, subs, nil
}

// ntfsNameEqual compares a UTF-16LE file name with name, ignoring case.
func ntfsNameEqual(b []byte, name string) bool {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = le.Uint16(b[2*i:])
	}
	return strings.EqualFold(string(utf16.Decode(u)), name)
}

// openPath resolves a \-separated path from the root directory to a
// record number.
func (v *ntfsVol) openPath(p string) (int64, error) {
	n := int64(ntfsRecRoot)
	for _, c := range strings.FieldsFunc(p, func(r rune) bool { return r == '\\' || r == '/' }) {
		next, err := v.lookup(n, c)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", c, err)
		}
		n = next
	}
	return n, nil
}

// file returns the unnamed $DATA stream of the file at path p.
func (v *ntfsVol) file(p string) (*ntfsStream, error) {
	n, err := v.openPath(p)
	if err != nil {
		return nil, err
	}
	return v.stream(n, ntfsAttrData, "")
}
