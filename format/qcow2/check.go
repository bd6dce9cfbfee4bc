package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"sort"

	"github.com/diskimg/diskimg/format"
)

// Structures the check walks that the reader does not.
const (
	extCrypto = 0x0537be77 // full disk encryption header pointer: offset (8), length (8)

	reftOffsetMask   = 0xfffffffffffffe00 // refcount table entry: refcount block offset
	reftReservedMask = 0x1ff
	l2StdReserved    = 0x3f000000000001fe // reserved bits of a standard cluster descriptor
	l1Reserved       = 0x7f000000000001ff // reserved bits of an L1 entry
	l2AllAlloc       = 0xffffffff         // allocation half of a subcluster bitmap

	bmeOffsetMask = 0x00fffffffffffe00 // bitmap table entry: data cluster offset
	bmeReserved   = 0xff000000000001fe
	bmeAllOnes    = 1 // bitmap table entry with no cluster: all bits set
)

// Bounds on the check itself.
const (
	// maxCheckClusters caps the clusters whose reference counts are
	// rebuilt: two 32-bit counters each, within format.MaxTableBytes.
	maxCheckClusters = format.MaxTableBytes / 8
	// maxCheckProblems caps the problem lines kept; the counts go on.
	maxCheckProblems = 1000
	// storedNone marks a stored refcount that could not be read.
	storedNone = math.MaxUint32
)

// l2Visit counts how many L1 entries point at one L2 table, so a table
// named many times is read once and its references multiplied.
type l2Visit struct {
	active, inactive uint64
}

// checker rebuilds the reference counts of an image, as qemu's
// qcow2_check_refcounts does, and compares them with the stored ones.
type checker struct {
	img      *Image
	res      *format.CheckResult
	ctx      context.Context
	fileSize int64
	cs       int64
	bits     uint
	refOrder uint
	refMax   uint64 // largest count the rebuilt table holds

	refs   []uint32 // rebuilt counts, per host cluster
	stored []uint32 // stored counts of clusters [0, nb)
	nb     int64    // clusters compared: the file's, grown by a semi-allocated last one

	reft     []uint64 // refcount table entries held in the file
	reftSize int64    // entries the header declares

	l2s       map[int64]*l2Visit
	activeL1  []byte // raw active L1 entries held in the file
	budget    int64  // bytes of tables the check may still read
	blocks    map[int64][]byte
	blockList []int64
}

// Check rebuilds the image's reference counts from its header, L1 and L2
// tables, snapshots, refcount structures and bitmaps, and reports clusters
// whose stored count is too low (corruptions) or too high (leaks), with
// qemu-img check's counts. It reads metadata only.
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	c := &checker{
		img:      img,
		ctx:      ctx,
		res:      &format.CheckResult{Format: Name, Filename: img.File.Name()},
		fileSize: img.File.Size(),
		cs:       img.clusterSize,
		bits:     img.clusterBits,
		l2s:      map[int64]*l2Visit{},
		blocks:   map[int64][]byte{},
	}
	// Every table read is bounded by the file, and all of them together
	// by a few times its size: a table named twice is read once.
	c.budget = 4*c.fileSize + 64<<20
	sectors := (img.Size() + 511) / 512 * 512
	c.res.TotalClusters = (sectors + c.cs - 1) / c.cs
	if err := c.run(); err != nil {
		return nil, err
	}
	return c.res, nil
}

func (c *checker) corrupt(n uint64, msg string, args ...any) {
	c.res.Corruptions += int64(min(n, math.MaxInt64/2))
	c.note("ERROR "+msg, args...)
}

func (c *checker) checkError(msg string, args ...any) {
	c.res.CheckErrors++
	c.note("Check error: "+msg, args...)
}

func (c *checker) note(msg string, args ...any) {
	if len(c.res.Problems) < maxCheckProblems {
		c.res.Problems = append(c.res.Problems, fmt.Sprintf(msg, args...))
	} else if len(c.res.Problems) == maxCheckProblems {
		c.res.Problems = append(c.res.Problems, "(further problems not listed)")
	}
}

