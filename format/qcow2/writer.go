package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
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
// the refcount blocks (sized for the layout's Data) are all ones up to the
// file's last cluster. An image with no data ends after its L1 entries.
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
		New:      func(dst format.Target, o format.WriteOptions) (format.Writer, error) { return NewWriter(dst, o) },
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

// plainWriter writes uncompressed images:
//
//	header | refcount table | refcount blocks | L1 | L2 table of a span | its data clusters | L2 table of the next span | ...
//
// as qemu-img lays them out: an L2 table goes just before the first data
// cluster of its span, so spans that receive no data have none. The
// refcount blocks are sized for every cluster the layout calls Data.
type plainWriter struct {
	p     *params
	out   *format.Output
	fd    format.FileDescriptor // the file, for preallocation=falloc
	lazy  bool                  // a file: data is compacted, tables come last
	size  int64                 // guest size the blocks cover
	alloc spanBits
	l2At  []int64 // file offset of each span's L2 table; 0 for none yet
	next  int64   // guest offset of the next block
	// metaDone: the header and tables before the data are written (on a
	// pipe, before the first Write).
	metaDone bool
	scratch  []byte

	rb, rtc, l1Clusters int64
	rtOff, rbOff, l1Off int64
	dataOff             int64 // where the first L2 table or data goes
	end                 int64 // on a pipe, where the image ends
}

