package inspect

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// NTFS boot sector.
const (
	ntfsOEM          = "NTFS    "
	ntfsBytesPerSec  = 0x0b // u16
	ntfsSecPerClus   = 0x0d // u8; above 0x80 it is 2^(256-n)
	ntfsTotalSectors = 0x28 // u64
	ntfsMFTLCN       = 0x30 // u64 cluster of $MFT
	ntfsClusPerRec   = 0x40 // i8; negative n means 2^-n bytes
	ntfsClusPerIdx   = 0x44 // i8, as ntfsClusPerRec, for index blocks
	ntfsSerial       = 0x48 // u64
	ntfsMaxCluster   = 2 << 20

	// MFT file record.
	ntfsRecMagic      = "FILE"
	ntfsRecUSAOff     = 0x04 // u16 update sequence array offset
	ntfsRecUSACount   = 0x06 // u16 entries, including the check value
	ntfsRecAttrOff    = 0x14 // u16 first attribute
	ntfsRecVolume     = 3    // $Volume
	ntfsRecBitmap     = 6    // $Bitmap
	ntfsAttrEnd       = 0xffffffff
	ntfsAttrData      = 0x80
	ntfsAttrVolName   = 0x60
	ntfsAttrNonRes    = 0x08 // u8 non-resident flag
	ntfsAttrNameLen   = 0x09 // u8
	ntfsAttrValLen    = 0x10 // u32 resident value length
	ntfsAttrValOff    = 0x14 // u16 resident value offset
	ntfsAttrRunOff    = 0x20 // u16 mapping pairs offset (non-resident)
	ntfsAttrDataSize  = 0x30 // u64 real size (non-resident)
	ntfsSectorStride  = 512  // fixups protect each 512-byte stride
	ntfsMaxRecordSize = 64 << 10
	ntfsMaxRuns       = 4096
	// ntfsMaxRecordNum bounds record numbers (48-bit in file references)
	// so offsets cannot overflow.
	ntfsMaxRecordNum = 1 << 40
)

type ntfsVol struct {
	d        dev
	cs       int64 // cluster size
	recSize  int64
	idxSize  int64 // index block size
	mftOff   int64
	size     int64 // volume bytes
	clusters int64
	// mft maps the whole $MFT once loaded; until then only the records
	// in its first run (at mftOff) are read.
	mft *ntfsStream
}

func probeNTFS(d dev, where string, r *Report) (*Filesystem, error) {
	bs, err := d.header(0, 512, 3, ntfsOEM)
	if bs == nil {
		return nil, err
	}
	serial := le.Uint64(bs[ntfsSerial:])
	fs := &Filesystem{Type: "ntfs", UUID: fmt.Sprintf("%016X", serial)}
	v, err := parseNTFSBoot(d, bs)
	if err != nil {
		r.addf(Error, "%s: ntfs boot sector: %v", where, err)
		return fs, nil
	}
	fs.Size = v.size
	fs.BlockSize = v.cs

	if attr, err := v.attr(ntfsRecVolume, ntfsAttrVolName); err == nil {
		if val, ok := attr.resident(); ok {
			fs.Label = utf16le(append(val, 0, 0))
		}
	} else if isImageErr(err) {
		return nil, err
	} else {
		r.addf(Warning, "%s: ntfs $Volume: %v", where, err)
	}

	used, err := v.bitmapUsed(v.clusters)
	return withUsage(fs, used, v.clusters, v.cs, err, r, where+": ntfs $Bitmap")
}