// read returns the part of [off, off+n) that the file holds; the rest
// reads as zeros, as it does for qemu. It spends the read budget.
func (c *checker) read(off, n int64, field string) ([]byte, error) {
	if off < 0 || n <= 0 || off >= c.fileSize {
		return nil, nil
	}
	n = min(n, c.fileSize-off)
	if n > c.budget {
		return nil, errBudget
	}
	c.budget -= n
	buf := make([]byte, n)
	if err := format.ReadFull(c.img.File, buf, off, Name, field); err != nil {
		return nil, err
	}
	return buf, nil
}

var errBudget = fmt.Errorf("metadata tables exceed the check's read limit")

func (c *checker) run() error {
	img := c.img
	be := binary.BigEndian
	var hdr [minHeaderLenV3]byte
	h := hdr[:headerLenV2]
	if err := format.ReadFull(img.File, h, 0, Name, "header"); err != nil {
		return err
	}
	version := be.Uint32(h[offVersion:])
	c.refOrder = v2RefcountOrder
	headerLen := int64(headerLenV2)
	var inc, autoclear uint64
	if version == 3 {
		h = hdr[:]
		if err := format.ReadFull(img.File, h, 0, Name, "header"); err != nil {
			return err
		}
		c.refOrder = uint(be.Uint32(h[offRefcountOrder:]))
		headerLen = int64(be.Uint32(h[offHeaderLength:]))
		inc = be.Uint64(h[offIncompatible:])
		autoclear = be.Uint64(h[offAutoclear:])
	}
	if c.refOrder > maxRefcountOrder {
		return errorf("refcount_order", offRefcountOrder, "%d exceeds %d", c.refOrder, maxRefcountOrder)
	}
	c.refMax = min(uint64(1)<<(1<<c.refOrder)-1, math.MaxUint32-1)
	if c.refOrder == maxRefcountOrder {
		c.refMax = math.MaxUint32 - 1
	}
	if inc&incCorrupt != 0 {
		// qemu-img check does not count the bit itself; say it is set.
		c.note("Warning: the corrupt bit is set in incompatible_features: qemu refuses to write this image")
	}

	nb := (c.fileSize + c.cs - 1) / c.cs
	if nb+1 > maxCheckClusters {
		c.checkError("file of %d clusters exceeds the check's limit of %d", nb, maxCheckClusters)
		return nil
	}
	c.nb = nb
	c.refs = make([]uint32, nb+1)

	err := c.calculate(h, headerLen, autoclear)
	if err == errBudget {
		c.checkError("%v", err)
		return nil
	}
	if err != nil {
		return err
	}
	highest, err := c.compare()
	if err != nil {
		return err
	}
	if err := c.checkCopied(); err != nil {
		if err == errBudget {
			c.checkError("%v", err)
			return nil
		}
		return err
	}
	c.res.ImageEndOffset = (highest + 1) * c.cs
	return nil
}

// refcountTablePlace returns the file offset of the refcount table the
// header h names, and sets c.reftSize to its entries.
func (c *checker) refcountTablePlace(h []byte) int64 {
	c.reftSize = int64(binary.BigEndian.Uint32(h[offRefcountTableClusters:])) << (c.bits - 3)
	return int64(binary.BigEndian.Uint64(h[offRefcountTableOffset:]))
}

// readRefcountTable reads the c.reftSize entries of the refcount table at
// off into c.reft.
func (c *checker) readRefcountTable(off int64) error {
	raw, err := c.read(off, c.reftSize*8, "refcount_table_offset")
	if err != nil {
		return err
	}
	c.reft = make([]uint64, len(raw)/8)
	for i := range c.reft {
		c.reft[i] = binary.BigEndian.Uint64(raw[8*i:])
	}
	return nil
}

