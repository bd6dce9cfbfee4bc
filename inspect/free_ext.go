package inspect

import (
	"errors"
	"fmt"
	"hash/crc32"
)

// ext2/3/4 free space: the block bitmaps of every group, less anything
// the group descriptors, the superblock backups and the journal place
// there (the metadata of a whole flex group sits in its first group).

// Superblock and group descriptor fields used here only.
const (
	extState              = 0x3a  // u16
	extStateValid         = 0x1   // cleanly unmounted
	extStateErrors        = 0x2   // errors detected
	extClustersPerGroup   = 0x24  // u32, equals blocks per group without bigalloc
	extJournalInum        = 0xe0  // u32
	extReservedGDT        = 0xce  // u16 blocks reserved for growing the GDT
	extFirstMetaBG        = 0x104 // u32
	extBackupBGs          = 0x24c // [2]u32 groups with backups (sparse_super2)
	extChecksumSeed       = 0x270 // u32 (csum_seed)
	extCompatSparse2      = 0x200
	extIncompatRecover    = 0x4
	extIncompatMetaBG     = 0x10
	extIncompatCsumSeed   = 0x2000
	extROCompatSparse     = 0x1
	extROCompatGDTCsum    = 0x10
	extROCompatBigalloc   = 0x200
	extGDBlockBitmapLo    = 0x00
	extGDInodeBitmapLo    = 0x04
	extGDFreeBlocksLo     = 0x0c // u16
	extGDFlags            = 0x12 // u16
	extGDBitmapCsumLo     = 0x18 // u16
	extGDChecksum         = 0x1e // u16
	extGDBlockBitmapHi    = 0x20
	extGDInodeBitmapHi    = 0x24
	extGDFreeBlocksHi     = 0x2c // u16
	extGDBitmapCsumHi     = 0x38 // u16
	extGDBitmapCsumHiEnd  = 0x3a // descriptors this long carry 32-bit bitmap checksums
	extBGBlockUninit      = 0x2
	extJournalInode       = 8
	extMaxGroups          = 1 << 22
	extMaxJournalRuns     = 1 << 16
	jbdMagic              = 0xc03b3998 // jbd2 journal superblock, big-endian
	jbdBlockType          = 4
	jbdSuperV1            = 3
	jbdSuperV2            = 4
	jbdStart              = 0x1c // u32 first block of the log; 0: nothing to replay
	jbdSuperSize          = 1024
	extIncompatUnderstood = 0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000
	extROUnderstood       = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000
)

// extGroup is what one group descriptor says.
type extGroup struct {
	blockBitmap, inodeBitmap, inodeTable int64
	free                                 int64
	flags                                uint16
	bitmapCsum                           uint32
}

type extGeom struct {
	*extSuper
	sb                []byte
	bpg               int64
	compat, ro        uint32
	descPerBlock      int64
	csumSeed          uint32
	descBlocks        int64 // blocks of the GDT without meta_bg
	reservedGDT       int64
	firstMetaBG       int64
	inodeTableBlocks  int64
	groupCsum, metaCs bool
}

func extFree(d dev, force bool, l *freeList) error {
	if d.size < extSuperOff+extSuperSize {
		return errors.New("device too small")
	}
	sb, err := d.read(extSuperOff, extSuperSize)
	if err != nil {
		return err
	}
	if le.Uint16(sb[extMagicOff:]) != extMagic {
		return errors.New("no ext superblock")
	}
	s, _, err := parseExtSuper(sb, d.size)
	if err != nil {
		return err
	}
	g := &extGeom{extSuper: s, sb: sb, compat: le.Uint32(sb[extFeatureCompat:]), ro: le.Uint32(sb[extFeatureROCompat:])}
	if err := g.check(force); err != nil {
		return err
	}
	groups := make([]extGroup, s.groups)
	for i := range groups {
		if groups[i], err = g.group(d, int64(i)); err != nil {
			return err
		}
	}
	protect, err := g.metadata(d, groups, force)
	if err != nil {
		return err
	}
	for i, gr := range groups {
		if err := g.freeInGroup(d, int64(i), gr, l); err != nil {
			return err
		}
	}
	l.protect(protect)
	return nil
}

