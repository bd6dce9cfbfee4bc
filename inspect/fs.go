package inspect

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"strings"
)

// probe is one filesystem detector. It returns (nil, nil) when d does not
// carry its signature. Problems with a recognised superblock are added to
// r (prefixed with where) and the filesystem is still returned when enough
// of it made sense.
type probe func(d dev, where string, r *Report) (*Filesystem, error)

// probes run in order; containers whose signature sits at offset 0 come
// before filesystems that leave the first sectors free.
var probes = []probe{probeLUKS, probeLVM, probeSwap, probeXFS, probeBitLocker, probeNTFS, probeExFAT, probeFAT, probeBtrfs, probeExt, probeISO}

// detect finds the filesystem on d.
func detect(d dev, where string, r *Report) (*Filesystem, error) {
	for _, p := range probes {
		fs, err := p(d, where, r)
		if err != nil {
			if isImageErr(err) {
				return nil, err
			}
			// A signature with an unreadable superblock: not this type.
			continue
		}
		if fs != nil {
			return fs, nil
		}
	}
	return nil, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ext2/3/4 superblock, 1024 bytes at offset 1024.
const (
	extSuperOff         = 1024
	extSuperSize        = 1024
	extInodesCount      = 0x00 // u32
	extBlocksCountLo    = 0x04 // u32
	extFreeBlocksLo     = 0x0c // u32
	extFreeInodes       = 0x10 // u32
	extFirstDataBlock   = 0x14 // u32
	extLogBlockSize     = 0x18 // u32, block size = 1024 << n
	extBlocksPerGroup   = 0x20 // u32
	extInodesPerGroup   = 0x28 // u32
	extMagicOff         = 0x38 // u16
	extRevLevel         = 0x4c // u32
	extInodeSize        = 0x58 // u16 (revision 1)
	extFeatureCompat    = 0x5c // u32
	extFeatureIncompat  = 0x60 // u32
	extFeatureROCompat  = 0x64 // u32
	extUUID             = 0x68 // [16]
	extVolumeName       = 0x78 // [16]
	extDescSize         = 0xfe // u16 group descriptor size (64bit)
	extBlocksCountHi    = 0x150
	extFreeBlocksHi     = 0x158
	extChecksum         = 0x3fc // u32 crc32c of the bytes before it
	extMagic            = 0xef53
	extMaxLogBlockSize  = 6 // 64 KiB blocks
	extCompatHasJournal = 0x4
	extIncompat64Bit    = 0x80
	extROCompatMetaCsum = 0x400
	// Features ext3 does not know: their presence makes the fs ext4, as
	// blkid decides.
	extIncompatExt3    = 0x2 | 0x4 | 0x10 // filetype, recover, meta_bg
	extROCompatExt3    = 0x1 | 0x2 | 0x4  // sparse_super, large_file, btree_dir
	extMinInodeSize    = 128
	extGoodOldInodeSz  = 128
	extMinDescSize     = 32
	extMaxDescSize     = 1024
	extRootInodeNumber = 2
)

// extSuper is the part of an ext2/3/4 superblock the file reader needs.
type extSuper struct {
	blockSize      int64
	blocks         int64
	firstDataBlock int64
	inodesCount    int64
	inodesPerGroup int64
	inodeSize      int64
	descSize       int64
	groups         int64
	incompat       uint32
}

func probeExt(d dev, where string, r *Report) (*Filesystem, error) {
	if d.size < extSuperOff+extSuperSize {
		return nil, nil
	}
	sb, err := d.read(extSuperOff, extSuperSize)
	if err != nil {
		return nil, err
	}
	if le.Uint16(sb[extMagicOff:]) != extMagic {
		return nil, nil
	}
	s, fs, err := parseExtSuper(sb, d.size)
	if err != nil {
		r.addf(Error, "%s: %s superblock: %v", where, fs.Type, err)
		return fs, nil
	}
	_ = s
	ro := le.Uint32(sb[extFeatureROCompat:])
	if ro&extROCompatMetaCsum != 0 {
		if want, got := le.Uint32(sb[extChecksum:]), ^crc32.Checksum(sb[:extChecksum], castagnoli); want != got {
			r.addf(Error, "%s: %s superblock checksum mismatch (stored %#08x, computed %#08x)", where, fs.Type, want, got)
		}
	}
	return fs, nil
}

// parseExtSuper validates an ext superblock against a device of devSize
// bytes. fs is never nil: it carries at least the type.
func parseExtSuper(sb []byte, devSize int64) (*extSuper, *Filesystem, error) {
	compat, incompat, ro := le.Uint32(sb[extFeatureCompat:]), le.Uint32(sb[extFeatureIncompat:]), le.Uint32(sb[extFeatureROCompat:])
	fs := &Filesystem{Type: "ext2"}
	switch {
	case incompat&^extIncompatExt3 != 0 || ro&^extROCompatExt3 != 0:
		fs.Type = "ext4"
	case compat&extCompatHasJournal != 0:
		fs.Type = "ext3"
	}
	fs.UUID = uuidBE(sb[extUUID:])
	fs.Label = cstr(sb[extVolumeName : extVolumeName+16])
	lbs := le.Uint32(sb[extLogBlockSize:])
	if lbs > extMaxLogBlockSize {
		return nil, fs, fmt.Errorf("s_log_block_size %d is larger than %d", lbs, extMaxLogBlockSize)
	}
	s := &extSuper{blockSize: 1024 << lbs, incompat: incompat}
	fs.BlockSize = s.blockSize
	blocks := uint64(le.Uint32(sb[extBlocksCountLo:]))
	free := uint64(le.Uint32(sb[extFreeBlocksLo:]))
	s.descSize = extMinDescSize
	if incompat&extIncompat64Bit != 0 {
		blocks |= uint64(le.Uint32(sb[extBlocksCountHi:])) << 32
		free |= uint64(le.Uint32(sb[extFreeBlocksHi:])) << 32
		s.descSize = int64(le.Uint16(sb[extDescSize:]))
		if s.descSize < extMinDescSize || s.descSize > extMaxDescSize || s.descSize&(s.descSize-1) != 0 {
			return nil, fs, fmt.Errorf("s_desc_size %d is not a power of two in %d..%d", s.descSize, extMinDescSize, extMaxDescSize)
		}
	}
	if blocks == 0 || blocks > uint64(devSize)/uint64(s.blockSize) {
		return nil, fs, fmt.Errorf("s_blocks_count %d × %d-byte blocks does not fit the %d-byte device", blocks, s.blockSize, devSize)
	}
	if free > blocks {
		return nil, fs, fmt.Errorf("s_free_blocks_count %d exceeds s_blocks_count %d", free, blocks)
	}
	s.blocks = int64(blocks)
	fs.Size = s.blocks * s.blockSize
	fs.Free = int64(free) * s.blockSize
	fs.Used = fs.Size - fs.Free
	inodes, freeInodes := le.Uint32(sb[extInodesCount:]), le.Uint32(sb[extFreeInodes:])
	if freeInodes > inodes {
		return nil, fs, fmt.Errorf("s_free_inodes_count %d exceeds s_inodes_count %d", freeInodes, inodes)
	}
	fs.InodesTotal, fs.InodesUsed = int64(inodes), int64(inodes-freeInodes)
	s.inodesCount = int64(inodes)
	s.firstDataBlock = int64(le.Uint32(sb[extFirstDataBlock:]))
	bpg, ipg := int64(le.Uint32(sb[extBlocksPerGroup:])), int64(le.Uint32(sb[extInodesPerGroup:]))
	if bpg == 0 || ipg == 0 {
		return nil, fs, fmt.Errorf("s_blocks_per_group %d or s_inodes_per_group %d is zero", bpg, ipg)
	}
	if s.firstDataBlock >= s.blocks {
		return nil, fs, fmt.Errorf("s_first_data_block %d is past s_blocks_count %d", s.firstDataBlock, s.blocks)
	}
	s.groups = (s.blocks - s.firstDataBlock + bpg - 1) / bpg
	s.inodesPerGroup = ipg
	if s.inodesCount > s.groups*ipg {
		return nil, fs, fmt.Errorf("s_inodes_count %d exceeds %d groups × %d inodes", s.inodesCount, s.groups, ipg)
	}
	s.inodeSize = extGoodOldInodeSz
	if le.Uint32(sb[extRevLevel:]) >= 1 {
		s.inodeSize = int64(le.Uint16(sb[extInodeSize:]))
		if s.inodeSize < extMinInodeSize || s.inodeSize > s.blockSize || s.inodeSize&(s.inodeSize-1) != 0 {
			return nil, fs, fmt.Errorf("s_inode_size %d is not a power of two in %d..%d", s.inodeSize, extMinInodeSize, s.blockSize)
		}
	}
	return s, fs, nil
}

// XFS superblock (big-endian) at offset 0 (xfs_format.h struct xfs_sb).
const (
	xfsMagic      = "XFSB"
	xfsBlockSize  = 4   // u32
	xfsDBlocks    = 8   // u64 data blocks
	xfsUUID       = 32  // [16]
	xfsLogStart   = 48  // u64, non-zero for an internal log
	xfsAGBlocks   = 84  // u32
	xfsAGCount    = 88  // u32
	xfsLogBlocks  = 96  // u32
	xfsSectSize   = 102 // u16
	xfsInodeSize  = 104 // u16
	xfsInoPBlock  = 106 // u16 inodes per block
	xfsFName      = 108 // [12] label
	xfsIMaxPct    = 127 // u8 max % of space for inodes
	xfsICount     = 128 // u64 allocated inodes
	xfsIFree      = 136 // u64 free inodes
	xfsFDBlocks   = 144 // u64 free data blocks
	xfsSuperSize  = 512
	xfsMinBlock   = 512
	xfsMaxBlock   = 65536
	xfsMinSectSz  = 512
	xfsMaxSectSz  = 32768
	xfsMinInodeSz = 256
	xfsMaxInodeSz = 2048
)

func probeXFS(d dev, where string, r *Report) (*Filesystem, error) {
	sb, err := d.header(0, xfsSuperSize, 0, xfsMagic)
	if sb == nil {
		return nil, err
	}
	fs := &Filesystem{Type: "xfs", UUID: uuidBE(sb[xfsUUID:]), Label: cstr(sb[xfsFName : xfsFName+12])}
	bs := int64(be.Uint32(sb[xfsBlockSize:]))
	sect, isz, ipb := int64(be.Uint16(sb[xfsSectSize:])), int64(be.Uint16(sb[xfsInodeSize:])), int64(be.Uint16(sb[xfsInoPBlock:]))
	dblocks, fdblocks := be.Uint64(sb[xfsDBlocks:]), be.Uint64(sb[xfsFDBlocks:])
	icount, ifree := be.Uint64(sb[xfsICount:]), be.Uint64(sb[xfsIFree:])
	switch {
	case bs < xfsMinBlock || bs > xfsMaxBlock || bs&(bs-1) != 0:
		r.addf(Error, "%s: xfs superblock: sb_blocksize %d is not a power of two in %d..%d", where, bs, xfsMinBlock, xfsMaxBlock)
		return fs, nil
	case sect < xfsMinSectSz || sect > xfsMaxSectSz || sect&(sect-1) != 0:
		r.addf(Error, "%s: xfs superblock: sb_sectsize %d is invalid", where, sect)
		return fs, nil
	case isz < xfsMinInodeSz || isz > xfsMaxInodeSz || ipb != bs/isz:
		r.addf(Error, "%s: xfs superblock: sb_inodesize %d or sb_inopblock %d is invalid", where, isz, ipb)
		return fs, nil
	case dblocks == 0 || dblocks > uint64(d.size/bs):
		r.addf(Error, "%s: xfs superblock: sb_dblocks %d × %d-byte blocks does not fit the %d-byte device", where, dblocks, bs, d.size)
		return fs, nil
	case fdblocks > dblocks:
		r.addf(Error, "%s: xfs superblock: sb_fdblocks %d exceeds sb_dblocks %d", where, fdblocks, dblocks)
		return fs, nil
	case ifree > icount || icount > dblocks*uint64(ipb):
		r.addf(Error, "%s: xfs superblock: sb_icount %d or sb_ifree %d is invalid", where, icount, ifree)
		return fs, nil
	}
	fs.BlockSize = bs
	fs.Size = int64(dblocks) * bs
	fs.Free = int64(fdblocks) * bs
	fs.Used = fs.Size - fs.Free
	// As statfs does: inodes that could still be allocated in free
	// space, capped by the imax_pct share of the disk.
	total := icount + fdblocks*uint64(ipb)
	if pct := uint64(sb[xfsIMaxPct]); pct > 0 {
		if maxi := dblocks * pct / 100 * uint64(ipb); total > maxi {
			total = max(maxi, icount)
		}
	}
	fs.InodesTotal, fs.InodesUsed = int64(total), int64(icount-ifree)
	return fs, nil
}

// btrfs superblock at 64 KiB (ctree.h struct btrfs_super_block).
const (
	btrfsSuperOff   = 64 << 10
	btrfsSuperSize  = 4096
	btrfsCsum       = 0x00 // crc32c of the rest for csum_type 0
	btrfsCsumStart  = 0x20
	btrfsFSID       = 0x20 // [16]
	btrfsMagicOff   = 0x40
	btrfsMagic      = "_BHRfS_M"
	btrfsTotalBytes = 0x70 // u64
	btrfsBytesUsed  = 0x78 // u64
	btrfsNumDevices = 0x88 // u64
	btrfsSectorSize = 0x90 // u32
	btrfsNodeSize   = 0x94 // u32
	btrfsCsumType   = 0xc4 // u16, 0 = crc32c
	btrfsLabel      = 0x12b
	btrfsLabelSize  = 256
)

func probeBtrfs(d dev, where string, r *Report) (*Filesystem, error) {
	sb, err := d.header(btrfsSuperOff, btrfsSuperSize, btrfsMagicOff, btrfsMagic)
	if sb == nil {
		return nil, err
	}
	fs := &Filesystem{Type: "btrfs", UUID: uuidBE(sb[btrfsFSID:]), Label: cstr(sb[btrfsLabel : btrfsLabel+btrfsLabelSize])}
	if le.Uint16(sb[btrfsCsumType:]) == 0 {
		if want, got := le.Uint32(sb[btrfsCsum:]), crc32.Checksum(sb[btrfsCsumStart:], castagnoli); want != got {
			r.addf(Error, "%s: btrfs superblock checksum mismatch (stored %#08x, computed %#08x)", where, want, got)
		}
	}
	ss := int64(le.Uint32(sb[btrfsSectorSize:]))
	total, used := le.Uint64(sb[btrfsTotalBytes:]), le.Uint64(sb[btrfsBytesUsed:])
	devs := le.Uint64(sb[btrfsNumDevices:])
	switch {
	case ss < 512 || ss > 65536 || ss&(ss-1) != 0:
		r.addf(Error, "%s: btrfs superblock: sectorsize %d is invalid", where, ss)
		return fs, nil
	case used > total:
		r.addf(Error, "%s: btrfs superblock: bytes_used %d exceeds total_bytes %d", where, used, total)
		return fs, nil
	case devs == 1 && total > uint64(d.size):
		r.addf(Error, "%s: btrfs superblock: total_bytes %d does not fit the %d-byte device", where, total, d.size)
		return fs, nil
	case total > 1<<62:
		r.addf(Error, "%s: btrfs superblock: total_bytes %d is absurd", where, total)
		return fs, nil
	}
	if devs > 1 {
		r.addf(Info, "%s: btrfs filesystem spans %d devices; sizes are for all of them", where, devs)
	}
	fs.BlockSize = ss
	fs.Size, fs.Used, fs.Free = int64(total), int64(used), int64(total-used)
	return fs, nil
}

// Linux swap: the signature ends the first page; the header starts at 1 KiB.
const (
	swapHeaderOff = 1024
	swapLastPage  = 1024 + 4  // u32 index of the last usable page
	swapUUID      = 1024 + 12 // [16]
	swapLabel     = 1024 + 28 // [16]
	swapMagicLen  = 10
)

func probeSwap(d dev, where string, r *Report) (*Filesystem, error) {
	for _, page := range []int64{4096, 8192, 16384, 65536} {
		if d.size < page {
			break
		}
		m, err := d.read(page-swapMagicLen, swapMagicLen)
		if err != nil {
			return nil, err
		}
		if s := string(m); s != "SWAPSPACE2" && s != "SWAP-SPACE" {
			continue
		}
		fs := &Filesystem{Type: "swap", BlockSize: page}
		if string(m) == "SWAP-SPACE" {
			fs.Version = "v0"
			fs.Size = d.size
			return fs, nil
		}
		h, err := d.read(0, swapHeaderOff+512)
		if err != nil {
			return nil, err
		}
		fs.UUID = uuidBE(h[swapUUID:])
		fs.Label = cstr(h[swapLabel : swapLabel+16])
		last := int64(le.Uint32(h[swapLastPage:]))
		if (last+1)*page > d.size {
			r.addf(Error, "%s: swap header: last_page %d × %d-byte pages does not fit the %d-byte device", where, last, page, d.size)
			fs.Size = d.size
			return fs, nil
		}
		fs.Size = (last + 1) * page
		return fs, nil
	}
	return nil, nil
}

// LUKS header (LUKS1 and LUKS2 share the first fields).
const (
	luksMagic     = "LUKS\xba\xbe"
	luksVersion   = 6   // u16 big-endian
	luks2Label    = 24  // [48], LUKS2 only
	luksUUID      = 168 // [40] text
	luksUUIDLen   = 40
	luksHdrPrefix = 208
)

func probeLUKS(d dev, where string, r *Report) (*Filesystem, error) {
	h, err := d.header(0, luksHdrPrefix, 0, luksMagic)
	if h == nil {
		return nil, err
	}
	v := be.Uint16(h[luksVersion:])
	fs := &Filesystem{Type: "crypto_LUKS", Version: fmt.Sprintf("LUKS%d", v), Encrypted: true, Size: d.size,
		UUID: cstr(h[luksUUID : luksUUID+luksUUIDLen])}
	if v == 2 {
		fs.Label = cstr(h[luks2Label : luks2Label+48])
	} else if v != 1 {
		r.addf(Warning, "%s: LUKS header has unknown version %d", where, v)
	}
	return fs, nil
}

// ISO 9660 primary volume descriptor at sector 16 (2048-byte sectors).
const (
	isoPVDOff        = 16 * 2048
	isoPVDSize       = 2048
	isoMagic         = "CD001"
	isoVolumeID      = 40  // [32] a-characters
	isoSpaceSize     = 80  // u32 LE (both-endian field)
	isoLogicalBlock  = 128 // u16 LE (both-endian field)
	isoCreationDate  = 813 // [17] "YYYYMMDDHHMMSSCC" + zone
	isoDescTypePrim  = 1
	isoMinBlock      = 512
	isoMaxBlock      = 2048
	isoDateDigits    = 16
	isoMaxDescriptor = 16
)

func probeISO(d dev, where string, r *Report) (*Filesystem, error) {
	pvd, err := d.header(isoPVDOff, isoPVDSize, 1, isoMagic)
	if pvd == nil {
		return nil, err
	}
	fs := &Filesystem{Type: "iso9660"}
	if pvd[0] != isoDescTypePrim {
		r.addf(Warning, "%s: iso9660: first volume descriptor has type %d, not primary", where, pvd[0])
		return fs, nil
	}
	fs.Label = cstr(pvd[isoVolumeID : isoVolumeID+32])
	bs := int64(le.Uint16(pvd[isoLogicalBlock:]))
	if bs < isoMinBlock || bs > isoMaxBlock || bs&(bs-1) != 0 {
		r.addf(Error, "%s: iso9660: logical block size %d is invalid", where, bs)
		return fs, nil
	}
	fs.BlockSize = bs
	fs.Size = int64(le.Uint32(pvd[isoSpaceSize:])) * bs
	fs.Used = fs.Size
	if fs.Size > d.size {
		r.addf(Warning, "%s: iso9660 volume space size %d is larger than the %d-byte device", where, fs.Size, d.size)
	}
	// blkid's UUID for ISO 9660 is the creation date: YYYY-MM-DD-HH-MM-SS-CC.
	if date := pvd[isoCreationDate : isoCreationDate+isoDateDigits]; digits(date) && !bytes.Equal(date, bytes.Repeat([]byte("0"), isoDateDigits)) {
		s := string(date)
		fs.UUID = strings.Join([]string{s[0:4], s[4:6], s[6:8], s[8:10], s[10:12], s[12:14], s[14:16]}, "-")
	}
	return fs, nil
}

func digits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// BitLocker volume header (libbde's "BitLocker Drive Encryption (BDE)
// format"): the boot sector of the encrypted NTFS volume says -FVE-FS-
// where NTFS says "NTFS    ". BitLocker To Go keeps a FAT boot sector
// (MSWIN4.1) and is told apart by its FVE metadata block.
const (
	bdeMagicVista   = "\xeb\x52\x90-FVE-FS-"
	bdeMagicWin7    = "\xeb\x58\x90-FVE-FS-"
	bdeMagicToGo    = "\xeb\x58\x90MSWIN4.1"
	bdeSignature    = "-FVE-FS-"
	bdeWin7Metadata = 176 // u64 byte offset of the first FVE metadata block
	bdeToGoMetadata = 440
	bdeFVEVersion   = 10 // u16 in the metadata block header
	bdeFVEHeader    = 12
)

// bootSector reads the first 512 bytes of d; nil when d is smaller.
func bootSector(d dev) ([]byte, error) {
	return d.header(0, 512, 0, "")
}

func probeBitLocker(d dev, where string, r *Report) (*Filesystem, error) {
	bs, err := bootSector(d)
	if bs == nil {
		return nil, err
	}
	var metaAt int
	switch string(bs[:11]) {
	case bdeMagicVista:
		return &Filesystem{Type: "BitLocker", Encrypted: true, Size: d.size}, nil
	case bdeMagicWin7:
		metaAt = bdeWin7Metadata
	case bdeMagicToGo:
		metaAt = bdeToGoMetadata
	default:
		return nil, nil
	}
	fs := &Filesystem{Type: "BitLocker", Encrypted: true, Size: d.size}
	off := le.Uint64(bs[metaAt:])
	var meta []byte
	if off > 0 && off <= uint64(d.size-bdeFVEHeader) {
		if meta, err = d.read(int64(off), bdeFVEHeader); err != nil {
			return nil, err
		}
	}
	if meta == nil || string(meta[:8]) != bdeSignature {
		if string(bs[:11]) == bdeMagicToGo {
			return nil, nil // a plain FAT volume formatted by Windows
		}
		r.addf(Warning, "%s: BitLocker volume header: no FVE metadata block at offset %d", where, off)
		return fs, nil
	}
	fs.Version = fmt.Sprint(le.Uint16(meta[bdeFVEVersion:]))
	return fs, nil
}