// calculate rebuilds the reference counts, in qemu's order.
func (c *checker) calculate(h []byte, headerLen int64, autoclear uint64) error {
	be := binary.BigEndian
	c.inc(0, c.cs, 1) // the header cluster

	l1Size := int64(be.Uint32(h[offL1Size:]))
	l1Off := int64(be.Uint64(h[offL1TableOffset:]))
	if err := c.walkL1(l1Off, l1Size, true); err != nil {
		return err
	}

	// Snapshots and their L1 tables.
	nSnap := int64(be.Uint32(h[offNbSnapshots:]))
	snapOff := int64(be.Uint64(h[offSnapshotsOffset:]))
	snapSize, err := c.snapshots(nSnap, snapOff)
	if err != nil {
		return err
	}
	if err := c.walkL2s(); err != nil {
		return err
	}
	c.inc(snapOff, snapSize, 1)

	// The refcount table.
	reftOff := c.refcountTablePlace(h)
	c.inc(reftOff, c.reftSize*8, 1)
	if err := c.readRefcountTable(reftOff); err != nil {
		return err
	}

	// Encryption header and bitmaps, named by header extensions, which
	// end where the backing file name starts, else with the cluster.
	extEndOff := c.cs
	if bo := be.Uint64(h[offBackingFileOffset:]); bo > uint64(c.cs) {
		// qemu refuses to open the image.
		c.checkError("backing_file_offset %#x: Invalid backing file offset (past the first cluster)", bo)
		return nil
	} else if bo != 0 {
		extEndOff = int64(bo)
		if n := int64(be.Uint32(h[offBackingFileSize:])); n > min(1023, c.cs-extEndOff) {
			c.checkError("backing_file_size %d: Backing file name too long", n)
			return nil
		}
	}
	if err := c.extensions(headerLen, extEndOff, autoclear); err != nil {
		return err
	}
	return c.refblocks()
}

// inc counts mult references to each cluster of [off, off+size).
func (c *checker) inc(off, size int64, mult uint64) {
	if size <= 0 {
		return
	}
	// The last cluster may be partly allocated, so a range may end less
	// than one cluster past the end of the file.
	if off < 0 || off > c.fileSize+c.cs || size >= c.cs+c.fileSize-off {
		c.corrupt(mult, "counting reference for region exceeding the end of the file by one cluster or more: offset 0x%x size 0x%x", off, size)
		return
	}
	for k := off >> c.bits; k <= (off+size-1)>>c.bits; k++ {
		if k >= c.nb {
			c.nb = k + 1
		}
		cur := uint64(c.refs[k])
		if room := c.refMax - cur; mult > room {
			c.corrupt(mult-room, "overflow cluster offset=0x%x", k<<c.bits)
			c.refs[k] = uint32(c.refMax)
			continue
		}
		c.refs[k] = uint32(cur + mult)
	}
}

// walkL1 counts an L1 table of n entries at off and the L2 tables it
// names; the L2 tables are read later, once each.
func (c *checker) walkL1(off, n int64, active bool) error {
	if n == 0 {
		return nil
	}
	c.inc(off, n*8, 1)
	raw, err := c.read(off, n*8, "l1_table_offset")
	if err != nil {
		return err
	}
	if active {
		c.activeL1 = raw
	}
	c.countL1(raw, off, active, false)
	return c.ctx.Err()
}

// snapshots walks the snapshot table and each snapshot's L1 table; it
// returns the table's size in bytes.
func (c *checker) snapshots(n, off int64) (int64, error) {
	// qemu validates the table's place even when it is empty.
	if off&(c.cs-1) != 0 || off < 0 {
		c.checkError("snapshot table offset invalid: %#x is not cluster aligned", off)
		return 0, nil
	}
	if n == 0 {
		return 0, nil
	}
	if c.img.hasDataFile {
		c.corrupt(1, "%d snapshots in image with data file", n)
	}
	if n > maxSnapshots {
		c.checkError("nb_snapshots %d exceeds %d; snapshots not checked", n, maxSnapshots)
		return 0, nil
	}
	if off&7 != 0 {
		c.checkError("snapshots_offset %#x is not 8-byte aligned; snapshots not checked", off)
		return 0, nil
	}
	be := binary.BigEndian
	type l1Key struct{ off, size int64 }
	seen := map[l1Key]bool{}
	pos := off
	for i := int64(0); i < n; i++ {
		pos = (pos + 7) &^ 7
		var e [snapshotHeaderLen]byte
		if pos < 0 || pos > c.fileSize-snapshotHeaderLen {
			c.checkError("snapshot %d at file offset %d lies outside the file; snapshots not checked further", i, pos)
			return pos - off, nil
		}
		if err := format.ReadFull(c.img.File, e[:], pos, Name, "snapshot table"); err != nil {
			return 0, err
		}
		l1Off := int64(be.Uint64(e[0:]))
		l1Size := int64(be.Uint32(e[8:]))
		pos += snapshotHeaderLen + int64(be.Uint32(e[snapExtraOff:])) +
			int64(be.Uint16(e[snapIDLenOff:])) + int64(be.Uint16(e[snapNameLenOff:]))
		switch {
		case l1Off&(c.cs-1) != 0:
			c.corrupt(1, "snapshot %d l1_offset=%#x: L1 table is not cluster aligned; snapshot table entry corrupted", i, l1Off)
			continue
		case l1Size > maxL1Bytes/8:
			c.corrupt(1, "snapshot %d l1_size=%#x: L1 table is too large; snapshot table entry corrupted", i, l1Size)
			continue
		}
		k := l1Key{l1Off, l1Size}
		if seen[k] {
			// The same table again: count it without reading it twice.
			c.inc(l1Off, l1Size*8, 1)
			c.repeatL1(l1Off, l1Size)
			continue
		}
		seen[k] = true
		if err := c.walkL1(l1Off, l1Size, false); err != nil {
			return 0, err
		}
	}
	return pos - off, nil
}