// check refuses what this reader does not understand and, unless
// force, a filesystem that was not cleanly unmounted.
func (g *extGeom) check(force bool) error {
	sb, s := g.sb, g.extSuper
	if s.incompat&^extIncompatUnderstood != 0 || g.ro&^extROUnderstood != 0 {
		return fmt.Errorf("unknown features (incompat %#x, ro_compat %#x)", s.incompat, g.ro)
	}
	if g.ro&extROCompatBigalloc != 0 {
		return errors.New("bigalloc (cluster bitmaps) is not read")
	}
	g.metaCs = g.ro&extROCompatMetaCsum != 0
	g.groupCsum = g.metaCs || g.ro&extROCompatGDTCsum != 0
	if g.metaCs {
		if want, got := le.Uint32(sb[extChecksum:]), ^crc32.Checksum(sb[:extChecksum], castagnoli); want != got {
			return fmt.Errorf("superblock checksum mismatch")
		}
		g.csumSeed = crc32cRaw(^uint32(0), sb[extUUID:extUUID+16])
		if s.incompat&extIncompatCsumSeed != 0 {
			g.csumSeed = le.Uint32(sb[extChecksumSeed:])
		}
	}
	if !force {
		st := le.Uint16(sb[extState:])
		switch {
		case s.incompat&extIncompatRecover != 0:
			return dirty("the journal needs recovery (needs_recovery)")
		case st&extStateErrors != 0:
			return dirty("the superblock records errors")
		case st&extStateValid == 0:
			return dirty("not cleanly unmounted")
		}
	}
	g.bpg = int64(le.Uint32(sb[extBlocksPerGroup:]))
	if g.bpg%8 != 0 || g.bpg > 8*s.blockSize || int64(le.Uint32(sb[extClustersPerGroup:])) != g.bpg {
		return fmt.Errorf("s_blocks_per_group %d does not fit one bitmap block", g.bpg)
	}
	if s.groups > extMaxGroups {
		return fmt.Errorf("%d groups are more than %d", s.groups, extMaxGroups)
	}
	g.descPerBlock = s.blockSize / s.descSize
	g.descBlocks = (s.groups + g.descPerBlock - 1) / g.descPerBlock
	g.reservedGDT = int64(le.Uint16(sb[extReservedGDT:]))
	g.firstMetaBG = int64(le.Uint32(sb[extFirstMetaBG:]))
	g.inodeTableBlocks = (s.inodesPerGroup*s.inodeSize + s.blockSize - 1) / s.blockSize
	return nil
}

// crc32cRaw is the kernel's crc32c(seed, p): no inversion on either side.
func crc32cRaw(seed uint32, p []byte) uint32 { return ^crc32.Update(^seed, castagnoli, p) }

func (g *extGeom) metaBG() bool { return g.incompat&extIncompatMetaBG != 0 }

// first returns the first block of group n.
func (g *extGeom) first(n int64) int64 { return g.firstDataBlock + n*g.bpg }

// hasSuper reports whether group n holds a superblock backup.
func (g *extGeom) hasSuper(n int64) bool {
	switch {
	case n == 0:
		return true
	case g.compat&extCompatSparse2 != 0:
		return n == int64(le.Uint32(g.sb[extBackupBGs:])) || n == int64(le.Uint32(g.sb[extBackupBGs+4:]))
	case n == 1 || g.ro&extROCompatSparse == 0:
		return true
	case n%2 == 0:
		return false
	}
	for _, b := range []int64{3, 5, 7} {
		p := b
		for p < n {
			p *= b
		}
		if p == n {
			return true
		}
	}
	return false
}

// descBlock returns the block holding group n's descriptor.
func (g *extGeom) descBlock(n int64) int64 {
	mg := n / g.descPerBlock
	if !g.metaBG() || mg < g.firstMetaBG {
		return g.firstDataBlock + 1 + mg
	}
	first := mg * g.descPerBlock
	if g.hasSuper(first) {
		return g.first(first) + 1
	}
	return g.first(first)
}

