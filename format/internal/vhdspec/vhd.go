// Package vhdspec holds what Microsoft's Virtual Hard Disk format shares
// between the packages that read and write it: the VHD reader and writer,
// and Huawei's ZVHD and ZVHD2, which borrow its footer as their
// descriptor. It has the footer's field offsets, its checksum and the CHS
// geometry (vhd.go), and the ZVHD descriptor, records and index the two
// Huawei formats share (zvhd.go).
package vhdspec

import "time"

// SectorSize is the VHD sector.
const SectorSize = 512

// The footer ("hard disk footer"): 512 bytes, big-endian in VHD,
// little-endian in the ZVHD descriptor, fields at the same offsets.
const (
	FooterSize = 512

	OffCookie         = 0  // [8]byte
	OffFeatures       = 8  // u32
	OffFormatVersion  = 12 // u32
	OffDataOffset     = 16 // u64: the dynamic disk header; all ones for none
	OffTimestamp      = 24 // u32: seconds since Epoch
	OffCreatorApp     = 28 // [4]byte
	OffCreatorVersion = 32 // u32
	OffCreatorOS      = 36 // [4]byte in VHD, u32 in ZVHD
	OffOriginalSize   = 40 // u64: the disk's size at creation
	OffCurrentSize    = 48 // u64
	OffGeometry       = 56 // VHD: u16 cylinders, u8 heads, u8 sectors per track
	OffDiskType       = 60 // u32
	OffChecksum       = 64 // u32: Checksum of the footer
	OffUniqueID       = 68 // [16]byte
	OffSavedState     = 84 // u8
)

// Epoch is the origin of the footer's timestamp.
var Epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Checksum is the footer's (and the dynamic disk header's) checksum of b:
// the one's complement of the sum of its bytes, the 4-byte checksum field
// at offset field counted as zero.
func Checksum(b []byte, field int) uint32 {
	var sum uint32
	for i, c := range b {
		if i < field || i >= field+4 {
			sum += uint32(c)
		}
	}
	return ^sum
}

// MaxGeometry is the sector count of the largest CHS geometry,
// 65535×16×255; an image with it takes its size from the current size.
const MaxGeometry = 65535 * 16 * 255

// Geometry is the specification's CHS computation for a disk of n sectors
// (at most MaxGeometry); the product may fall short of n.
func Geometry(n int64) (cyl, heads, spt int64) {
	var cylTimesHeads int64
	if n >= 65535*16*63 {
		spt, heads = 255, 16
		cylTimesHeads = n / spt
	} else {
		spt = 17
		cylTimesHeads = n / spt
		heads = max((cylTimesHeads+1023)/1024, 4)
		if cylTimesHeads >= heads*1024 || heads > 16 {
			spt, heads = 31, 16
			cylTimesHeads = n / spt
		}
		if cylTimesHeads >= heads*1024 {
			spt, heads = 63, 16
			cylTimesHeads = n / spt
		}
	}
	return cylTimesHeads / heads, heads, spt
}