// repeatL1 counts an inactive L1 table already walked once more, from the
// visits it recorded.
func (c *checker) repeatL1(off, n int64) {
	raw, _ := c.readNoBudget(off, n*8)
	c.countL1(raw, off, false, true)
}

// countL1 counts the L2 tables the L1 table raw at off names and records
// their visits; a repeated table's visits were recorded when it was first
// walked, and its misaligned entries were reported with their place then.
func (c *checker) countL1(raw []byte, off int64, active, repeat bool) {
	be := binary.BigEndian
	for i := 0; i+8 <= len(raw); i += 8 {
		e := be.Uint64(raw[i:])
		if e&l1Reserved != 0 {
			c.corrupt(1, "found L1 entry with reserved bits set: %x (L1 entry at file offset %d)", e, off+int64(i))
		}
		l2 := int64(e & offsetMask)
		if l2 == 0 {
			continue
		}
		c.inc(l2, c.cs, 1)
		if l2&(c.cs-1) != 0 {
			where := fmt.Sprintf(" (L1 entry at file offset %d; table not checked)", off+int64(i))
			if repeat {
				where = ""
			}
			c.corrupt(1, "l2_offset=%x: Table is not cluster aligned; L1 entry corrupted%s", l2, where)
			continue
		}
		v := c.l2s[l2]
		if v == nil {
			v = &l2Visit{}
			c.l2s[l2] = v
		}
		if active {
			v.active++
		} else {
			v.inactive++
		}
	}
}

// readNoBudget re-reads a table already read once under the budget.
func (c *checker) readNoBudget(off, n int64) ([]byte, error) {
	saved := c.budget
	c.budget = math.MaxInt64
	b, err := c.read(off, n, "l1_table_offset")
	c.budget = saved
	return b, err
}