func (g *extGeom) group(d dev, n int64) (extGroup, error) {
	blk := g.descBlock(n)
	if blk >= g.blocks {
		return extGroup{}, fmt.Errorf("group %d: descriptor block %d is outside the filesystem", n, blk)
	}
	b, err := d.read(blk*g.blockSize+n%g.descPerBlock*g.descSize, int(g.descSize))
	if err != nil {
		return extGroup{}, err
	}
	if g.groupCsum {
		if want, got := le.Uint16(b[extGDChecksum:]), g.descCsum(n, b); want != got {
			return extGroup{}, fmt.Errorf("group %d: descriptor checksum mismatch", n)
		}
	}
	gr := extGroup{
		blockBitmap: int64(le.Uint32(b[extGDBlockBitmapLo:])),
		inodeBitmap: int64(le.Uint32(b[extGDInodeBitmapLo:])),
		inodeTable:  int64(le.Uint32(b[extGDInodeTableLo:])),
		free:        int64(le.Uint16(b[extGDFreeBlocksLo:])),
		flags:       le.Uint16(b[extGDFlags:]),
		bitmapCsum:  uint32(le.Uint16(b[extGDBitmapCsumLo:])),
	}
	if g.descSize >= 64 {
		gr.blockBitmap |= int64(le.Uint32(b[extGDBlockBitmapHi:])) << 32
		gr.inodeBitmap |= int64(le.Uint32(b[extGDInodeBitmapHi:])) << 32
		gr.inodeTable |= int64(le.Uint32(b[extGDInodeTableHi:])) << 32
		gr.free |= int64(le.Uint16(b[extGDFreeBlocksHi:])) << 16
	}
	if g.descSize >= extGDBitmapCsumHiEnd {
		gr.bitmapCsum |= uint32(le.Uint16(b[extGDBitmapCsumHi:])) << 16
	}
	for _, blk := range []int64{gr.blockBitmap, gr.inodeBitmap, gr.inodeTable} {
		if blk <= g.firstDataBlock || blk >= g.blocks {
			return extGroup{}, fmt.Errorf("group %d: bitmap or inode table at block %d is outside the filesystem", n, blk)
		}
	}
	return gr, nil
}

// descCsum is a group descriptor's checksum: crc32c with metadata_csum,
// else crc16 (gdt_csum), over the descriptor with the field left out.
func (g *extGeom) descCsum(n int64, b []byte) uint16 {
	var num [4]byte
	le.PutUint32(num[:], uint32(n))
	if g.metaCs {
		c := crc32cRaw(g.csumSeed, num[:])
		c = crc32cRaw(c, b[:extGDChecksum])
		c = crc32cRaw(c, []byte{0, 0})
		c = crc32cRaw(c, b[extGDChecksum+2:g.descSize])
		return uint16(c)
	}
	c := crc16(0xffff, g.sb[extUUID:extUUID+16])
	c = crc16(c, num[:])
	c = crc16(c, b[:extGDChecksum])
	if g.descSize > extGDChecksum+2 {
		c = crc16(c, b[extGDChecksum+2:g.descSize])
	}
	return c
}

// crc16 is the kernel's crc16 (polynomial 0x8005, reflected).
func crc16(c uint16, p []byte) uint16 {
	for _, x := range p {
		c ^= uint16(x)
		for range 8 {
			if c&1 != 0 {
				c = c>>1 ^ 0xa001
			} else {
				c >>= 1
			}
		}
	}
	return c
}

// metadata lists the blocks no bitmap may free, in bytes: the boot
// block, superblocks with their GDT and reserved GDT blocks, meta_bg
// descriptor blocks, every group's bitmaps and inode table, and the
// journal.
func (g *extGeom) metadata(d dev, groups []extGroup, force bool) ([]span, error) {
	bs := g.blockSize
	blocks := func(from, n int64) span { return span{start: from * bs, end: (from + n) * bs} }
	out := []span{{end: max(extSuperOff+extSuperSize, (g.firstDataBlock+1)*bs)}}
	for n := int64(0); n < g.groups; n++ {
		first, super := g.first(n), int64(0)
		if g.hasSuper(n) {
			super = 1
			gdt := g.descBlocks
			if g.metaBG() {
				gdt = min(g.firstMetaBG, g.descBlocks)
			}
			out = append(out, blocks(first, 1+gdt+g.reservedGDT))
		}
		if g.metaBG() && n/g.descPerBlock >= g.firstMetaBG {
			if i := n % g.descPerBlock; i == 0 || i == 1 || i == g.descPerBlock-1 {
				out = append(out, blocks(first+super, 1))
			}
		}
		gr := groups[n]
		out = append(out, blocks(gr.blockBitmap, 1), blocks(gr.inodeBitmap, 1), blocks(gr.inodeTable, g.inodeTableBlocks))
	}
	j, err := g.journal(d, force)
	return append(out, j...), err
}

