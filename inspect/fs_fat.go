package inspect

import (
	"fmt"
	"math/bits"
	"strings"
)

// FAT boot sector / BIOS parameter block.
const (
	fatBytesPerSec  = 11 // u16
	fatSecPerClus   = 13 // u8
	fatReserved     = 14 // u16 reserved sectors before the first FAT
	fatNumFATs      = 16 // u8
	fatRootEntries  = 17 // u16, 0 on FAT32
	fatTotSec16     = 19 // u16
	fatFATSz16      = 22 // u16, 0 on FAT32
	fatTotSec32     = 32 // u32
	fatFATSz32      = 36 // u32
	fatRootClus32   = 44 // u32
	fatVolID16      = 39 // u32, FAT12/16 layout
	fatVolLab16     = 43 // [11]
	fatFSType16     = 54 // [8] "FAT12   " / "FAT16   "
	fatVolID32      = 67
	fatVolLab32     = 71
	fatFSType32     = 82 // [8] "FAT32   "
	fatDirEntSize   = 32
	fatAttrVolumeID = 0x08
	fatAttrLongName = 0x0f
	fatMaxFAT12     = 4085  // fewer clusters than this is FAT12
	fatMaxFAT16     = 65525 // fewer clusters than this is FAT16
	fatNoName       = "NO NAME"
	fatChunk        = 64 << 10 // FAT bytes counted per read
)

func probeFAT(d dev, where string, r *Report) (*Filesystem, error) {
	bs, err := bootSector(d)
	if bs == nil {
		return nil, err
	}
	v, fs, err := parseFATBoot(d, bs)
	if fs == nil {
		return nil, nil
	}
	if err != nil {
		r.addf(Error, "%s: vfat boot sector: %v", where, err)
		return fs, nil
	}
	// The root directory's volume label entry wins over the boot
	// sector's, as blkid does.
	if root, err := d.read(v.rootOff, int(min(v.rootLen, fatChunk))); err == nil {
		for i := 0; i+fatDirEntSize <= len(root); i += fatDirEntSize {
			e := root[i : i+fatDirEntSize]
			if e[0] == 0 {
				break
			}
			if e[0] != 0xe5 && e[11]&fatAttrLongName != fatAttrLongName && e[11]&fatAttrVolumeID != 0 {
				fs.Label = cstr(e[:11])
				break
			}
		}
	} else if isImageErr(err) {
		return nil, err
	}

	free, err := fatFree(d, v.fatOff, v.clusters, v.bits)
	return withUsage(fs, v.clusters-free, v.clusters, v.cs, err, r, where+": vfat: counting free clusters")
}

// withUsage sets fs's used and free bytes from its count of used
// clusters, or, when counting failed, reports why (prefixed with what)
// and returns fs without them.
func withUsage(fs *Filesystem, used, clusters, cs int64, err error, r *Report, what string) (*Filesystem, error) {
	if err != nil {
		if isImageErr(err) {
			return nil, err
		}
		r.addf(Warning, "%s: %v", what, err)
		return fs, nil
	}
	fs.Used, fs.Free = used*cs, (clusters-used)*cs
	return fs, nil
}

// fatVol is the layout of a FAT12/16/32 volume.
type fatVol struct {
	d        dev
	cs       int64 // cluster size
	fatOff   int64 // the first FAT
	dataOff  int64 // cluster 2
	clusters int64
	bits     int64 // FAT entry width: 12, 16 or 32
	nfats    int64 // copies of the FAT, each fatBytes long
	fatBytes int64
	size     int64 // the volume's bytes (BPB_TotSec)
	// rootOff and rootLen place the root directory: the fixed area of
	// FAT12/16, or the first cluster of FAT32's (rootClus).
	rootOff, rootLen int64
	rootClus         int64
}

