package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/diskimg/diskimg/format"
)

// The qcow2 writer.
//
// Uncompressed output is laid out as qemu-img lays it out:
//
//	header cluster | refcount table | refcount blocks | L1 | L2 table | its span's data | L2 table | ...
//
// each L2 table just before the first data cluster of its span, so a span
// that receives no data has none, and the data clusters of a span follow
// its table in guest order. Every cluster of the file is in use once, so
// the refcount blocks are all ones up to the file's last cluster: those in
// the head count the head, and each later one takes the first cluster of
// the range it counts when the file reaches it (the table has room for as
// many as the layout's Data could need). An image with no data ends after
// its L1 entries.
// On a pipe (or a file written front to back, for --checksum) the header
// and tables before the data are written first, from the data scan
// (MarkData), which says which clusters will arrive as data. On a file
// the data clusters that arrive are packed from the data area on, each
// span's table slot left as a hole, and the header and tables are
// written in Close: the same bytes. Clusters that arrive all zero are
// left unallocated (as qemu-img does), on both.

// Compressed output (-c) cannot be laid out up front, because compressed
// sizes are known only after Encode. Its layout is
//
//	header cluster | data, with L2 tables and refcount blocks interleaved | L1 | refcount table
//
// L2 tables are written as soon as the guest offset leaves their span and
// refcount blocks as soon as the file offset leaves their range, so memory
// stays at one L2 table, one refcount block and the L1 and refcount
// tables. On a file the data goes straight after the header cluster and
// the header is written last, at offset 0 (so the engine's --checksum
// cannot be used: the output is not written front to back). On a pipe the
// part after the header is spooled to a temporary file in os.TempDir(),
// which needs about the compressed size in free space, and copied out in
// Close after the header; the bytes are the same as on a file.

// Writer options, by qemu-img's names.
const (
	OptCompat          = "compat"           // 1.1 (v3, default) or 0.10 (v2)
	OptClusterSize     = "cluster_size"     // 512 B to 2 MiB, a power of two
	OptCompressionType = "compression_type" // zlib or zstd, for -c
	OptRefcountBits    = "refcount_bits"    // 8, 16 (default), 32 or 64
	OptLazyRefcounts   = "lazy_refcounts"   // on or off
	OptExtendedL2      = "extended_l2"      // only off
	OptPreallocation   = "preallocation"    // off, metadata, falloc or full
)

// Preallocation modes, as qemu's: metadata allocates every cluster in
// the tables, in guest order, and leaves the clusters that hold no data
// as holes in the file; falloc then reserves the whole file with
// fallocate(2); full writes zeros into them.
const (
	PreallocOff      = "off"
	PreallocMetadata = "metadata"
	PreallocFalloc   = "falloc"
	PreallocFull     = "full"
)

// Header fields the reader does not name, and writer defaults.
const (
	offRefcountTableOffset   = 48
	offRefcountTableClusters = 56
	headerLenV3Written       = 112 // qemu writes the compression type and pads to 8
	defaultClusterBits       = 16  // 64 KiB clusters, qemu's default
	defaultRefcountOrder     = 4   // 16-bit refcounts, qemu's default
	minWriterRefcountOrder   = 3   // narrower refcounts are not implemented
	refTableEntry            = 8   // bytes per refcount table entry
	l1Entry                  = 8   // bytes per L1 entry
	l2Entry                  = 8   // bytes per standard L2 entry
	featureTableEntries      = 8   // entries qemu 7.2 lists
	sectorSize               = 512 // the virtual size is whole sectors
)

