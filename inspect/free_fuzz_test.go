package inspect

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// FuzzSparsify runs every allocation-map parser, through Sparsify, on
// hostile disks. Whatever the maps say, a range read as zeros must lie
// inside the window of a filesystem that was sparsified, outside its fixed
// metadata (as worked out here from the boot sector or superblock alone)
// and outside the partition table; and it must read as zeros.
func FuzzSparsify(f *testing.F) {
	formattest.AddSeeds(f, filepath.Join("..", "testdata", "inspect"))
	pv := make([]byte, 1<<20+16*4<<20)
	lvmPVImage(f, pv, testPVUUID, lvmTestText(16, map[string][][3]int64{"root": {{0, 4, 6}, {4, 2, 1}}, "other": {{0, 2, 10}}}, ""))
	copy(pv[1<<20+6*4<<20:], "no filesystem here")
	f.Add(sparseEncode(pv))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > fuzzMaxInput {
			return
		}
		data := fuzzBytes(in)
		// Raw images are whole sectors (qemu rounds the size up).
		data = data[:len(data)/sectorSize*sectorSize]
		if len(data) == 0 {
			return
		}
		start := time.Now()
		img := memImage(t, data)
		s, rep, err := Sparsify(img, SparsifyOptions{Force: len(in)%2 == 0})
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("took %v", el)
		}
		if err != nil {
			t.Fatalf("in-memory image: %v", err)
		}
		sp, ok := s.(*sparseImage)
		if !ok {
			if rep.FreeBytes != 0 {
				t.Fatalf("%d free bytes but no free ranges", rep.FreeBytes)
			}
			return
		}
		var total int64
		for _, fr := range sp.free {
			total += fr.end - fr.start
			if !allowedFree(data, rep, fr) {
				t.Fatalf("free range [%d, %d) is outside every sparsified filesystem or inside fixed metadata; report %+v", fr.start, fr.end, rep.Filesystems)
			}
			p := make([]byte, fr.end-fr.start)
			if n, err := s.ReadAt(p, fr.start); n != len(p) || !format.IsZero(p) {
				t.Fatalf("free range [%d, %d) reads %d bytes (%v), not all zero", fr.start, fr.end, n, err)
			}
		}
		if total != rep.FreeBytes {
			t.Fatalf("free ranges hold %d bytes, the report says %d", total, rep.FreeBytes)
		}
	})
}

// allowedFree reports whether fr lies in the window of one sparsified
// filesystem (not a logical volume: those lie inside their PV) and misses
// its fixed metadata and the partition table.
func allowedFree(data []byte, rep *SparsifyReport, fr span) bool {
	if fr.start < int64(4*sectorSize) && rep.Filesystems[0].Where != "disk" {
		return false // MBR, GPT header
	}
	for _, f := range rep.Filesystems {
		if f.Kept != "" || strings.Contains(f.Where, ", LV ") || fr.start < f.Start || fr.end > f.Start+f.Size {
			continue
		}
		for _, m := range fixedMetadata(data[f.Start:f.Start+f.Size], f.Type) {
			if fr.start < f.Start+m.end && f.Start+m.start < fr.end {
				return false
			}
		}
		return true
	}
	return false
}

// fixedMetadata returns, from the first sectors of a filesystem alone,
// ranges that are never free.
func fixedMetadata(d []byte, typ string) []span {
	u16 := func(off int) int64 { return int64(le.Uint16(d[off:])) }
	u32 := func(off int) int64 { return int64(le.Uint32(d[off:])) }
	switch typ {
	case "ext2", "ext3", "ext4":
		return []span{{end: 2048}}
	case "swap":
		return []span{{end: 4096}}
	case "ntfs":
		return []span{{end: 8192}}
	case "vfat":
		bps, rsvd, nfats := u16(11), u16(14), int64(d[16])
		fatsz := u16(22)
		if fatsz == 0 {
			fatsz = u32(36)
		}
		return []span{{end: (rsvd + nfats*fatsz + (u16(17)*32+bps-1)/bps) * bps}}
	case "exfat":
		return []span{{end: u32(88) << d[108]}}
	case "xfs":
		bs, sect, agblocks, ags := int64(be.Uint32(d[4:])), int64(be.Uint16(d[102:])), int64(be.Uint32(d[84:])), int64(be.Uint32(d[88:]))
		var out []span
		for ag := int64(0); ag < ags && ag*agblocks*bs < int64(len(d)); ag++ {
			out = append(out, span{start: ag * agblocks * bs, end: ag*agblocks*bs + 4*sect})
		}
		return out
	case "LVM2_member":
		out := []span{{end: 4 * sectorSize}}
		if l, _, _ := lvmLabel(memDev(d)); l != nil {
			if off := int(le.Uint32(l[lvmLabelOffsetXL:])); off >= 32 && off+lvmPVUUIDLen+8 <= sectorSize {
				_, mdas := lvmAreas(l, off+lvmPVUUIDLen+8)
				out = append(out, mdas...)
			}
		}
		return out
	}
	return []span{{end: int64(len(d))}}
}