// parseFATBoot validates the FAT boot sector bs of the volume on d. fs is
// nil when bs carries no FAT signature; err says what is wrong with one
// that does.
func parseFATBoot(d dev, bs []byte) (*fatVol, *Filesystem, error) {
	if bs[0] != 0xeb && bs[0] != 0xe9 || le.Uint16(bs[mbrBootSig:]) != mbrSignature {
		return nil, nil, nil
	}
	fat32Layout := le.Uint16(bs[fatFATSz16:]) == 0
	if fat32Layout && !strings.HasPrefix(string(bs[fatFSType32:fatFSType32+8]), "FAT") ||
		!fat32Layout && !strings.HasPrefix(string(bs[fatFSType16:fatFSType16+8]), "FAT") && !strings.HasPrefix(string(bs[fatFSType16:fatFSType16+8]), "MSDOS") {
		return nil, nil, nil
	}
	fs := &Filesystem{Type: "vfat"}
	idOff, labOff := fatVolID16, fatVolLab16
	if fat32Layout {
		idOff, labOff = fatVolID32, fatVolLab32
	}
	id := le.Uint32(bs[idOff:])
	fs.UUID = fmt.Sprintf("%04X-%04X", id>>16, id&0xffff)
	if l := cstr(bs[labOff : labOff+11]); l != fatNoName {
		fs.Label = l
	}
	bps := int64(le.Uint16(bs[fatBytesPerSec:]))
	spc := int64(bs[fatSecPerClus])
	rsvd := int64(le.Uint16(bs[fatReserved:]))
	nfats := int64(bs[fatNumFATs])
	rootEnt := int64(le.Uint16(bs[fatRootEntries:]))
	tot := int64(le.Uint16(bs[fatTotSec16:]))
	if tot == 0 {
		tot = int64(le.Uint32(bs[fatTotSec32:]))
	}
	fatsz := int64(le.Uint16(bs[fatFATSz16:]))
	if fatsz == 0 {
		fatsz = int64(le.Uint32(bs[fatFATSz32:]))
	}
	switch {
	case bps < 512 || bps > 4096 || bps&(bps-1) != 0:
		return nil, fs, fmt.Errorf("BPB_BytsPerSec %d is not a power of two in 512..4096", bps)
	case spc == 0 || spc&(spc-1) != 0:
		return nil, fs, fmt.Errorf("BPB_SecPerClus %d is not a power of two", spc)
	case rsvd == 0 || nfats == 0:
		return nil, fs, fmt.Errorf("BPB_RsvdSecCnt %d or BPB_NumFATs %d is zero", rsvd, nfats)
	case tot*bps > d.size:
		return nil, fs, fmt.Errorf("BPB_TotSec %d × %d-byte sectors does not fit the %d-byte device", tot, bps, d.size)
	}
	rootSecs := (rootEnt*fatDirEntSize + bps - 1) / bps
	meta := rsvd + nfats*fatsz + rootSecs
	if fatsz == 0 || meta >= tot {
		return nil, fs, fmt.Errorf("BPB_FATSz %d leaves no data sectors in %d", fatsz, tot)
	}
	v := &fatVol{d: d, cs: spc * bps, fatOff: rsvd * bps, dataOff: meta * bps, clusters: (tot - meta) / spc, bits: 32,
		nfats: nfats, fatBytes: fatsz * bps, size: tot * bps}
	switch {
	case v.clusters < fatMaxFAT12:
		fs.Version, v.bits = "FAT12", 12
	case v.clusters < fatMaxFAT16:
		fs.Version, v.bits = "FAT16", 16
	default:
		fs.Version = "FAT32"
	}
	if (v.clusters+2)*v.bits > fatsz*bps*8 {
		return nil, fs, fmt.Errorf("BPB_FATSz %d sectors cannot hold %d clusters", fatsz, v.clusters)
	}
	fs.BlockSize = v.cs
	fs.Size = tot * bps
	v.rootOff, v.rootLen = (rsvd+nfats*fatsz)*bps, rootSecs*bps
	if fs.Version == "FAT32" {
		rc := int64(le.Uint32(bs[fatRootClus32:]))
		if rc >= 2 && rc < v.clusters+2 {
			v.rootOff, v.rootLen, v.rootClus = v.dataOff+(rc-2)*v.cs, v.cs, rc
		}
	}
	return v, fs, nil
}

// fatFree counts the free (zero) entries for clusters 2..clusters+1 of
// the FAT at off.
func fatFree(d dev, off, clusters, entryBits int64) (int64, error) {
	var free int64
	err := fatEntries(d, off, 2, clusters+2, entryBits, func(_ int64, v uint32) {
		if v == 0 {
			free++
		}
	})
	return free, err
}

// fatEntries calls fn with the entries of clusters [from, to) of the FAT
// at off, reading it in bounded chunks.
func fatEntries(d dev, off, from, to, entryBits int64, fn func(c int64, v uint32)) error {
	if entryBits == 12 {
		lo := from * 3 / 2
		b, err := d.read(off+lo, int(to*3/2+1-lo))
		if err != nil {
			return err
		}
		for c := from; c < to; c++ {
			v := le.Uint16(b[c*3/2-lo:])
			if c&1 == 1 {
				v >>= 4
			}
			fn(c, uint32(v&0xfff))
		}
		return nil
	}
	esize := entryBits / 8
	for c := from; c < to; {
		n := min(to-c, fatChunk/esize)
		b, err := d.read(off+c*esize, int(n*esize))
		if err != nil {
			return err
		}
		for i := int64(0); i < n; i++ {
			if esize == 2 {
				fn(c+i, uint32(le.Uint16(b[i*2:])))
			} else {
				fn(c+i, le.Uint32(b[i*4:])&0x0fffffff)
			}
		}
		c += n
	}
	return nil
}

// exFAT boot sector.
const (
	exfatName         = "EXFAT   "
	exfatVolumeLength = 72  // u64 sectors
	exfatFATOffset    = 80  // u32 sectors
	exfatClusterHeap  = 88  // u32 sectors
	exfatClusterCount = 92  // u32
	exfatRootCluster  = 96  // u32
	exfatVolumeFlags  = 106 // u16: 1 second FAT active, 2 dirty, 4 media failure
	exfatNumFATs      = 110 // u8
	exfatSerial       = 100 // u32
	exfatBPSShift     = 108 // u8, 9..12
	exfatSPCShift     = 109 // u8, bps shift + this ≤ 25
	exfatEntryBitmap  = 0x81
	exfatEntryLabel   = 0x83
	exfatMaxLabel     = 11 // UTF-16 characters
)

