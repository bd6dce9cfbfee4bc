package inspect

import (
	"errors"
	"fmt"
	"hash/crc32"
)

// XFS free space: the by-block-number free space btree (bnobt) of every
// allocation group, checked against the AGF's free block count. The log
// decides whether the filesystem is clean: its last record must be an
// unmount record.

// Superblock, AGF, btree block and log record fields (big-endian).
const (
	xfsLogStartOff     = 48  // u64 fsblock of an internal log, 0 for an external one
	xfsVersionNum      = 100 // u16, low nibble is the version
	xfsAGBlkLog        = 124 // u8
	xfsInProgress      = 126 // u8, mkfs not finished
	xfsIncompat        = 216 // u32 (v5)
	xfsSuperCRC        = 224 // u32 little-endian crc32c (v5)
	xfsMetaUUID        = 248 // [16] (incompat meta_uuid)
	xfsIncompatMetaUID = 0x4
	xfsIncompatRepair  = 0x10 // needsrepair
	xfsIncompatKnown   = 0x3f
	xfsVersion5        = 5

	xfsAGFMagic     = "XAGF"
	xfsAGFVersion   = 4  // u32, 1
	xfsAGFSeqno     = 8  // u32
	xfsAGFLength    = 12 // u32
	xfsAGFBnoRoot   = 16 // u32
	xfsAGFBnoLevel  = 28 // u32
	xfsAGFFreeBlks  = 52 // u32
	xfsAGFUUID      = 64 // [16] (v5)
	xfsAGFCRC       = 216
	xfsAGHeaderSecs = 4 // sb, AGF, AGI, AGFL: one sector each

	xfsBnoMagic4   = "ABTB"
	xfsBnoMagic5   = "AB3B"
	xfsBtLevel     = 4  // u16
	xfsBtNumRecs   = 6  // u16
	xfsBtBlkno     = 16 // u64 daddr of the block (v5)
	xfsBtUUID      = 32 // [16] (v5)
	xfsBtOwner     = 48 // u32 AG number (v5)
	xfsBtCRC       = 52 // (v5)
	xfsBtHeader4   = 16
	xfsBtHeader5   = 56
	xfsBtMaxLevels = 9
	xfsBtRecSize   = 8 // startblock, blockcount
	xfsBtPtrSize   = 4

	xfsLogMagic     = 0xfeedbabe
	xfsLogBB        = 512
	xfsLogRecCycle  = 4  // u32
	xfsLogRecVer    = 8  // u32, 2 for v2 logs
	xfsLogRecLen    = 12 // u32 bytes of data
	xfsLogRecOps    = 40 // u32 log operations in the record
	xfsLogRecSize   = 320
	xfsLogHdrCycle  = 32 << 10 // a v2 header block covers this much data
	xfsLogOpFlags   = 9        // u8 in the first operation header
	xfsLogUnmount   = 0x20
	xfsLogScanBBs   = 4096 // in-flight log writes may land out of order this far back
	xfsMaxAGs       = 1 << 20
	xfsMaxNodeVisit = 1 << 20
)

type xfsGeom struct {
	sb                   []byte
	bs, sect, ags, agblk int64
	dblocks              int64
	v5                   bool
	uuid                 []byte
}

