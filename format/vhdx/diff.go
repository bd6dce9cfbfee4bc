package vhdx

// Differencing VHDX (Hyper-V checkpoints, .avhdx): a VHDX whose File
// Parameters have HasParent set and whose Parent Locator metadata item
// names the parent. Its blocks may be partially present: a sector bitmap
// block per chunk says, a bit per logical sector, which sectors this file
// holds; the others, like the blocks not present at all, are the
// parent's. The chain layer (format.Layer) opens the parent.

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode/utf16"

	"github.com/diskimg/diskimg/format"
)

// Parent locator layout ([MS-VHDX] 2.6.2.6): a 20-byte header (locator
// type GUID, reserved uint16, KeyValueCount uint16), then 12-byte entries
// (KeyOffset, ValueOffset uint32, KeyLength, ValueLength uint16) whose
// offsets are relative to the item; keys and values are UTF-16LE.
const (
	locHeaderSize = 20
	locCount      = 18
	locEntrySize  = 12
	maxLocator    = 1 << 20 // a metadata item is at most 1 MiB
	sbBlockSize   = 1 << 20 // a sector bitmap block
	sbPresent     = 6       // SB_BLOCK_PRESENT; 0 is SB_BLOCK_NOT_PRESENT
	// bitmapCacheBytes bounds the sector bitmaps kept in memory.
	bitmapCacheBytes = 8 << 20
)

// vhdxLocatorGUID is the only parent locator type the specification
// defines: a parent that is another VHDX file.
var vhdxLocatorGUID = parseGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

// locatorPaths are the keys naming the parent's file, in the order the
// specification says to try them.
var locatorPaths = []string{"relative_path", "volume_path", "absolute_win32_path"}

// readParent parses the parent locator item it and sets img.parent.
func (img *Image) readParent(it metaItem, ok bool, tableOff int64) error {
	if !ok {
		return errorf("metadata table", tableOff, "differencing VHDX without a parent locator item")
	}
	if it.length < locHeaderSize || it.length > maxLocator {
		return errorf("parent locator", it.tableOff+mteLength, "item of %d bytes, want %d to %d", it.length, locHeaderSize, maxLocator)
	}
	b := make([]byte, it.length)
	if err := format.ReadFull(img.File, b, it.off, Name, "parent locator"); err != nil {
		return err
	}
	kv, err := parseLocator(b, it.off)
	if err != nil {
		return err
	}
	var ids []guid
	for _, k := range []string{"parent_linkage", "parent_linkage2"} {
		v, ok := kv[k]
		if !ok {
			continue
		}
		id, good := textGUID(v)
		if !good {
			return errorf("parent locator "+k, it.off, "%q is not a GUID", clip(v))
		}
		ids = append(ids, id)
	}
	if _, ok := kv["parent_linkage"]; !ok {
		return errorf("parent locator", it.off, "no parent_linkage entry")
	}
	var names []string
	for _, k := range locatorPaths {
		if v := kv[k]; v != "" {
			if k == "relative_path" {
				v = format.LocalName(v)
			}
			names = append(names, v)
		}
	}
	if len(names) == 0 {
		return errorf("parent locator", it.off, "no relative_path, volume_path or absolute_win32_path entry")
	}
	img.parent = &format.Backing{Names: names, Format: Name, ID: "DataWriteGuid " + kv["parent_linkage"],
		Verify: func(name string, parent format.Image) error {
			p, ok := parent.(*Image)
			if !ok {
				return fmt.Errorf("vhdx: parent %s is a %s image, not a VHDX", name, parent.Info().Format)
			}
			for _, id := range ids {
				if p.dataWrite == id {
					return nil
				}
			}
			return errorf("parent locator parent_linkage", it.off, "parent %s has DataWriteGuid %s, the differencing VHDX expects %s: the parent changed since this checkpoint was made, or is another disk",
				name, p.dataWrite, kv["parent_linkage"])
		}}
	return nil
}

// parseLocator returns the key-value pairs of a VHDX parent locator item
// b found at file offset off.
func parseLocator(b []byte, off int64) (map[string]string, error) {
	var typ guid
	copy(typ[:], b)
	if typ != vhdxLocatorGUID {
		return nil, errorf("parent locator LocatorType", off, "%s is not the VHDX locator type: a differencing VHDX over another kind of parent is not supported", typ)
	}
	n := int64(binary.LittleEndian.Uint16(b[locCount:]))
	if locHeaderSize+n*locEntrySize > int64(len(b)) {
		return nil, errorf("parent locator KeyValueCount", off+locCount, "%d entries do not fit the %d-byte item", n, len(b))
	}
	kv := map[string]string{}
	for i := range n {
		e := b[locHeaderSize+i*locEntrySize:]
		field := fmt.Sprintf("parent locator entry %d", i)
		at := off + locHeaderSize + i*locEntrySize
		key, err := locatorText(b, binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint16(e[8:]))
		if err != nil {
			return nil, errorf(field+" key", at, "%v", err)
		}
		val, err := locatorText(b, binary.LittleEndian.Uint32(e[4:]), binary.LittleEndian.Uint16(e[10:]))
		if err != nil {
			return nil, errorf(field+" value", at+4, "%v", err)
		}
		if _, dup := kv[key]; dup {
			return nil, errorf(field, at, "duplicate key %q", clip(key))
		}
		kv[key] = val
	}
	return kv, nil
}