// featureTable is the feature name table qemu 7.2 writes into v3 headers:
// type (0 incompatible, 1 compatible, 2 autoclear), bit, name.
var featureTable = [featureTableEntries]struct {
	typ, bit byte
	name     string
}{
	{0, 0, "dirty bit"},
	{0, 1, "corrupt bit"},
	{0, 2, "external data file"},
	{0, 3, "compression type"},
	{0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"},
	{2, 0, "bitmaps"},
	{2, 1, "raw external data"},
}

func init() {
	format.RegisterWriter(&format.WriterFormat{
		Name: Name,
		Options: []format.OptionSpec{
			{Name: OptCompat, Help: "1.1 (qcow2 v3, the default) or 0.10 (v2)", Validate: format.OneOf("1.1", "v3", "0.10", "v2")},
			{Name: OptClusterSize, Help: "cluster size: a power of two from 512 to 2M (default 64k)", Validate: func(v string) error { _, err := parseClusterSize(v); return err }},
			{Name: OptCompressionType, Help: "codec of compressed clusters (-c): zlib (the default) or zstd (v3 only)", Validate: format.OneOf("zlib", "zstd")},
			{Name: OptRefcountBits, Help: "refcount width: 8, 16 (the default), 32 or 64 (v2: 16 only)", Validate: validRefcountBits},
			{Name: OptLazyRefcounts, Help: "on or off (the default; v3 only): set the lazy refcounts feature", Validate: format.OneOf("on", "off")},
			{Name: OptExtendedL2, Help: "off only: extended L2 entries are not implemented", Validate: format.OneOf("off")},
			{Name: OptPreallocation, Help: "off (the default), metadata (every cluster allocated, holes in the file), falloc (metadata, then fallocate the file) or full (metadata, zeros written)",
				Validate: format.OneOf(PreallocOff, PreallocMetadata, PreallocFalloc, PreallocFull)},
		},
		Compress: true,
		Check:    func(o format.WriteOptions) error { _, err := newParams(o); return err },
		New:      format.Creates(NewWriter),
		Measure:  Measure,
	})
}

// parseClusterSize reads a size as qemu does ("65536", "64k", "2M").
func parseClusterSize(v string) (int64, error) {
	s, mul := strings.TrimSpace(v), int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mul, s = 1<<10, s[:n-1]
		case 'm', 'M':
			mul, s = 1<<20, s[:n-1]
		case 'b', 'B':
			s = s[:n-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > 1<<maxClusterBits/mul {
		return 0, fmt.Errorf("must be a power of two from 512 to 2M")
	}
	n *= mul
	if n < 1<<minClusterBits || n&(n-1) != 0 {
		return 0, fmt.Errorf("must be a power of two from 512 to 2M")
	}
	return n, nil
}

func validRefcountBits(v string) error {
	switch v {
	case "8", "16", "32", "64":
		return nil
	case "1", "2", "4":
		return fmt.Errorf("refcount widths below 8 bits are not implemented (use 8, 16, 32 or 64)")
	}
	return fmt.Errorf("must be 8, 16, 32 or 64")
}

// params are the validated options of one output image.
type params struct {
	version     uint32
	clusterBits uint
	cs          int64 // cluster size
	refOrder    uint  // log2 of the refcount width
	zstd        bool
	lazy        bool
	prealloc    string
	size        int64 // virtual size in the header: whole sectors
	l1Size      int64 // L1 entries covering size
}

func (p *params) l2Entries() int64    { return p.cs / l2Entry }
func (p *params) refsPerBlock() int64 { return p.cs * 8 >> p.refOrder }
func (p *params) maxRef() uint64      { return 1<<(1<<p.refOrder) - 1 }

func newParams(o format.WriteOptions) (*params, error) {
	p := &params{version: 3, clusterBits: defaultClusterBits, refOrder: defaultRefcountOrder, prealloc: PreallocOff}
	opt := func(k string) (string, bool) { v, ok := o.Options[k]; return v, ok }
	if v, ok := opt(OptCompat); ok && (v == "0.10" || v == "v2") {
		p.version = 2
	}
	if v, ok := opt(OptClusterSize); ok {
		n, err := parseClusterSize(v)
		if err != nil {
			return nil, fmt.Errorf("qcow2: option cluster_size=%s: %w", v, err)
		}
		p.clusterBits = uint(bits.TrailingZeros64(uint64(n)))
	}
	p.cs = 1 << p.clusterBits
	if v, ok := opt(OptRefcountBits); ok {
		if err := validRefcountBits(v); err != nil {
			return nil, fmt.Errorf("qcow2: option refcount_bits=%s: %w", v, err)
		}
		n, _ := strconv.Atoi(v)
		p.refOrder = uint(bits.TrailingZeros(uint(n)))
		if p.version == 2 && n != 16 {
			return nil, fmt.Errorf("qcow2: refcount_bits=%s needs compat=1.1 (version 2 images have 16-bit refcounts)", v)
		}
	}
	if v, ok := opt(OptCompressionType); ok && v == "zstd" {
		if p.version == 2 {
			return nil, fmt.Errorf("qcow2: compression_type=zstd needs compat=1.1")
		}
		p.zstd = true
	}
	if v, ok := opt(OptLazyRefcounts); ok && v == "on" {
		if p.version == 2 {
			return nil, fmt.Errorf("qcow2: lazy_refcounts=on needs compat=1.1")
		}
		p.lazy = true
	}
	if v, ok := opt(OptExtendedL2); ok && v != "off" {
		return nil, fmt.Errorf("qcow2: extended_l2=%s is not implemented (only off)", v)
	}
	if v, ok := opt(OptPreallocation); ok {
		if v != PreallocOff && o.Compress {
			return nil, fmt.Errorf("qcow2: preallocation=%s cannot be used with compression (-c)", v)
		}
		p.prealloc = v
	}
	if o.Size < 0 {
		return nil, fmt.Errorf("qcow2: negative size %d", o.Size)
	}
	p.size = (o.Size + sectorSize - 1) / sectorSize * sectorSize
	clusters := (p.size + p.cs - 1) / p.cs
	p.l1Size = (clusters + p.l2Entries() - 1) / p.l2Entries()
	if p.l1Size*l1Entry > maxL1Bytes {
		return nil, fmt.Errorf("qcow2: a virtual size of %d bytes needs an L1 table of %d bytes, more than qemu's %d (use a larger cluster_size)", o.Size, p.l1Size*l1Entry, maxL1Bytes)
	}
	return p, nil
}

// refcountClusters returns how many refcount block and table clusters a
// file of clusters other clusters needs, counting the refcount clusters
// themselves (the fixed point qemu computes too).
func (p *params) refcountClusters(clusters int64) (blocks, table int64) {
	perTable := p.cs / refTableEntry
	for {
		nb := (clusters + blocks + table + p.refsPerBlock() - 1) / p.refsPerBlock()
		nt := (nb + perTable - 1) / perTable
		if nb == blocks && nt == table {
			return blocks, table
		}
		blocks, table = nb, nt
	}
}

// Measure answers qemu-img measure for qcow2 output, with qemu's formula:
// the fully allocated size is one header cluster, L2 tables and an L1
// table for the whole disk, refcounts for all of it, and the data; the
// required size drops the data clusters the source does not store.
func Measure(o format.WriteOptions) (format.Measurement, error) {
	p, err := newParams(o)
	if err != nil {
		return format.Measurement{}, err
	}
	vsize := (o.Size + p.cs - 1) / p.cs * p.cs
	meta := p.cs
	nl2e := vsize / p.cs
	nl2e = (nl2e + p.l2Entries() - 1) / p.l2Entries() * p.l2Entries()
	meta += nl2e * l2Entry
	nl1e := nl2e * l2Entry / p.cs
	perCluster := p.cs / l1Entry
	nl1e = (nl1e + perCluster - 1) / perCluster * perCluster
	meta += nl1e * l1Entry
	rb, rt := p.refcountClusters((meta + vsize) / p.cs)
	meta += (rb + rt) * p.cs
	full := meta + vsize
	if p.prealloc == PreallocFalloc || p.prealloc == PreallocFull {
		// The whole file is allocated, as qemu-img measure says too.
		return format.Measurement{Required: full, FullyAllocated: full}, nil
	}
	var data int64
	if o.Layout != nil {
		err := o.Layout.Align(o.Size, p.cs)(func(e format.Extent) error {
			if e.Status == format.Data {
				data += clusterSpan(e, p.cs) * p.cs
			}
			return nil
		})
		if err != nil {
			return format.Measurement{}, err
		}
	}
	return format.Measurement{Required: full - vsize + data, FullyAllocated: full}, nil
}

// clusterSpan is the number of clusters of size cs that e touches.
func clusterSpan(e format.Extent, cs int64) int64 {
	return (e.End()+cs-1)/cs - e.Start/cs
}

// header returns the header cluster: the header, the feature name table
// (v3, when it fits, as qemu does) and the end of the extensions.
func (p *params) header(l1Off, rtOff, rtClusters int64) []byte {
	h := make([]byte, p.cs)
	be := binary.BigEndian
	copy(h, magic)
	be.PutUint32(h[offVersion:], p.version)
	be.PutUint32(h[offClusterBits:], uint32(p.clusterBits))
	be.PutUint64(h[offSize:], uint64(p.size))
	be.PutUint32(h[offL1Size:], uint32(p.l1Size))
	if p.l1Size > 0 {
		be.PutUint64(h[offL1TableOffset:], uint64(l1Off))
	}
	be.PutUint64(h[offRefcountTableOffset:], uint64(rtOff))
	be.PutUint32(h[offRefcountTableClusters:], uint32(rtClusters))
	if p.version == 2 {
		return h
	}
	var inc, compat uint64
	if p.zstd {
		inc |= incCompress
		h[offCompressionType] = compressZstd
	}
	if p.lazy {
		compat |= compatLazyRefcounts
	}
	be.PutUint64(h[offIncompatible:], inc)
	be.PutUint64(h[offCompatible:], compat)
	be.PutUint32(h[offRefcountOrder:], uint32(p.refOrder))
	be.PutUint32(h[offHeaderLength:], headerLenV3Written)
	tableLen := featureTableEntries * featureNameLen
	if headerLenV3Written+extHeaderLen+tableLen+extHeaderLen <= int(p.cs) {
		x := h[headerLenV3Written:]
		be.PutUint32(x, extFeatureNames)
		be.PutUint32(x[4:], uint32(tableLen))
		for i, f := range featureTable {
			e := x[extHeaderLen+i*featureNameLen:]
			e[0], e[1] = f.typ, f.bit
			copy(e[2:featureNameLen], f.name)
		}
		// The end-of-extensions marker that follows is zeros already.
	}
	return h
}

// putRef stores refcount v at index i of a refcount block.
func (p *params) putRef(blk []byte, i int64, v uint64) {
	switch p.refOrder {
	case 3:
		blk[i] = byte(v)
	case 4:
		binary.BigEndian.PutUint16(blk[i*2:], uint16(v))
	case 5:
		binary.BigEndian.PutUint32(blk[i*4:], uint32(v))
	default:
		binary.BigEndian.PutUint64(blk[i*8:], v)
	}
}

// NewWriter returns a qcow2 writer on dst for the options in o; see the
// layouts above. Both modes accept a destination that cannot seek.
func NewWriter(dst format.Target, o format.WriteOptions) (format.Writer, error) {
	p, err := newParams(o)
	if err != nil {
		return nil, err
	}
	layout := o.Layout
	if layout == nil || p.prealloc != PreallocOff {
		// Preallocated: every cluster has its place, in guest order.
		layout = format.AllData(o.Size)
	}
	out, err := format.NewOutput(dst, Name)
	if err != nil {
		return nil, err
	}
	if o.Compress {
		return newCompressedWriter(dst, out, p, o.Size)
	}
	w, err := newPlainWriter(out, p, o.Size, layout.Align(o.Size, p.cs), o.FrontToBack || p.prealloc != PreallocOff)
	if err != nil {
		return nil, err
	}
	w.fd, _ = dst.(format.FileDescriptor)
	return w, nil
}

// spanBits records which clusters of each L2 span the layout calls Data:
// one bit per cluster, allocated only for spans holding data.
type spanBits struct {
	perSpan int64
	spans   [][]uint64
}

func (s *spanBits) set(c int64) {
	i := c / s.perSpan
	if s.spans[i] == nil {
		s.spans[i] = make([]uint64, (s.perSpan+63)/64)
	}
	j := c % s.perSpan
	s.spans[i][j/64] |= 1 << (j % 64)
}

func (s *spanBits) unset(c int64) {
	if b := s.spans[c/s.perSpan]; b != nil {
		j := c % s.perSpan
		b[j/64] &^= 1 << (j % 64)
	}
}

// count returns how many clusters in [c0, c1) are set.
func (s *spanBits) count(c0, c1 int64) int64 {
	var n int64
	for c0 < c1 {
		i := c0 / s.perSpan
		end := min(c1, (i+1)*s.perSpan)
		if b := s.spans[i]; b != nil {
			for j := c0 - i*s.perSpan; j < end-i*s.perSpan; {
				w := b[j/64] >> (j % 64)
				k := min(64-j%64, end-i*s.perSpan-j)
				if k < 64 {
					w &= 1<<k - 1
				}
				n += int64(bits.OnesCount64(w))
				j += k
			}
		}
		c0 = end
	}
	return n
}

// plainWriter writes uncompressed images (see the layout above).
type plainWriter struct {
	p     *params
	out   *format.Output
	fd    format.FileDescriptor // the file, for preallocation=falloc
	lazy  bool                  // a file: data is compacted, tables come last
	size  int64                 // guest size the blocks cover
	alloc spanBits
	// l2Item is each span's L2 table as a cluster of the body (see
	// bodyCluster), -1 for none; items counts the body's clusters placed.
	l2Item []int64
	items  int64
	next   int64 // guest offset of the next block
	// metaDone: the head is written (on a pipe, before the first Write).
	metaDone bool
	scratch  []byte

	per                     int64 // clusters a refcount block counts
	rtc, rbHead, l1Clusters int64 // refcount table clusters, blocks in the head, L1 clusters
	rtOff, rbOff, l1Off     int64
	dataOff                 int64 // where the body starts
	end                     int64 // on a pipe, where the image ends
}

func newPlainWriter(out *format.Output, p *params, size int64, layout format.Layout, frontToBack bool) (*plainWriter, error) {
	w := &plainWriter{p: p, out: out, size: size, l2Item: make([]int64, p.l1Size)}
	for i := range w.l2Item {
		w.l2Item[i] = -1
	}
	w.alloc = spanBits{perSpan: p.l2Entries(), spans: make([][]uint64, p.l1Size)}
	// Note which clusters the layout calls Data, and count them and their
	// L2 tables: at most this many clusters follow the head.
	var tables, data int64
	lastSpan := int64(-1)
	err := layout(func(e format.Extent) error {
		if e.Status != format.Data {
			return nil
		}
		if e.Start < 0 || e.End() > size {
			return fmt.Errorf("qcow2: layout range [%d,+%d) outside the disk", e.Start, e.Length)
		}
		c0, c1 := e.Start/p.cs, (e.End()+p.cs-1)/p.cs
		data += c1 - c0
		for c := c0; c < c1; c++ {
			w.alloc.set(c)
			if s := c / p.l2Entries(); s != lastSpan {
				tables++
				lastSpan = s
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	w.l1Clusters = (p.l1Size*l1Entry + p.cs - 1) / p.cs
	w.per = p.refsPerBlock()
	// The refcount table has room for the most the layout may need; the
	// blocks in the head count the head, and each later one sits at the
	// first cluster it counts, placed when the file reaches it.
	_, w.rtc = p.refcountClusters(1 + w.l1Clusters + tables + data)
	for w.rbHead = 1; w.rbHead*w.per < 1+w.rtc+w.rbHead+w.l1Clusters; w.rbHead++ {
	}
	w.rtOff = p.cs
	w.rbOff = w.rtOff + w.rtc*p.cs
	w.l1Off = w.rbOff + w.rbHead*p.cs
	w.dataOff = w.l1Off + w.l1Clusters*p.cs
	w.scratch = make([]byte, p.cs)
	if out.Seekable() && !frontToBack {
		// The body first, from dataOff on (skipped at its first
		// cluster); the metadata in Close.
		w.lazy = true
		return w, nil
	}
	// On a pipe (or a file written front to back) the head goes first,
	// at the first Write: until then the engine may report which
	// clusters of the layout hold data (MarkData); the zero ones then
	// stay unallocated exactly as on a file.
	return w, nil
}

// NeedsDataScan is true on a pipe, where the tables precede the data:
// the clusters to allocate then come from MarkData, not the layout.
func (w *plainWriter) NeedsDataScan() bool {
	if w.lazy || w.p.prealloc != PreallocOff {
		return false // the tables come last, or allocate every cluster
	}
	for i := range w.alloc.spans {
		w.alloc.spans[i] = nil
	}
	return true
}

// MarkData allocates the clusters of a block that will carry data.
func (w *plainWriter) MarkData(start, length int64) {
	if w.metaDone || start < 0 || length <= 0 || start+length > w.size {
		return
	}
	for c := start / w.p.cs; c < (start+length+w.p.cs-1)/w.p.cs; c++ {
		w.alloc.set(c)
	}
}

// bodyCluster returns the file cluster of the i-th cluster of the body,
// the L2 tables and data clusters in order after the head: from block
// rbHead on, a refcount block takes the first cluster of its range.
func (w *plainWriter) bodyCluster(i int64) int64 {
	c := w.dataOff/w.p.cs + i
	first := w.rbHead * w.per
	if c < first {
		return c
	}
	j := c - first
	return first + j/(w.per-1)*w.per + 1 + j%(w.per-1)
}

// blockOffset returns the file offset of refcount block k.
func (w *plainWriter) blockOffset(k int64) int64 {
	if k < w.rbHead {
		return w.rbOff + k*w.p.cs
	}
	return k * w.per * w.p.cs
}

// headEnd is where an image with no L2 table ends: after its L1 entries,
// as qemu-img ends it (a last cluster in part).
func (w *plainWriter) headEnd() int64 { return w.l1Off + w.p.l1Size*l1Entry }

// bodyEnd is where the image ends after its body.
func (w *plainWriter) bodyEnd(items int64) int64 {
	if items == 0 {
		return w.headEnd()
	}
	return (w.bodyCluster(items-1) + 1) * w.p.cs
}

// streamMeta writes the head on a pipe (or a file written front to
// back), once, before the first Write: every cluster still set in alloc
// will arrive, so the place of each L2 table is known.
func (w *plainWriter) streamMeta() error {
	if w.lazy || w.metaDone {
		return nil // written last, or already
	}
	w.metaDone = true
	var n int64
	for i, b := range w.alloc.spans {
		if anySet(b) {
			w.l2Item[i] = n
			n += 1 + w.alloc.count(int64(i)*w.alloc.perSpan, int64(i+1)*w.alloc.perSpan)
		}
	}
	w.end = w.bodyEnd(n)
	return w.writeHead(w.end)
}

// writeHead writes everything before dataOff for a file of end bytes,
// all of its clusters in use: the header, the refcount table, the
// refcount blocks of the head, L1 (cut at end).
func (w *plainWriter) writeHead(end int64) error {
	p := w.p
	clusters := (end + p.cs - 1) / p.cs
	blocks := max(w.rbHead, (clusters+w.per-1)/w.per)
	be := binary.BigEndian
	out := w.out
	if _, err := out.Write(p.header(w.l1Off, w.rtOff, w.rtc)); err != nil {
		return err
	}
	perTab := p.cs / refTableEntry
	if blocks > w.rtc*perTab {
		return fmt.Errorf("qcow2: internal error: %d refcount blocks, a table for %d", blocks, w.rtc*perTab)
	}
	// The refcount table, and the blocks of the head; what follows
	// their entries is a hole on a file, as qemu leaves it.
	var entry [8]byte
	for i := range blocks {
		be.PutUint64(entry[:], uint64(w.blockOffset(i)))
		if _, err := out.Write(entry[:]); err != nil {
			return err
		}
	}
	if err := out.Skip(w.rtc*p.cs - blocks*refTableEntry); err != nil {
		return err
	}
	for k := range w.rbHead {
		if err := w.writeBlock(k, clusters); err != nil {
			return err
		}
	}
	// L1 table.
	var done int64 // L1 entries written
	for i, item := range w.l2Item {
		if item < 0 {
			continue
		}
		if err := writeZeros(out, (int64(i)-done)*l1Entry); err != nil {
			return err
		}
		be.PutUint64(entry[:], uint64(w.bodyCluster(item)*p.cs)|l2Copied)
		if _, err := out.Write(entry[:]); err != nil {
			return err
		}
		done = int64(i) + 1
	}
	return out.Skip(min(w.l1Clusters*p.cs, end-w.l1Off) - done*l1Entry)
}

// writeBlock writes refcount block k of a file of clusters clusters, all
// in use once: its counts, and a hole after them on a file.
func (w *plainWriter) writeBlock(k, clusters int64) error {
	n := max(0, min(w.per, clusters-k*w.per))
	tab := w.scratch
	clear(tab)
	for i := range n {
		w.p.putRef(tab, i, 1)
	}
	used := (n<<w.p.refOrder + 7) / 8
	if _, err := w.out.Write(tab[:used]); err != nil {
		return err
	}
	return w.out.Skip(w.p.cs - used)
}

// l2Table returns span i's L2 table: its data clusters follow the table
// in guest order, in the body.
func (w *plainWriter) l2Table(i int) []byte {
	tab := w.scratch
	clear(tab)
	b, item := w.alloc.spans[i], w.l2Item[i]
	for j := int64(0); j < w.alloc.perSpan; j++ {
		if b[j/64]&(1<<(j%64)) != 0 {
			item++
			binary.BigEndian.PutUint64(tab[j*l2Entry:], uint64(w.bodyCluster(item)*w.p.cs)|l2Copied)
		}
	}
	return tab
}

func anySet(b []uint64) bool {
	for _, x := range b {
		if x != 0 {
			return true
		}
	}
	return false
}

func writeZeros(w io.Writer, n int64) error {
	_, err := format.WriteZeros(w, n)
	return err
}

// BlockSize is the cluster size.
func (w *plainWriter) BlockSize() int64 { return w.p.cs }

// Encode does nothing: data is stored as it is.
func (w *plainWriter) Encode(*format.Block) error { return nil }

// Write stores a block's clusters, span by span, each span's L2 table
// before its first cluster: in their laid-out places on a pipe, packed
// one after the other on a file.
func (w *plainWriter) Write(b *format.Block) error {
	if b.Start != w.next || b.Length <= 0 || b.End() > w.size {
		return fmt.Errorf("qcow2: block [%d,+%d) out of order or outside the disk (next %d, size %d)", b.Start, b.Length, w.next, w.size)
	}
	if err := w.streamMeta(); err != nil {
		return err
	}
	w.next = b.End()
	cs, per := w.p.cs, w.alloc.perSpan
	if b.Status == format.Data {
		c0, c1 := b.Start/cs, (b.End()+cs-1)/cs
		if int64(len(b.Data)) != b.Length {
			return fmt.Errorf("qcow2: data block [%d,+%d) carries %d bytes", b.Start, b.Length, len(b.Data))
		}
		if w.alloc.count(c0, c1) != c1-c0 {
			return fmt.Errorf("qcow2: data block [%d,+%d) outside the layout's data", b.Start, b.Length)
		}
	}
	for c := b.Start / cs; c*cs < b.End(); {
		span := c / per
		c1 := min((span+1)*per, (b.End()+cs-1)/cs)
		if err := w.writeSpan(b, span, c, c1); err != nil {
			return err
		}
		c = c1
	}
	return nil
}

// writeSpan writes clusters [c0, c1) of block b, all in one span.
func (w *plainWriter) writeSpan(b *format.Block, span, c0, c1 int64) error {
	cs := w.p.cs
	n := w.alloc.count(c0, c1)
	if n == 0 {
		return nil
	}
	if b.Status != format.Data && w.lazy {
		// On a file the laid-out clusters are dropped: unallocated.
		for c := c0; c < c1; c++ {
			w.alloc.unset(c)
		}
		return nil
	}
	if err := w.startSpan(span); err != nil {
		return err
	}
	holes := w.p.prealloc == PreallocMetadata || w.p.prealloc == PreallocFalloc
	if b.Status != format.Data {
		return w.body(n, func(_, k int64) error {
			if holes {
				return w.out.Skip(k * cs) // a hole on a file, zeros on a pipe
			}
			return writeZeros(w.out, k*cs)
		})
	}
	lo, hi := max(b.Start, c0*cs)-b.Start, min(b.End(), c1*cs)-b.Start
	data := b.Data[lo:hi]
	return w.body(n, func(from, k int64) error {
		d := data[min(from*cs, int64(len(data))):min((from+k)*cs, int64(len(data)))]
		if holes && w.out.Seekable() {
			return w.writeSparse(d, k*cs)
		}
		if _, err := w.out.Write(d); err != nil {
			return err
		}
		// The last cluster of the disk is stored whole.
		return writeZeros(w.out, k*cs-int64(len(d)))
	})
}

// body places the next n clusters of the body at the output's position
// through put(from, k), for each run of k of them from the from-th, with a
// refcount block wherever a cluster begins a block's range: on a file a
// slot that Close fills, on a pipe the block itself.
func (w *plainWriter) body(n int64, put func(from, k int64) error) error {
	cs := w.p.cs
	if w.out.Pos() < w.dataOff {
		if err := w.out.SkipTo(w.dataOff); err != nil { // a file's first cluster of body
			return err
		}
	}
	for from := int64(0); from < n; {
		c := w.out.Pos() / cs
		if c >= w.rbHead*w.per && c%w.per == 0 {
			var err error
			if w.lazy {
				err = w.out.Skip(cs)
			} else {
				err = w.writeBlock(c/w.per, (w.end+cs-1)/cs)
			}
			if err != nil {
				return err
			}
			continue
		}
		if want := w.bodyCluster(w.items); c != want {
			return fmt.Errorf("qcow2: internal error: body cluster %d at cluster %d, not %d", w.items, c, want)
		}
		k := min(n-from, w.per-c%w.per)
		if err := put(from, k); err != nil {
			return err
		}
		from += k
		w.items += k
	}
	return nil
}

// startSpan puts span's L2 table before its first cluster: on a file a
// slot that Close fills, on a pipe the table itself.
func (w *plainWriter) startSpan(span int64) error {
	item := w.l2Item[span]
	switch {
	case w.lazy && item >= 0, !w.lazy && item >= 0 && w.items > item:
		return nil // placed already
	case w.lazy:
		w.l2Item[span] = w.items
		return w.body(1, func(int64, int64) error { return w.out.Skip(w.p.cs) })
	case item != w.items:
		return fmt.Errorf("qcow2: internal error: span %d's L2 table is body cluster %d, the output at %d", span, item, w.items)
	}
	return w.body(1, func(int64, int64) error {
		_, err := w.out.Write(w.l2Table(int(span)))
		return err
	})
}

// sparseUnit is the run of zeros a preallocated image leaves as a hole
// inside a data cluster, as qemu-img convert's default -S.
const sparseUnit = 4 << 10

// writeSparse writes a data block of a preallocated image (metadata,
// falloc) into its clusters' places, span bytes in all, leaving its zero
// 4 KiB runs and the end of its last cluster as holes, as qemu-img convert
// does: the clusters are allocated already and the file reads zeros there.
func (w *plainWriter) writeSparse(data []byte, span int64) error {
	zero := func(i int) bool { return format.IsZero(data[i:min(i+sparseUnit, len(data))]) }
	for i := 0; i < len(data); {
		z, j := zero(i), i+sparseUnit
		for j < len(data) && zero(j) == z {
			j += sparseUnit
		}
		j = min(j, len(data))
		if z {
			if err := w.out.Skip(int64(j - i)); err != nil {
				return err
			}
		} else {
			if _, err := w.out.Write(data[i:j]); err != nil {
				return err
			}
		}
		i = j
	}
	return w.out.Skip(span - int64(len(data)))
}

// Close writes the metadata on a file; on a pipe everything is written.
func (w *plainWriter) Close() error {
	if w.next != w.size {
		return fmt.Errorf("qcow2: blocks end at %d, the disk at %d", w.next, w.size)
	}
	if err := w.streamMeta(); err != nil {
		return err
	}
	end := w.bodyEnd(w.items)
	if pos := w.out.Pos(); w.items > 0 && pos != end || !w.lazy && end != w.end {
		return fmt.Errorf("qcow2: internal error: wrote %d bytes of a %d-byte image (%d planned)", pos, end, w.end)
	}
	// On a file the hole before the data, or a preallocated one, may
	// end it.
	if err := w.out.Finish(end); err != nil {
		return err
	}
	if !w.lazy {
		if w.p.prealloc == PreallocFalloc && w.fd != nil && w.out.Seekable() && end > 0 {
			if err := unix.Fallocate(int(w.fd.Fd()), 0, 0, end); err != nil {
				return fmt.Errorf("qcow2: preallocation=falloc: %w", err)
			}
		}
		return nil
	}
	// On a file: the metadata over the holes left for it, in file order.
	if err := w.out.Rewind(); err != nil {
		return err
	}
	if err := w.writeHead(end); err != nil {
		return err
	}
	clusters := (end + w.p.cs - 1) / w.p.cs
	type slot struct{ off, span, block int64 }
	var slots []slot
	for i, item := range w.l2Item {
		if item >= 0 {
			slots = append(slots, slot{w.bodyCluster(item) * w.p.cs, int64(i), -1})
		}
	}
	for k := w.rbHead; k*w.per < clusters; k++ {
		slots = append(slots, slot{w.blockOffset(k), -1, k})
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i].off < slots[j].off })
	for _, s := range slots {
		if err := w.out.SkipTo(s.off); err != nil {
			return err
		}
		var err error
		if s.span >= 0 {
			_, err = w.out.Write(w.l2Table(int(s.span)))
		} else {
			err = w.writeBlock(s.block, clusters)
		}
		if err != nil {
			return err
		}
	}
	return w.out.EndRewrite()
}