func xfsFree(d dev, force bool, l *freeList) error {
	sb, err := d.read(0, xfsSuperSize)
	if err != nil {
		return err
	}
	if string(sb[:4]) != xfsMagic {
		return errors.New("no XFS superblock")
	}
	r := &Report{}
	if fs, err := probeXFS(d, "", r); err != nil || fs == nil || fs.Size == 0 {
		return fmt.Errorf("superblock is invalid: %v", r.Findings)
	}
	g := &xfsGeom{sb: sb, bs: int64(be.Uint32(sb[xfsBlockSize:])), sect: int64(be.Uint16(sb[xfsSectSize:])),
		ags: int64(be.Uint32(sb[xfsAGCount:])), agblk: int64(be.Uint32(sb[xfsAGBlocks:])), dblocks: int64(be.Uint64(sb[xfsDBlocks:]))}
	g.v5 = be.Uint16(sb[xfsVersionNum:])&0xf == xfsVersion5
	g.uuid = sb[xfsUUID : xfsUUID+16]
	switch {
	case g.ags < 1 || g.ags > xfsMaxAGs || g.agblk < xfsAGHeaderSecs || (g.ags-1)*g.agblk >= g.dblocks || g.ags*g.agblk < g.dblocks:
		return fmt.Errorf("%d AGs of %d blocks do not make %d blocks", g.ags, g.agblk, g.dblocks)
	case sb[xfsInProgress] != 0:
		return errors.New("mkfs did not finish (sb_inprogress)")
	case g.sect > g.bs:
		return fmt.Errorf("sector size %d is larger than the block size %d", g.sect, g.bs)
	}
	if g.v5 {
		sec, err := d.read(0, int(g.sect))
		if err != nil {
			return err
		}
		if !xfsCRCOK(sec, xfsSuperCRC) {
			return errors.New("superblock checksum mismatch")
		}
		inc := be.Uint32(sb[xfsIncompat:])
		if inc&^xfsIncompatKnown != 0 {
			return fmt.Errorf("unknown incompatible features %#x", inc)
		}
		if inc&xfsIncompatMetaUID != 0 {
			g.uuid = sb[xfsMetaUUID : xfsMetaUUID+16]
		}
		if inc&xfsIncompatRepair != 0 && !force {
			return dirty("marked as needing repair")
		}
	}
	logSpan, err := g.log(d, force)
	if err != nil {
		return err
	}
	protect := []span{logSpan}
	for ag := int64(0); ag < g.ags; ag++ {
		start := ag * g.agblk * g.bs
		protect = append(protect, span{start: start, end: start + xfsAGHeaderSecs*g.sect})
		if err := g.agFree(d, ag, l); err != nil {
			return err
		}
	}
	l.protect(protect)
	return nil
}

// xfsCRCOK checks a v5 metadata block's crc32c, stored little-endian at off.
func xfsCRCOK(b []byte, off int) bool {
	want := le.Uint32(b[off:])
	c := crc32.Update(0, castagnoli, b[:off])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	return crc32.Update(c, castagnoli, b[off+4:]) == want
}

// agFree adds the free extents of allocation group ag.
func (g *xfsGeom) agFree(d dev, ag int64, l *freeList) error {
	agStart := ag * g.agblk
	length := min(g.agblk, g.dblocks-agStart)
	agf, err := d.read(agStart*g.bs+g.sect, int(g.sect))
	if err != nil {
		return err
	}
	switch {
	case string(agf[:4]) != xfsAGFMagic || be.Uint32(agf[xfsAGFVersion:]) != 1:
		return fmt.Errorf("AG %d: no AGF", ag)
	case int64(be.Uint32(agf[xfsAGFSeqno:])) != ag || int64(be.Uint32(agf[xfsAGFLength:])) != length:
		return fmt.Errorf("AG %d: AGF says AG %d of %d blocks", ag, be.Uint32(agf[xfsAGFSeqno:]), be.Uint32(agf[xfsAGFLength:]))
	case g.v5 && (!xfsCRCOK(agf, xfsAGFCRC) || string(agf[xfsAGFUUID:xfsAGFUUID+16]) != string(g.uuid)):
		return fmt.Errorf("AG %d: AGF checksum or UUID mismatch", ag)
	}
	root, levels := int64(be.Uint32(agf[xfsAGFBnoRoot:])), int64(be.Uint32(agf[xfsAGFBnoLevel:]))
	if root < 1 || root >= length || levels < 1 || levels > xfsBtMaxLevels {
		return fmt.Errorf("AG %d: bnobt root %d or %d levels is invalid", ag, root, levels)
	}
	w := &xfsWalk{g: g, d: d, ag: ag, length: length, l: l}
	if err := w.node(root, levels-1); err != nil {
		return fmt.Errorf("AG %d: %w", ag, err)
	}
	if want := int64(be.Uint32(agf[xfsAGFFreeBlks:])); w.free != want {
		return fmt.Errorf("AG %d: bnobt holds %d free blocks, the AGF %d", ag, w.free, want)
	}
	return nil
}