// parseNTFSBoot validates the boot sector bs of the NTFS volume on d.
func parseNTFSBoot(d dev, bs []byte) (*ntfsVol, error) {
	if len(bs) < 512 || string(bs[3:11]) != ntfsOEM {
		return nil, errors.New("no NTFS signature")
	}
	bps := int64(le.Uint16(bs[ntfsBytesPerSec:]))
	spc := int64(bs[ntfsSecPerClus])
	if spc > 0x80 {
		spc = 1 << (256 - spc)
	}
	if bps < 256 || bps > 4096 || bps&(bps-1) != 0 {
		return nil, fmt.Errorf("bytes per sector %d is invalid", bps)
	}
	cs := bps * spc
	if spc == 0 || spc&(spc-1) != 0 || cs > ntfsMaxCluster {
		return nil, fmt.Errorf("sectors per cluster %d is invalid", spc)
	}
	tot := le.Uint64(bs[ntfsTotalSectors:])
	if tot > uint64(d.size/bps) {
		return nil, fmt.Errorf("total sectors %d does not fit the %d-byte device", tot, d.size)
	}
	v := &ntfsVol{d: d, cs: cs, size: int64(tot) * bps, clusters: int64(tot) * bps / cs}
	// A record's and an index block's size: clusters when positive, else
	// 2^-n bytes.
	unit := func(c int8) int64 {
		switch {
		case c > 0:
			return int64(c) * cs
		case c > -31:
			return 1 << -c
		}
		return 0
	}
	v.recSize, v.idxSize = unit(int8(bs[ntfsClusPerRec])), unit(int8(bs[ntfsClusPerIdx]))
	if v.recSize < ntfsSectorStride || v.recSize > ntfsMaxRecordSize {
		return nil, fmt.Errorf("clusters per MFT record %d is invalid", int8(bs[ntfsClusPerRec]))
	}
	if v.idxSize < ntfsSectorStride || v.idxSize > ntfsMaxRecordSize {
		return nil, fmt.Errorf("clusters per index block %d is invalid", int8(bs[ntfsClusPerIdx]))
	}
	mft := le.Uint64(bs[ntfsMFTLCN:])
	if mft >= uint64(v.clusters) {
		return nil, fmt.Errorf("$MFT cluster %d is past the end of the volume", mft)
	}
	v.mftOff = int64(mft) * cs
	return v, nil
}

// record reads MFT record n and applies its update sequence fixups.
// Until loadMFT has run, only the records in the $MFT's first run (which
// always holds the system files) are reachable.
func (v *ntfsVol) record(n int64) ([]byte, error) {
	if n < 0 || n > ntfsMaxRecordNum {
		return nil, fmt.Errorf("MFT record number %d is out of range", n)
	}
	var b []byte
	var err error
	if v.mft != nil {
		b, err = v.mft.readAt(n*v.recSize, int(v.recSize))
	} else {
		b, err = v.d.read(v.mftOff+n*v.recSize, int(v.recSize))
	}
	if err != nil {
		return nil, err
	}
	if string(b[:4]) != ntfsRecMagic {
		return nil, fmt.Errorf("MFT record %d has no FILE signature", n)
	}
	if err := ntfsFixup(b); err != nil {
		return nil, fmt.Errorf("MFT record %d: %v", n, err)
	}
	return b, nil
}

// ntfsFixup checks and undoes the update sequence of a multi-sector
// structure (FILE record or INDX block) in place.
func ntfsFixup(b []byte) error {
	size := int64(len(b))
	usa, cnt := int64(le.Uint16(b[ntfsRecUSAOff:])), int64(le.Uint16(b[ntfsRecUSACount:]))
	if cnt != size/ntfsSectorStride+1 || usa < 8 || usa+2*cnt > size {
		return fmt.Errorf("update sequence array (offset %d, %d entries) is invalid", usa, cnt)
	}
	for i := int64(1); i < cnt; i++ {
		end := i*ntfsSectorStride - 2
		if b[end] != b[usa] || b[end+1] != b[usa+1] {
			return fmt.Errorf("update sequence mismatch in stride %d", i)
		}
		b[end], b[end+1] = b[usa+2*i], b[usa+2*i+1]
	}
	return nil
}

type ntfsAttr []byte

// attr returns the first unnamed attribute of type typ in record n.
func (v *ntfsVol) attr(n int64, typ uint32) (ntfsAttr, error) {
	b, err := v.record(n)
	if err != nil {
		return nil, err
	}
	off := int64(le.Uint16(b[ntfsRecAttrOff:]))
	for off+8 <= int64(len(b)) {
		t := le.Uint32(b[off:])
		if t == ntfsAttrEnd {
			break
		}
		l := int64(le.Uint32(b[off+4:]))
		if l < 24 || off+l > int64(len(b)) {
			return nil, fmt.Errorf("MFT record %d: attribute at %d has invalid length %d", n, off, l)
		}
		if t == typ && b[off+ntfsAttrNameLen] == 0 {
			return ntfsAttr(b[off : off+l]), nil
		}
		off += l
	}
	return nil, fmt.Errorf("MFT record %d has no attribute %#x", n, typ)
}

// resident returns a resident attribute's value.
func (a ntfsAttr) resident() ([]byte, bool) {
	if a[ntfsAttrNonRes] != 0 {
		return nil, false
	}
	vl, vo := int64(le.Uint32(a[ntfsAttrValLen:])), int64(le.Uint16(a[ntfsAttrValOff:]))
	if vo > int64(len(a)) || vl > int64(len(a))-vo {
		return nil, false
	}
	return a[vo : vo+vl], true
}