// sortedL2s returns the L2 table offsets in file order.
func (c *checker) sortedL2s() []int64 {
	offs := make([]int64, 0, len(c.l2s))
	for off := range c.l2s {
		offs = append(offs, off)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	return offs
}

// entry returns L2 entry i of raw and its subcluster bitmap; entries the
// file does not hold read as zeros.
func (c *checker) entry(raw []byte, i int64) (uint64, uint64) {
	pos := i * c.img.entrySize
	if pos+8 > int64(len(raw)) {
		return 0, 0
	}
	e := binary.BigEndian.Uint64(raw[pos:])
	var bm uint64
	if c.img.extL2 && pos+16 <= int64(len(raw)) {
		bm = binary.BigEndian.Uint64(raw[pos+8:])
	}
	return e, bm
}

// walkL2s counts the clusters every L2 table names, each table read once
// and its references multiplied by the L1 entries naming it.
func (c *checker) walkL2s() error {
	img := c.img
	for _, off := range c.sortedL2s() {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		v := c.l2s[off]
		m := v.active + v.inactive
		raw, err := c.read(off, c.cs, "l2_table")
		if err != nil {
			return err
		}
		var next int64
		var alloc, frag, compressed int64
		n := int64(len(raw)) / img.entrySize
		for i := int64(0); i < n; i++ {
			e, bm := c.entry(raw, i)
			if e&l2Compressed == 0 && e&l2StdReserved != 0 {
				c.corrupt(m, "found l2 entry with reserved bits set: %x (L2 table at %#x, entry %d)", e, off, i)
			}
			host := int64(e & offsetMask)
			switch typ := c.clusterType(e); typ {
			case ctCompressed:
				if e&l2Copied != 0 {
					c.corrupt(m, "coffset=0x%x: copied flag must never be set for compressed clusters", e&(1<<(62-(c.bits-8))-1))
					e &^= l2Copied
				}
				if img.hasDataFile {
					c.corrupt(m, "compressed cluster %d with data file, entry=0x%x", i, e)
					continue
				}
				if bm != 0 {
					c.corrupt(m, "compressed cluster %d with non-zero subcluster allocation bitmap, entry=0x%x", i, e)
					continue
				}
				coff, csize := img.compressedExtent(e)
				c.inc(coff, csize, m)
				alloc++
				compressed++
				// Compressed clusters count as fragmented, as in qemu.
				frag++
			case ctNormal, ctZeroAlloc:
				if (bm>>32)&bm != 0 {
					c.corrupt(m, "offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", host)
				}
				if host&(c.cs-1) != 0 {
					c.corrupt(m, "offset=%x: Cluster is not properly aligned; L2 entry corrupted.", host)
				}
				alloc++
				if next != 0 && host != next {
					frag++
				}
				next = host + c.cs
				if !img.hasDataFile {
					c.inc(host, c.cs, m)
				}
			case ctUnallocated:
				if bm&l2AllAlloc != 0 {
					c.corrupt(m, "Unallocated cluster has non-zero subcluster allocation bitmap (L2 table at %#x, entry %d)", off, i)
				}
			}
		}
		// Only the active L1 table's clusters count as allocated.
		a := int64(v.active)
		c.res.AllocatedClusters += a * alloc
		c.res.FragmentedClusters += a * frag
		c.res.CompressedClusters += a * compressed
	}
	return nil
}

type clusterType uint8

const (
	ctUnallocated clusterType = iota
	ctZeroPlain
	ctZeroAlloc
	ctNormal
	ctCompressed
)

// clusterType classifies an L2 entry as qemu's qcow2_get_cluster_type.
func (c *checker) clusterType(e uint64) clusterType {
	host := e & offsetMask
	switch {
	case e&l2Compressed != 0:
		return ctCompressed
	case !c.img.extL2 && e&l2ZeroFlag != 0:
		if host != 0 {
			return ctZeroAlloc
		}
		return ctZeroPlain
	case host == 0:
		// Offset 0 is a real cluster of an external data file when the
		// copied flag says so.
		if c.img.hasDataFile && e&l2Copied != 0 {
			return ctNormal
		}
		return ctUnallocated
	}
	return ctNormal
}

// extensions counts the clusters of the encryption header and of the
// persistent bitmaps.
func (c *checker) extensions(start, end int64, autoclear uint64) error {
	if end <= start {
		return nil
	}
	// Past the end of the file the area reads as zeros, as in qemu.
	area, err := c.read(start, max(min(end, c.fileSize)-start, 0), "header extensions")
	if err != nil {
		return err
	}
	area = append(area, make([]byte, end-start-int64(len(area)))...)
	be := binary.BigEndian
	for pos := int64(0); pos < int64(len(area)); {
		if pos+extHeaderLen > int64(len(area)) {
			c.checkError("header extension at file offset %d: Header extension too large (its header overruns the extension area)", start+pos)
			return nil
		}
		typ := be.Uint32(area[pos:])
		length := int64(be.Uint32(area[pos+4:]))
		pos += extHeaderLen
		// qemu checks the length first, the end marker's too.
		if length > int64(len(area))-pos {
			c.checkError("header extension %#x at file offset %d: Header extension too large (it overruns the extension area)", typ, start+pos-4)
			return nil
		}
		if typ == extEnd {
			break
		}
		data := area[pos : pos+length]
		switch typ {
		case extCrypto:
			if len(data) >= 16 {
				c.inc(int64(be.Uint64(data)), int64(be.Uint64(data[8:])), 1)
			}
		case extBitmaps:
			if autoclear&autoclearBitmaps != 0 {
				if err := c.bitmaps(data); err != nil {
					return err
				}
			}
		}
		pos += (length + 7) &^ 7
	}
	return nil
}

// bitmaps counts the bitmap directory, each bitmap table and the clusters
// the tables name.
func (c *checker) bitmaps(ext []byte) error {
	if len(ext) < bitmapsExtLen {
		c.corrupt(1, "bitmaps extension of %d bytes", len(ext))
		return nil
	}
	be := binary.BigEndian
	n := int64(be.Uint32(ext))
	dirSize := int64(be.Uint64(ext[8:]))
	dirOff := int64(be.Uint64(ext[16:]))
	if n == 0 {
		return nil
	}
	if dirSize < 0 || dirSize > format.MaxTableBytes || dirOff < 0 {
		c.corrupt(1, "bitmap directory of %d bytes at %#x", dirSize, dirOff)
		return nil
	}
	c.inc(dirOff, dirSize, 1)
	dir, err := c.read(dirOff, dirSize, "bitmap_directory_offset")
	if err != nil {
		return err
	}
	pos := int64(0)
	for i := int64(0); i < n; i++ {
		if pos+bitmapEntryLen > int64(len(dir)) {
			c.corrupt(1, "bitmap directory entry %d at file offset %d does not fit in the directory", i, dirOff+pos)
			return nil
		}
		e := dir[pos:]
		tblOff := int64(be.Uint64(e))
		tblSize := int64(be.Uint32(e[8:]))
		nameLen := int64(be.Uint16(e[18:]))
		extra := int64(be.Uint32(e[20:]))
		if tblOff&(c.cs-1) != 0 {
			c.corrupt(1, "bitmap %d: table offset %#x is not cluster aligned", i, tblOff)
			return nil
		}
		pos += (bitmapEntryLen + extra + nameLen + 7) &^ 7
		c.inc(tblOff, tblSize*8, 1)
		tbl, err := c.read(tblOff, tblSize*8, "bitmap_table_offset")
		if err != nil {
			return err
		}
		for j := 0; j+8 <= len(tbl); j += 8 {
			t := be.Uint64(tbl[j:])
			off := int64(t & bmeOffsetMask)
			if t&bmeReserved != 0 || off != 0 && (t&bmeAllOnes != 0 || off&(c.cs-1) != 0) {
				c.corrupt(1, "bitmap %d: table entry %d (%#x) is invalid", i, j/8, t)
				continue
			}
			if off != 0 {
				c.inc(off, c.cs, 1)
			}
		}
	}
	return nil
}

// refblocks counts the refcount blocks, each of which must be referenced
// exactly once.
func (c *checker) refblocks() error {
	for i, e := range c.reft {
		off := e & reftOffsetMask
		switch {
		case e&reftReservedMask != 0:
			c.corrupt(1, "refcount table entry %d has reserved bits set", i)
			continue
		case off&uint64(c.cs-1) != 0:
			c.corrupt(1, "refcount block %d is not cluster aligned; refcount table entry corrupted", i)
			continue
		case off>>c.bits >= uint64(c.nb):
			c.corrupt(1, "refcount block %d is outside image (offset %#x)", i, off)
			continue
		case off == 0:
			continue
		}
		c.inc(int64(off), c.cs, 1)
		if r := c.refs[off>>c.bits]; r != 1 {
			c.corrupt(1, "refcount block %d refcount=%d", i, r)
		}
	}
	return nil
}

// block returns refcount block data at off (the part the file holds),
// keeping a few blocks cached.
func (c *checker) block(off int64) ([]byte, error) {
	if b, ok := c.blocks[off]; ok {
		return b, nil
	}
	b, err := c.read(off, c.cs, "refcount block")
	if err != nil {
		return nil, err
	}
	if len(c.blockList) >= 8 {
		delete(c.blocks, c.blockList[0])
		c.blockList = c.blockList[1:]
	}
	c.blocks[off] = b
	c.blockList = append(c.blockList, off)
	return b, nil
}

// storedRef returns the stored refcount of cluster k; ok is false when
// its refcount block is misaligned.
func (c *checker) storedRef(k int64) (v uint64, ok bool, err error) {
	perBlockBits := c.bits + 3 - c.refOrder
	ti := k >> perBlockBits
	if ti >= int64(len(c.reft)) || ti >= c.reftSize {
		return 0, true, nil
	}
	off := int64(c.reft[ti] & reftOffsetMask)
	if off == 0 {
		return 0, true, nil
	}
	if off&(c.cs-1) != 0 {
		return 0, false, nil
	}
	b, err := c.block(off)
	if err != nil {
		return 0, false, err
	}
	idx := k & (1<<perBlockBits - 1)
	if c.refOrder < 3 {
		// Sub-byte counts fill each byte from its least significant bit.
		per := int64(8 >> c.refOrder)
		if idx/per >= int64(len(b)) {
			return 0, true, nil
		}
		shift := uint(idx%per) << c.refOrder
		return uint64(b[idx/per]>>shift) & (1<<(1<<c.refOrder) - 1), true, nil
	}
	w := int64(1) << (c.refOrder - 3)
	pos := idx * w
	if pos+w > int64(len(b)) {
		return 0, true, nil
	}
	for _, x := range b[pos : pos+w] {
		v = v<<8 | uint64(x)
	}
	return v, true, nil
}

// compare checks the stored count of each cluster of the file against the
// rebuilt one and returns the highest cluster in use.
func (c *checker) compare() (int64, error) {
	c.stored = make([]uint32, c.nb)
	highest := int64(-1)
	for k := int64(0); k < c.nb; k++ {
		if k&0xffff == 0 {
			if err := c.ctx.Err(); err != nil {
				return 0, err
			}
		}
		s, ok, err := c.storedRef(k)
		if err == errBudget {
			c.checkError("%v", err)
			return highest, nil
		}
		if err != nil {
			return 0, err
		}
		if !ok {
			c.stored[k] = storedNone
			c.checkError("Can't get refcount for cluster %d: refcount block not cluster aligned", k)
			continue
		}
		c.stored[k] = uint32(min(s, math.MaxUint32-1))
		r := uint64(c.refs[k])
		if s > 0 || r > 0 {
			highest = k
		}
		switch {
		case s < r:
			c.corrupt(1, "cluster %d refcount=%d reference=%d", k, s, r)
		case s > r:
			c.res.Leaks++
			c.note("Leaked cluster %d refcount=%d reference=%d", k, s, r)
		}
	}
	return highest, nil
}

// stored returns the stored refcount of host cluster k, reading refcount
// blocks for clusters past the end of the file.
func (c *checker) storedOf(k int64) (uint64, bool, error) {
	if k < int64(len(c.stored)) {
		s := c.stored[k]
		return uint64(s), s != storedNone, nil
	}
	return c.storedRef(k)
}

// checkCopied checks that the copied flag of each active L1 and L2 entry
// is set exactly when the cluster's stored refcount is one.
func (c *checker) checkCopied() error {
	be := binary.BigEndian
	for i := 0; i+8 <= len(c.activeL1); i += 8 {
		e := be.Uint64(c.activeL1[i:])
		l2 := int64(e & offsetMask)
		if l2 == 0 {
			continue
		}
		s, ok, err := c.storedOf(l2 >> c.bits)
		if err != nil {
			return err
		}
		if ok && (s == 1) != (e&l2Copied != 0) {
			c.corrupt(1, "OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", i/8, e, s)
		}
	}
	for _, off := range c.sortedL2s() {
		v := c.l2s[off]
		if v.active == 0 {
			continue
		}
		raw, err := c.read(off, c.cs, "l2_table")
		if err != nil {
			return err
		}
		n := int64(len(raw)) / c.img.entrySize
		for i := int64(0); i < n; i++ {
			e, _ := c.entry(raw, i)
			if t := c.clusterType(e); t != ctNormal && t != ctZeroAlloc {
				continue
			}
			s := uint64(1)
			if !c.img.hasDataFile {
				var ok bool
				if s, ok, err = c.storedOf(int64(e&offsetMask) >> c.bits); err != nil {
					return err
				} else if !ok {
					continue
				}
			}
			if (s == 1) != (e&l2Copied != 0) {
				c.corrupt(v.active, "OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", e, s)
			}
		}
	}
	return nil
}

var _ format.Checker = (*Image)(nil)