// xfsWalk visits a bnobt in key order.
type xfsWalk struct {
	g      *xfsGeom
	d      dev
	ag     int64
	length int64
	l      *freeList
	next   int64 // the next record must start here or later
	free   int64
	visits int
}

func (w *xfsWalk) node(agbno, level int64) error {
	g := w.g
	if w.visits++; w.visits > xfsMaxNodeVisit || agbno < 1 || agbno >= w.length {
		return fmt.Errorf("bnobt block %d is invalid", agbno)
	}
	daddr := (w.ag*g.agblk + agbno) * g.bs
	b, err := w.d.read(daddr, int(g.bs))
	if err != nil {
		return err
	}
	hdr, magic := int64(xfsBtHeader4), xfsBnoMagic4
	if g.v5 {
		hdr, magic = xfsBtHeader5, xfsBnoMagic5
	}
	n := int64(be.Uint16(b[xfsBtNumRecs:]))
	switch {
	case string(b[:4]) != magic || int64(be.Uint16(b[xfsBtLevel:])) != level:
		return fmt.Errorf("bnobt block %d: bad magic or level", agbno)
	case g.v5 && (!xfsCRCOK(b, xfsBtCRC) || int64(be.Uint64(b[xfsBtBlkno:])) != daddr/512 ||
		string(b[xfsBtUUID:xfsBtUUID+16]) != string(g.uuid) || int64(be.Uint32(b[xfsBtOwner:])) != w.ag):
		return fmt.Errorf("bnobt block %d: checksum or owner mismatch", agbno)
	}
	if level == 0 {
		if n > (g.bs-hdr)/xfsBtRecSize {
			return fmt.Errorf("bnobt leaf %d holds %d records", agbno, n)
		}
		for i := int64(0); i < n; i++ {
			r := b[hdr+i*xfsBtRecSize:]
			start, count := int64(be.Uint32(r)), int64(be.Uint32(r[4:]))
			if count < 1 || start < w.next || start >= w.length || count > w.length-start {
				return fmt.Errorf("free extent %d+%d is out of order or outside the AG", start, count)
			}
			w.next = start + count
			w.free += count
			base := w.ag * g.agblk
			if err := w.l.add((base+start)*g.bs, (base+start+count)*g.bs); err != nil {
				return err
			}
		}
		return nil
	}
	maxrecs := (g.bs - hdr) / (xfsBtRecSize + xfsBtPtrSize)
	if n < 1 || n > maxrecs {
		return fmt.Errorf("bnobt node %d holds %d keys", agbno, n)
	}
	for i := int64(0); i < n; i++ {
		child := int64(be.Uint32(b[hdr+maxrecs*xfsBtRecSize+i*xfsBtPtrSize:]))
		if err := w.node(child, level-1); err != nil {
			return err
		}
	}
	return nil
}

// log checks an internal log is clean, unless force, and returns where
// it is (protected whatever the bnobt says).
func (g *xfsGeom) log(d dev, force bool) (span, error) {
	ls := int64(be.Uint64(g.sb[xfsLogStartOff:]))
	lblocks := int64(be.Uint32(g.sb[xfsLogBlocks:]))
	if ls == 0 {
		if !force {
			return span{}, dirty("the log is on another device and cannot be checked")
		}
		return span{}, nil
	}
	agblklog := int64(g.sb[xfsAGBlkLog])
	if agblklog > 31 {
		return span{}, fmt.Errorf("sb_agblklog %d is invalid", agblklog)
	}
	ag, agbno := ls>>agblklog, ls&(1<<agblklog-1)
	start := (ag*g.agblk + agbno) * g.bs
	if ag >= g.ags || agbno >= g.agblk || lblocks < 1 || start+lblocks*g.bs > g.dblocks*g.bs {
		return span{}, fmt.Errorf("log at block %d (%d blocks) is outside the filesystem", ls, lblocks)
	}
	s := span{start: start, end: start + lblocks*g.bs}
	if force {
		return s, nil
	}
	lg := xfsLog{d: d, base: start, bbs: lblocks * g.bs / xfsLogBB}
	clean, err := lg.clean()
	if err != nil {
		return s, dirty("log: %v", err)
	}
	if !clean {
		return s, dirty("the log holds changes to replay (not cleanly unmounted)")
	}
	return s, nil
}