func probeExFAT(d dev, where string, r *Report) (*Filesystem, error) {
	bs, err := d.header(0, 512, 3, exfatName)
	if bs == nil {
		return nil, err
	}
	fs := &Filesystem{Type: "exfat"}
	id := le.Uint32(bs[exfatSerial:])
	fs.UUID = fmt.Sprintf("%04X-%04X", id>>16, id&0xffff)
	g, err := parseExFATBoot(bs, d.size)
	if g != nil {
		fs.Size = g.size
	}
	if err != nil {
		r.addf(Error, "%s: exfat boot sector: %v", where, err)
		return fs, nil
	}
	fs.BlockSize = g.cs
	cs, count, clusterOff := g.cs, g.count, g.clusterOff
	rootOff, ok := clusterOff(int64(le.Uint32(bs[exfatRootCluster:])))
	if !ok {
		r.addf(Error, "%s: exfat boot sector: FirstClusterOfRootDirectory is outside the cluster heap", where)
		return fs, nil
	}
	root, err := d.read(rootOff, int(min(cs, fatChunk)))
	if err != nil {
		if isImageErr(err) {
			return nil, err
		}
		r.addf(Error, "%s: exfat root directory: %v", where, err)
		return fs, nil
	}
	var bitmapOff, bitmapLen int64 = -1, 0
	for i := 0; i+32 <= len(root) && root[i] != 0; i += 32 {
		e := root[i : i+32]
		switch e[0] {
		case exfatEntryLabel:
			n := min(int(e[1]), exfatMaxLabel)
			fs.Label = utf16le(e[2 : 2+2*n])
		case exfatEntryBitmap:
			if bitmapOff < 0 {
				if off, ok := clusterOff(int64(le.Uint32(e[20:]))); ok {
					bitmapOff, bitmapLen = off, int64(le.Uint64(e[24:])&(1<<40-1))
				}
			}
		}
	}
	// The bitmap is read as one contiguous run, as mkfs.exfat lays it out.
	if need := (count + 7) / 8; bitmapOff >= 0 && bitmapLen >= need {
		var used int64
		for off := int64(0); off < need; off += fatChunk {
			b, err := d.read(bitmapOff+off, int(min(fatChunk, need-off)))
			if err != nil {
				if isImageErr(err) {
					return nil, err
				}
				r.addf(Warning, "%s: exfat allocation bitmap: %v", where, err)
				return fs, nil
			}
			for _, c := range b {
				used += int64(bits.OnesCount8(c))
			}
		}
		fs.Used = used * cs
		fs.Free = (count - used) * cs
	}
	return fs, nil
}

// exfatGeom is an exFAT volume's layout, in bytes.
type exfatGeom struct {
	bps, cs     int64
	size        int64 // volume length
	fat         int64 // first FAT
	heap, count int64 // cluster heap and its clusters
	rootOff     int64
	fats        int64
	flags       uint16 // VolumeFlags
}

// parseExFATBoot checks exFAT boot sector bs against a device of devSize
// bytes; g carries the volume size once that is known to fit.
func parseExFATBoot(bs []byte, devSize int64) (g *exfatGeom, err error) {
	bpsShift, spcShift := int64(bs[exfatBPSShift]), int64(bs[exfatSPCShift])
	if bpsShift < 9 || bpsShift > 12 || bpsShift+spcShift > 25 {
		return nil, fmt.Errorf("BytesPerSectorShift %d or SectorsPerClusterShift %d is invalid", bpsShift, spcShift)
	}
	bps := int64(1) << bpsShift
	vol := le.Uint64(bs[exfatVolumeLength:])
	if vol > uint64(devSize/bps) {
		return nil, fmt.Errorf("VolumeLength %d sectors does not fit the %d-byte device", vol, devSize)
	}
	g = &exfatGeom{bps: bps, cs: bps << spcShift, size: int64(vol) * bps,
		fat:  int64(le.Uint32(bs[exfatFATOffset:])) * bps,
		heap: int64(le.Uint32(bs[exfatClusterHeap:])) * bps, count: int64(le.Uint32(bs[exfatClusterCount:])),
		fats: int64(bs[exfatNumFATs]), flags: le.Uint16(bs[exfatVolumeFlags:])}
	if g.heap > g.size || g.count > (g.size-g.heap)/g.cs {
		return g, fmt.Errorf("ClusterHeapOffset or ClusterCount %d is past the volume", g.count)
	}
	return g, nil
}

// clusterOff returns the offset of cluster c and whether it is in the heap.
func (g *exfatGeom) clusterOff(c int64) (int64, bool) {
	return g.heap + (c-2)*g.cs, c >= 2 && c < g.count+2
}