type ntfsRun struct{ lcn, clusters int64 } // lcn -1: sparse

// runs decodes a non-resident attribute's mapping pairs.
func (a ntfsAttr) runs() ([]ntfsRun, error) {
	if a[ntfsAttrNonRes] == 0 || len(a) < ntfsAttrDataSize+8 {
		return nil, errors.New("attribute is resident")
	}
	p := int(le.Uint16(a[ntfsAttrRunOff:]))
	var out []ntfsRun
	var lcn int64
	for p < len(a) && a[p] != 0 && len(out) < ntfsMaxRuns {
		ls, os := int(a[p]&0xf), int(a[p]>>4)
		p++
		if ls == 0 || ls > 8 || os > 8 || p+ls+os > len(a) {
			return nil, errors.New("mapping pairs are invalid")
		}
		length := int64(leUint(a[p : p+ls]))
		p += ls
		if length <= 0 {
			return nil, errors.New("mapping pair has a non-positive length")
		}
		if os == 0 {
			out = append(out, ntfsRun{-1, length})
			continue
		}
		delta := int64(leUint(a[p : p+os]))
		if a[p+os-1]&0x80 != 0 && os < 8 { // sign-extend
			delta -= 1 << (8 * os)
		}
		p += os
		lcn += delta
		out = append(out, ntfsRun{lcn, length})
	}
	return out, nil
}