// journal returns the blocks of an internal journal and, unless force,
// fails when the journal still holds transactions.
func (g *extGeom) journal(d dev, force bool) ([]span, error) {
	inum := le.Uint32(g.sb[extJournalInum:])
	if le.Uint32(g.sb[extFeatureCompat:])&extCompatHasJournal == 0 || inum == 0 {
		return nil, nil
	}
	if inum != extJournalInode {
		return nil, fmt.Errorf("journal inode %d is not %d", inum, extJournalInode)
	}
	fs := &extFS{d: d, s: g.extSuper}
	ino, err := fs.inode(inum)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	n := (ino.size + g.blockSize - 1) / g.blockSize
	if n > g.blocks {
		return nil, fmt.Errorf("journal of %d blocks is larger than the filesystem", n)
	}
	var out []span
	for lb := int64(0); lb < n; {
		phys, run, err := fs.mapBlock(ino, lb)
		if err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		run = min(run, n-lb)
		if phys == 0 || phys >= g.blocks || run > g.blocks-phys || len(out) >= extMaxJournalRuns {
			return nil, fmt.Errorf("journal block %d maps to %d, outside the filesystem", lb, phys)
		}
		if k := len(out); k > 0 && out[k-1].end == phys*g.blockSize {
			out[k-1].end += run * g.blockSize
		} else {
			out = append(out, span{start: phys * g.blockSize, end: (phys + run) * g.blockSize})
		}
		lb += run
	}
	if force || len(out) == 0 {
		return out, nil
	}
	jsb, err := d.read(out[0].start, jbdSuperSize)
	if err != nil {
		return nil, err
	}
	switch t := be.Uint32(jsb[jbdBlockType:]); {
	case be.Uint32(jsb) != jbdMagic || t != jbdSuperV1 && t != jbdSuperV2:
		return nil, errors.New("the journal has no superblock")
	case be.Uint32(jsb[jbdStart:]) != 0:
		return nil, dirty("the journal holds transactions to replay")
	}
	return out, nil
}

// freeInGroup adds the free blocks of group n that its bitmap (or, for a
// group whose bitmap was never written, the group itself) shows.
func (g *extGeom) freeInGroup(d dev, n int64, gr extGroup, l *freeList) error {
	first := g.first(n)
	count := min(g.bpg, g.blocks-first)
	bs := g.blockSize
	if g.groupCsum && gr.flags&extBGBlockUninit != 0 {
		// Free but for the metadata, which the caller protects.
		return l.add(first*bs, (first+count)*bs)
	}
	b, err := d.read(gr.blockBitmap*bs, int(bs))
	if err != nil {
		return err
	}
	if g.metaCs {
		want, got := gr.bitmapCsum, crc32cRaw(g.csumSeed, b[:g.bpg/8])
		if g.descSize < extGDBitmapCsumHiEnd {
			got &= 0xffff
		}
		if want != got {
			return fmt.Errorf("group %d: block bitmap checksum mismatch", n)
		}
	}
	var runs []span
	free, err := bitmapRuns(b, count, func(from, to int64) error {
		runs = append(runs, span{start: (first + from) * bs, end: (first + to) * bs})
		return nil
	})
	if err != nil {
		return err
	}
	if free > gr.free {
		return fmt.Errorf("group %d: bitmap shows %d free blocks, its descriptor %d", n, free, gr.free)
	}
	for _, r := range runs {
		if err := l.add(r.start, r.end); err != nil {
			return err
		}
	}
	return nil
}