// xfsLog reads an internal log of bbs 512-byte basic blocks at base.
type xfsLog struct {
	d         dev
	base, bbs int64
}

// cycles returns the cycle numbers of n blocks from b, wrapping around
// the end of the log, and which blocks are record headers. A block's
// first word is its cycle, but for a header, whose first word is the
// magic number and the second the cycle.
func (lg xfsLog) cycles(b, n int64) ([]uint32, []bool, error) {
	out, hdr := make([]uint32, 0, n), make([]bool, 0, n)
	for n > 0 {
		b = (b%lg.bbs + lg.bbs) % lg.bbs
		k := min(n, lg.bbs-b)
		p, err := lg.d.read(lg.base+b*xfsLogBB, int(k*xfsLogBB))
		if err != nil {
			return nil, nil, err
		}
		for i := int64(0); i < k; i++ {
			blk := p[i*xfsLogBB:]
			isHdr := be.Uint32(blk) == xfsLogMagic
			if isHdr {
				blk = blk[xfsLogRecCycle:]
			}
			out, hdr = append(out, be.Uint32(blk)), append(hdr, isHdr)
		}
		b, n = b+k, n-k
	}
	return out, hdr, nil
}

func (lg xfsLog) cycle(b int64) (uint32, error) {
	c, _, err := lg.cycles(b, 1)
	if err != nil {
		return 0, err
	}
	return c[0], nil
}

// clean finds the log head as the kernel does (where the cycle number
// drops), requires the blocks written just before it to be in order, and
// reports whether the last record is an unmount record.
func (lg xfsLog) clean() (bool, error) {
	first, err := lg.cycle(0)
	if err != nil {
		return false, err
	}
	last, err := lg.cycle(lg.bbs - 1)
	if err != nil {
		return false, err
	}
	head := lg.bbs // blocks [0, head) carry the newest cycle, the rest the one before
	if first != last {
		if last+1 != first {
			return false, fmt.Errorf("cycle numbers %d and %d do not follow", first, last)
		}
		lo, hi := int64(0), lg.bbs-1
		for hi-lo > 1 {
			mid := lo + (hi-lo)/2
			c, err := lg.cycle(mid)
			if err != nil {
				return false, err
			}
			if c == first {
				lo = mid
			} else {
				hi = mid
			}
		}
		head = hi
	}
	win := min(xfsLogScanBBs, lg.bbs)
	cs, hdrs, err := lg.cycles(head-win, win)
	if err != nil {
		return false, err
	}
	rec, found := int64(0), false
	for i, c := range cs {
		b := head - win + int64(i)
		want := first
		if b < 0 {
			want = first - 1
		}
		if c != want {
			return false, fmt.Errorf("log block %d has cycle %d, not %d: writes were in flight", (b+lg.bbs)%lg.bbs, c, want)
		}
		if hdrs[i] {
			rec, found = b, true
		}
	}
	if !found {
		return false, errors.New("no log record header before the head")
	}
	h, err := lg.d.read(lg.base+(rec+lg.bbs)%lg.bbs*xfsLogBB, xfsLogBB)
	if err != nil {
		return false, err
	}
	hblks := int64(1)
	if be.Uint32(h[xfsLogRecVer:])&2 != 0 {
		hblks = max(1, (int64(be.Uint32(h[xfsLogRecSize:]))+xfsLogHdrCycle-1)/xfsLogHdrCycle)
	}
	data := (int64(be.Uint32(h[xfsLogRecLen:])) + xfsLogBB - 1) / xfsLogBB
	if rec+hblks+data != head || be.Uint32(h[xfsLogRecOps:]) != 1 {
		return false, nil
	}
	op, err := lg.d.read(lg.base+(rec+hblks+lg.bbs)%lg.bbs*xfsLogBB, xfsLogBB)
	if err != nil {
		return false, err
	}
	return op[xfsLogOpFlags]&xfsLogUnmount != 0, nil
}