// locatorText decodes the UTF-16LE string of n bytes at off in b.
func locatorText(b []byte, off uint32, n uint16) (string, error) {
	if n == 0 || n%2 != 0 {
		return "", fmt.Errorf("length %d is not a positive even number of bytes", n)
	}
	if int64(off) < locHeaderSize || int64(off)+int64(n) > int64(len(b)) {
		return "", fmt.Errorf("%d bytes at %d lie outside the %d-byte item", n, off, len(b))
	}
	u := make([]uint16, n/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[int(off)+2*i:])
	}
	return string(utf16.Decode(u)), nil
}

// textGUID parses a GUID in its text form, with or without braces.
func textGUID(s string) (guid, bool) {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}")
	var g guid
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, false
	}
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil {
		return g, false
	}
	// The first three fields are little-endian on disk.
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	copy(g[8:], raw[8:])
	return g, true
}

// String shows a GUID as the parent locator stores it.
func (g guid) String() string {
	return fmt.Sprintf("{%02x%02x%02x%02x-%02x%02x-%02x%02x-%x-%x}", g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8:10], g[10:])
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// Backing names a differencing VHDX's parent; nil for other images.
func (img *Image) Backing() *format.Backing { return img.parent }

// sbEntry returns the BAT index of the sector bitmap block of payload
// block b's chunk.
func (img *Image) sbEntry(b int64) int64 {
	return b/img.chunkRatio*(img.chunkRatio+1) + img.chunkRatio
}

// checkBitmaps checks the sector bitmap entries of a differencing image:
// present ones name a whole MiB in the file clear of the metadata
// regions, and every chunk holding a partially present block has one.
func (img *Image) checkBitmaps(r region, regions []region, fileSize int64) error {
	for i := img.chunkRatio; i < int64(len(img.bat)); i += img.chunkRatio + 1 {
		e := img.bat[i]
		switch e & batStateMask {
		case 0:
		case sbPresent:
			if err := checkPlace(r, i, "sector bitmap block", int64(e&batOffsetMask), sbBlockSize, fileSize, regions); err != nil {
				return err
			}
		default:
			return batError(r, i, "invalid sector bitmap block state %d", e&batStateMask)
		}
	}
	return nil
}

// sectorBits returns the bits of payload block b's sectors, bit 0 of
// byte 0 first: set for sectors this file holds.
func (img *Image) sectorBits(b int64) ([]byte, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	if bm, ok := img.bitmaps[b]; ok {
		return bm, nil
	}
	n := img.blockSize / int64(img.logical) / 8
	sb := int64(img.bat[img.sbEntry(b)] & batOffsetMask)
	bm := make([]byte, n)
	if err := format.ReadFull(img.File, bm, sb+b%img.chunkRatio*n, Name, fmt.Sprintf("sector bitmap of block %d", b)); err != nil {
		return nil, err
	}
	if img.cached+n > bitmapCacheBytes {
		clear(img.bitmaps)
		img.cached = 0
	}
	img.bitmaps[b] = bm
	img.cached += n
	return bm, nil
}

// diffPiece returns what a differencing image holds at guest offset off:
// the status, the host offset (-1 when the file holds no data there) and
// where, in off's block, that stops.
func (img *Image) diffPiece(off int64) (format.Status, int64, int64, error) {
	b := off / img.blockSize
	end := min((b+1)*img.blockSize, img.Size())
	e := img.bat[b+b/img.chunkRatio]
	host := int64(e&batOffsetMask) + off - b*img.blockSize
	switch e & batStateMask {
	case blockNotPresent:
		return format.Unallocated, -1, end, nil
	case blockFullyPresent:
		return format.Data, host, end, nil
	case blockPartiallyPresent:
	default:
		// Zero, and the states whose contents are undefined or
		// unmapped: zeros, never the parent's data.
		return format.Zero, -1, end, nil
	}
	bm, err := img.sectorBits(b)
	if err != nil {
		return 0, 0, 0, err
	}
	ss := int64(img.logical)
	s := (off - b*img.blockSize) / ss
	set := bm[s/8]&(1<<(s%8)) != 0
	stop := b*img.blockSize + (s+1)*ss
	for s++; stop < end && (bm[s/8]&(1<<(s%8)) != 0) == set; s++ {
		stop += ss
	}
	if !set {
		return format.Unallocated, -1, min(stop, end), nil
	}
	return format.Data, host, min(stop, end), nil
}

// diffExtent is ExtentTo for a differencing image: runs of one status
// (and, for data, contiguous in the file) across pieces and blocks.
func (img *Image) diffExtent(off, limit int64) (format.Extent, error) {
	st, host, end, err := img.diffPiece(off)
	if err != nil {
		return format.Extent{}, err
	}
	for end < limit {
		st2, host2, end2, err := img.diffPiece(end)
		if err != nil || st2 != st || (host < 0) != (host2 < 0) || host >= 0 && host2 != host+end-off {
			break // an error comes again with the next call
		}
		end = end2
	}
	e := format.Extent{Start: off, Length: min(end, limit) - off, Status: st, Offset: -1}
	if host >= 0 {
		e.Offset, e.File = host, img.File
	}
	return e, nil
}