func newPlainWriter(out *format.Output, p *params, size int64, layout format.Layout, frontToBack bool) (*plainWriter, error) {
	w := &plainWriter{p: p, out: out, size: size, l2At: make([]int64, p.l1Size)}
	w.alloc = spanBits{perSpan: p.l2Entries(), spans: make([][]uint64, p.l1Size)}
	// Note which clusters the layout calls Data, and count them and their
	// L2 tables: at most this many clusters follow the metadata.
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
	w.rb, w.rtc = p.refcountClusters(1 + w.l1Clusters + tables + data)
	w.rtOff = p.cs
	w.rbOff = w.rtOff + w.rtc*p.cs
	w.l1Off = w.rbOff + w.rb*p.cs
	w.dataOff = w.l1Off + w.l1Clusters*p.cs
	w.scratch = make([]byte, p.cs)
	if out.Seekable() && !frontToBack {
		// Data first, from dataOff on (skipped at the first); the
		// metadata in Close.
		w.lazy = true
		return w, nil
	}
	// On a pipe (or a file written front to back) the metadata goes
	// first, at the first Write: until then the engine may report which
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

// streamMeta writes the metadata before the data on a pipe (or a file
// written front to back), once, before the first Write: every cluster
// still set in alloc will arrive, so each L2 table's place is known.
func (w *plainWriter) streamMeta() error {
	if w.lazy || w.metaDone {
		return nil // written last, or already
	}
	w.metaDone = true
	pos := w.dataOff
	for i, b := range w.alloc.spans {
		if anySet(b) {
			w.l2At[i] = pos
			pos += (1 + w.alloc.count(int64(i)*w.alloc.perSpan, int64(i+1)*w.alloc.perSpan)) * w.p.cs
		}
	}
	if pos == w.dataOff {
		pos = w.headEnd()
	}
	w.end = pos
	return w.writeHead(pos)
}

// headEnd is where an image with no L2 table ends: after its L1 entries,
// as qemu-img ends it (a last cluster in part).
func (w *plainWriter) headEnd() int64 { return w.l1Off + w.p.l1Size*l1Entry }

// writeHead writes everything before dataOff for a file of end bytes,
// all of its clusters in use: the header, the refcount table and blocks,
// L1 (cut at end).
func (w *plainWriter) writeHead(end int64) error {
	p := w.p
	clusters := (end + p.cs - 1) / p.cs
	be := binary.BigEndian
	out := w.out
	if _, err := out.Write(p.header(w.l1Off, w.rtOff, w.rtc)); err != nil {
		return err
	}
	// Refcount table: block i at rbOff + i clusters.
	tab := w.scratch
	perTab := p.cs / refTableEntry
	for i := int64(0); i < w.rtc*perTab; i++ {
		if i%perTab == 0 {
			clear(tab)
		}
		if i < w.rb {
			be.PutUint64(tab[i%perTab*refTableEntry:], uint64(w.rbOff+i*p.cs))
		}
		if (i+1)%perTab == 0 {
			if _, err := out.Write(tab); err != nil {
				return err
			}
		}
	}
	if clusters > w.rb*p.refsPerBlock() {
		return fmt.Errorf("qcow2: internal error: %d clusters, refcount blocks for %d", clusters, w.rb*p.refsPerBlock())
	}
	// Refcount blocks: every cluster of the file is in use once.
	per := p.refsPerBlock()
	for b := int64(0); b < w.rb; b++ {
		clear(tab)
		for i := int64(0); i < per && b*per+i < clusters; i++ {
			p.putRef(tab, i, 1)
		}
		if _, err := out.Write(tab); err != nil {
			return err
		}
	}
	// L1 table.
	var entry [8]byte
	var done int64 // L1 entries written
	for i, at := range w.l2At {
		if at == 0 {
			continue
		}
		if err := writeZeros(out, (int64(i)-done)*l1Entry); err != nil {
			return err
		}
		be.PutUint64(entry[:], uint64(at)|l2Copied)
		if _, err := out.Write(entry[:]); err != nil {
			return err
		}
		done = int64(i) + 1
	}
	return writeZeros(out, min(w.l1Clusters*p.cs, end-w.l1Off)-done*l1Entry)
}

// l2Table returns span i's L2 table: its data clusters follow the table
// in guest order.
func (w *plainWriter) l2Table(i int) []byte {
	tab := w.scratch
	clear(tab)
	b, pos := w.alloc.spans[i], w.l2At[i]
	for j := int64(0); j < w.alloc.perSpan; j++ {
		if b[j/64]&(1<<(j%64)) != 0 {
			pos += w.p.cs
			binary.BigEndian.PutUint64(tab[j*l2Entry:], uint64(pos)|l2Copied)
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
	if b.Status != format.Data {
		if w.p.prealloc == PreallocMetadata || w.p.prealloc == PreallocFalloc {
			return w.out.Skip(n * cs) // a hole on a file, zeros on a pipe
		}
		return writeZeros(w.out, n*cs)
	}
	lo, hi := max(b.Start, c0*cs)-b.Start, min(b.End(), c1*cs)-b.Start
	data := b.Data[lo:hi]
	if w.out.Seekable() && (w.p.prealloc == PreallocMetadata || w.p.prealloc == PreallocFalloc) {
		return w.writeSparse(data, n*cs)
	}
	if _, err := w.out.Write(data); err != nil {
		return err
	}
	// The last cluster of the disk is stored whole.
	return writeZeros(w.out, n*cs-int64(len(data)))
}

// startSpan puts span's L2 table before its first cluster: on a file a
// slot that Close fills, on a pipe the table itself.
func (w *plainWriter) startSpan(span int64) error {
	at := w.l2At[span]
	switch {
	case w.lazy:
		if at == 0 {
			if err := w.out.SkipTo(max(w.out.Pos(), w.dataOff)); err != nil {
				return err
			}
			w.l2At[span] = w.out.Pos()
			return w.out.Skip(w.p.cs)
		}
		return nil
	case at == 0 || w.out.Pos() < at:
		return fmt.Errorf("qcow2: internal error: span %d's L2 table is at %d, the output at %d", span, at, w.out.Pos())
	case w.out.Pos() == at:
		_, err := w.out.Write(w.l2Table(int(span)))
		return err
	}
	return nil
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
	end := w.out.Pos()
	if w.lazy && end == 0 {
		end = w.headEnd() // no data: the metadata alone
	}
	if end%w.p.cs != 0 && end != w.headEnd() || !w.lazy && end != w.end {
		return fmt.Errorf("qcow2: internal error: wrote %d bytes of a %d-byte image", end, w.end)
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
	// On a file: the metadata over the holes left for it.
	if err := w.out.Rewind(); err != nil {
		return err
	}
	if err := w.writeHead(end); err != nil {
		return err
	}
	for i, at := range w.l2At {
		if at == 0 {
			continue
		}
		if err := w.out.SkipTo(at); err != nil {
			return err
		}
		if _, err := w.out.Write(w.l2Table(i)); err != nil {
			return err
		}
	}
	return w.out.EndRewrite()
}