func leUint(b []byte) uint64 {
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// bitmapUsed counts the allocated clusters in $Bitmap.
func (v *ntfsVol) bitmapUsed(clusters int64) (int64, error) {
	a, err := v.attr(ntfsRecBitmap, ntfsAttrData)
	if err != nil {
		return 0, err
	}
	need := (clusters + 7) / 8
	var used, done int64
	count := func(b []byte) {
		for i, c := range b {
			if done+int64(i) == need-1 && clusters%8 != 0 {
				c &= byte(1<<(clusters%8) - 1)
			}
			used += int64(bits.OnesCount8(c))
		}
		done += int64(len(b))
	}
	if val, ok := a.resident(); ok {
		if int64(len(val)) < need {
			return 0, fmt.Errorf("bitmap of %d bytes is shorter than %d", len(val), need)
		}
		count(val[:need])
		return used, nil
	}
	runs, err := a.runs()
	if err != nil {
		return 0, err
	}
	for _, run := range runs {
		if done >= need {
			break
		}
		n := min(run.clusters*v.cs, need-done)
		if run.lcn < 0 {
			done += n // sparse: all free
			continue
		}
		for off := int64(0); off < n; off += fatChunk {
			b, err := v.d.read(run.lcn*v.cs+off, int(min(fatChunk, n-off)))
			if err != nil {
				return 0, err
			}
			count(b)
		}
	}
	if done < need {
		return 0, fmt.Errorf("bitmap covers %d of %d bytes", done, need)
	}
	return used, nil
}

// LVM2 physical volume label (lib/format_text/layout.h).
const (
	lvmLabelID       = "LABELONE"
	lvmLabelType     = "LVM2 001"
	lvmLabelSectors  = 4  // the label is in one of the first four sectors
	lvmLabelOffsetXL = 20 // u32 offset of the PV header from the label
	lvmLabelTypeOff  = 24
	lvmPVUUIDLen     = 32
	lvmMDAMagic      = " LVM2 x[5A%r0N*>"
	lvmMDAHeaderSize = 512
	lvmMaxMetadata   = 1 << 20
	lvmMaxLVs        = 256
)

func probeLVM(d dev, where string, r *Report) (*Filesystem, error) {
	l, _, err := lvmLabel(d)
	if l == nil || err != nil {
		return nil, err
	}
	fs := &Filesystem{Type: "LVM2_member", Size: d.size}
	off := int(le.Uint32(l[lvmLabelOffsetXL:]))
	if off < 32 || off+lvmPVUUIDLen+8 > sectorSize {
		r.addf(Error, "%s: LVM2 label: offset_xl %d is invalid", where, off)
		return fs, nil
	}
	u := cstr(l[off : off+lvmPVUUIDLen])
	if len(u) == lvmPVUUIDLen {
		u = u[0:6] + "-" + u[6:10] + "-" + u[10:14] + "-" + u[14:18] + "-" + u[18:22] + "-" + u[22:26] + "-" + u[26:32]
	}
	fs.UUID = u
	if sz := le.Uint64(l[off+lvmPVUUIDLen:]); sz != 0 && sz <= uint64(d.size) {
		fs.Size = int64(sz)
	}
	fs.Volumes = lvmVolumes(d, l, off+lvmPVUUIDLen+8, where, r)
	return fs, nil
}

// lvmLabel returns the LVM2 label sector in the first four sectors of d
// and its number; nil when there is none.
func lvmLabel(d dev) ([]byte, int, error) {
	if d.size < lvmLabelSectors*sectorSize {
		return nil, 0, nil
	}
	head, err := d.read(0, lvmLabelSectors*sectorSize)
	if err != nil {
		return nil, 0, err
	}
	for s := 0; s < lvmLabelSectors; s++ {
		l := head[s*sectorSize : (s+1)*sectorSize]
		if string(l[:8]) == lvmLabelID && string(l[lvmLabelTypeOff:lvmLabelTypeOff+8]) == lvmLabelType {
			return l, s, nil
		}
	}
	return nil, 0, nil
}

// lvmVolumes reads the first metadata area named after the data areas in
// the PV header and lists its logical volumes.
func lvmVolumes(d dev, l []byte, p int, where string, r *Report) []LogicalVolume {
	var mdaOff int64 = -1
	_, mdas := lvmAreas(l, p)
	for _, m := range mdas {
		if m.start < d.size {
			mdaOff = m.start
			break
		}
	}
	if mdaOff < 0 {
		return nil
	}
	h, err := d.read(mdaOff, lvmMDAHeaderSize)
	if err != nil || string(h[4:20]) != lvmMDAMagic {
		r.addf(Warning, "%s: LVM2 metadata area header at %d is unreadable", where, mdaOff)
		return nil
	}
	// raw_locn of the current metadata: offset, size relative to the area.
	mo, ms := le.Uint64(h[40:]), le.Uint64(h[48:])
	if ms == 0 || ms > lvmMaxMetadata || mo > uint64(d.size) {
		return nil
	}
	text, err := d.read(mdaOff+int64(mo), int(ms))
	if err != nil {
		r.addf(Warning, "%s: LVM2 metadata text: %v", where, err)
		return nil
	}
	return parseLVMText(string(text))
}

// parseLVMText lists the logical volumes of the VG described by LVM's
// text metadata: sizes are the sum of their segments' extent counts.
func parseLVMText(s string) []LogicalVolume {
	toks := lvmTokens(s)
	if len(toks) < 2 || toks[1] != "{" {
		return nil
	}
	vg := toks[0]
	var extent int64
	var out []LogicalVolume
	depth := 0
	inLVs, lvDepth := false, 0
	for i := 0; i < len(toks) && len(out) <= lvmMaxLVs; i++ {
		t := toks[i]
		switch {
		case t == "{":
			depth++
		case t == "}":
			depth--
			if inLVs && depth < lvDepth {
				inLVs = false
			}
		case depth == 1 && t == "extent_size" && i+2 < len(toks) && toks[i+1] == "=":
			extent, _ = strconv.ParseInt(toks[i+2], 10, 64)
		case depth == 1 && t == "logical_volumes" && i+1 < len(toks) && toks[i+1] == "{":
			inLVs, lvDepth = true, 2
		case inLVs && depth == 2 && i+1 < len(toks) && toks[i+1] == "{":
			out = append(out, LogicalVolume{VG: vg, Name: t})
		case inLVs && depth >= 3 && t == "extent_count" && i+2 < len(toks) && toks[i+1] == "=" && len(out) > 0:
			if n, err := strconv.ParseInt(toks[i+2], 10, 64); err == nil && n >= 0 && extent > 0 && n < 1<<40 {
				out[len(out)-1].Size += n * extent * sectorSize
			}
		}
	}
	return out
}

// lvmTokens splits LVM metadata into words, "=", braces and strings,
// dropping comments.
func lvmTokens(s string) []string {
	var out []string
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '{' || c == '}' || c == '=' || c == '[' || c == ']' || c == ',':
			out = append(out, string(c))
			i++
		case c == '"':
			j := strings.IndexByte(s[i+1:], '"')
			if j < 0 {
				return out
			}
			out = append(out, s[i+1:i+1+j])
			i += j + 2
		case c <= ' ':
			i++
		default:
			j := i
			for j < len(s) && s[j] > ' ' && !strings.ContainsRune("{}=[],\"#", rune(s[j])) {
				j++
			}
			out = append(out, s[i:j])
			i = j
		}
	}
	return out
}
