package inspect

import (
	"errors"
	"fmt"
)

// FAT12/16/32 and exFAT free space: a cluster is free when every FAT copy
// (FAT) or every allocation bitmap (exFAT) says so.

const (
	fatState16      = 37 // BS_Reserved1 of the FAT12/16 boot sector
	fatState32      = 65 // and of the FAT32 one
	fatStateDirty   = 0x01
	fatClean16      = 0x8000 // FAT[1]: the volume was cleanly shut down
	fatNoErrors16   = 0x4000 // FAT[1]: no disk I/O errors
	fatClean32      = 0x08000000
	fatNoErrors32   = 0x04000000
	fatMaxCopies    = 4
	exfatDirty      = 0x2
	exfatMediaFail  = 0x4
	exfatEOC        = 0xfffffff8 // this and above end a cluster chain
	exfatBitmapFlag = 1          // BitmapFlags bit 0: which FAT the bitmap goes with
)

func vfatFree(d dev, force bool, l *freeList) error {
	bs, err := d.read(0, 512)
	if err != nil {
		return err
	}
	g, fs, err := parseFATBoot(d, bs)
	if err != nil {
		return err
	}
	if g == nil || fs == nil {
		return errors.New("no FAT boot sector")
	}
	if g.nfats > fatMaxCopies {
		return fmt.Errorf("%d FATs", g.nfats)
	}
	fatOff := func(i int64) int64 { return g.fatOff + i*g.fatBytes }
	if !force {
		state := bs[fatState16]
		if fs.Version == "FAT32" {
			state = bs[fatState32]
		}
		if state&fatStateDirty != 0 {
			return dirty("the dirty bit is set (not cleanly unmounted)")
		}
		var e1 uint32
		if err := fatEntries(d, fatOff(0), 1, 2, g.bits, func(_ int64, v uint32) { e1 = v }); err != nil {
			return err
		}
		clean, noErr := uint32(fatClean16), uint32(fatNoErrors16)
		if g.bits == 32 {
			clean, noErr = fatClean32, fatNoErrors32
		}
		if g.bits != 12 && (e1&clean == 0 || e1&noErr == 0) {
			return dirty("FAT[1] says the volume was not cleanly shut down or had I/O errors")
		}
	}
	l.window = min(l.window, g.size)
	cs, data := g.cs, g.dataOff
	step := int64(fatChunk / 4)
	used := make([]byte, step/8)
	for c := int64(2); c < g.clusters+2; c += step {
		to := min(c+step, g.clusters+2)
		clear(used)
		for i := range g.nfats {
			err := fatEntries(d, fatOff(i), c, to, g.bits, func(k int64, v uint32) {
				if v != 0 {
					used[(k-c)/8] |= 1 << ((k - c) % 8)
				}
			})
			if err != nil {
				return err
			}
		}
		_, err := bitmapRuns(used, to-c, func(from, to int64) error {
			return l.add(data+(c+from-2)*cs, data+(c+to-2)*cs)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// exfatBitmap is an allocation bitmap's place.
type exfatBitmap struct{ first, length int64 }

func exfatFree(d dev, force bool, l *freeList) error {
	bs, err := d.read(0, 512)
	if err != nil {
		return err
	}
	if string(bs[3:11]) != exfatName {
		return errors.New("no exFAT boot sector")
	}
	g, err := parseExFATBoot(bs, d.size)
	if err != nil {
		return err
	}
	if !force && g.flags&(exfatDirty|exfatMediaFail) != 0 {
		return dirty("VolumeFlags %#x: dirty or media failure", g.flags)
	}
	if g.fats != 1 && g.fats != 2 {
		return fmt.Errorf("NumberOfFats %d", g.fats)
	}
	rootOff, ok := g.clusterOff(int64(le.Uint32(bs[exfatRootCluster:])))
	if !ok {
		return errors.New("the root directory is outside the cluster heap")
	}
	root, err := d.read(rootOff, int(min(g.cs, fatChunk)))
	if err != nil {
		return err
	}
	need := (g.count + 7) / 8
	maps := make([]*exfatBitmap, g.fats)
	for i := 0; i+32 <= len(root) && root[i] != 0; i += 32 {
		e := root[i : i+32]
		if e[0] != exfatEntryBitmap {
			continue
		}
		k := int64(e[1] & exfatBitmapFlag)
		if k >= g.fats || maps[k] != nil {
			return errors.New("allocation bitmap entries do not match NumberOfFats")
		}
		maps[k] = &exfatBitmap{first: int64(le.Uint32(e[20:])), length: int64(le.Uint64(e[24:]) & (1<<40 - 1))}
	}
	var offs []int64
	for _, m := range maps {
		if m == nil || m.length < need {
			return errors.New("allocation bitmap missing or too short")
		}
		off, err := g.contiguous(d, m.first, (need+g.cs-1)/g.cs)
		if err != nil {
			return err
		}
		offs = append(offs, off)
	}
	l.window = min(l.window, g.size)
	for pos := int64(0); pos < need; pos += fatChunk {
		n := min(fatChunk, need-pos)
		used := make([]byte, n)
		for _, off := range offs {
			b, err := d.read(off+pos, int(n))
			if err != nil {
				return err
			}
			for i := range b {
				used[i] |= b[i]
			}
		}
		base := pos * 8
		_, err := bitmapRuns(used, min(n*8, g.count-base), func(from, to int64) error {
			return l.add(g.heap+(base+from)*g.cs, g.heap+(base+to)*g.cs)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// contiguous returns the offset of the n-cluster chain starting at first,
// which the FAT must show as one run: the kernel reads the bitmap so.
func (g *exfatGeom) contiguous(d dev, first, n int64) (int64, error) {
	off, ok := g.clusterOff(first)
	if !ok || n > g.count || first+n > g.count+2 {
		return 0, fmt.Errorf("allocation bitmap at cluster %d is outside the cluster heap", first)
	}
	var bad error
	// fatEntries masks entries to 28 bits, as FAT32 stores them.
	err := fatEntries(d, g.fat, first, first+n, 32, func(c int64, v uint32) {
		if c < first+n-1 && int64(v) != c+1 || c == first+n-1 && v < exfatEOC&0x0fffffff {
			bad = fmt.Errorf("allocation bitmap is not one run of clusters (FAT entry %d is %#x)", c, v)
		}
	})
	if err == nil {
		err = bad
	}
	return off, err
}

func swapFree(d dev, force bool, l *freeList) error {
	r := &Report{}
	fs, err := probeSwap(d, "", r)
	if err != nil || fs == nil {
		return fmt.Errorf("no swap signature: %v", err)
	}
	if fs.Version == "v0" || len(r.Findings) > 0 {
		return errors.New("old or invalid swap header")
	}
	// Everything after the header page is swapped-out memory, which
	// means nothing once the machine is off.
	return l.add(fs.BlockSize, fs.Size)
}
