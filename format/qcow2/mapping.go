package qcow2

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/diskimg/diskimg/format"
)

// l2CacheBytes bounds the L2 tables kept in memory (at least two tables).
const l2CacheBytes = 8 << 20

// zCacheClusters is how many decompressed clusters are kept, so reading a
// compressed cluster in several pieces decompresses it once.
const zCacheClusters = 2

// maxZstdWindow bounds the memory a zstd frame may ask for; qemu compresses
// one cluster (at most 2 MiB) per frame.
const maxZstdWindow = 8 << 20

// kind is what one layer stores for a guest range.
type kind uint8

const (
	kUnalloc    kind = iota // not in this image: the backing file, or zeros
	kZero                   // reads as zeros
	kData                   // stored uncompressed at host
	kCompressed             // stored compressed; entry is the L2 entry
)

// run is a guest range [start, end) of one kind in this image.
type run struct {
	start, end int64
	kind       kind
	// host is the host offset of start, -1 when there is none: always
	// one for kData, and for kZero and kUnalloc ranges of a cluster that
	// has a host offset (qemu's zero-alloc and unallocated-alloc
	// subclusters, which qemu-img map lists with their offset).
	host     int64
	entry    uint64 // kCompressed: the L2 entry
	entryOff int64  // kCompressed: file offset of the L2 entry
}

// extend appends p to r when it continues r; it reports whether it did.
func (r *run) extend(p run, splitCompressed bool) bool {
	if r.end != p.start || r.kind != p.kind || (r.host < 0) != (p.host < 0) || r.host >= 0 && r.host+(r.end-r.start) != p.host {
		return false
	}
	if r.kind == kCompressed && splitCompressed {
		return false
	}
	r.end = p.end
	return true
}

type l2Table struct {
	off     int64
	entries []uint64
}

// l2Cache keeps the most recently used L2 tables, newest last.
type l2Cache struct {
	max    int
	tables []l2Table
}

func (c *l2Cache) get(off int64) []uint64 {
	for i := len(c.tables) - 1; i >= 0; i-- {
		if c.tables[i].off == off {
			t := c.tables[i]
			if i != len(c.tables)-1 {
				copy(c.tables[i:], c.tables[i+1:])
				c.tables[len(c.tables)-1] = t
			}
			return t.entries
		}
	}
	return nil
}

func (c *l2Cache) add(off int64, entries []uint64) {
	if len(c.tables) >= c.max {
		copy(c.tables, c.tables[1:])
		c.tables = c.tables[:len(c.tables)-1]
	}
	c.tables = append(c.tables, l2Table{off, entries})
}

// l2Table returns the L2 table of L1 entry i, or nil when it has none.
func (img *Image) l2Table(i int64) ([]uint64, int64, error) {
	e := img.l1[i]
	off := int64(e & offsetMask)
	if off == 0 {
		return nil, 0, nil
	}
	entryOff := img.l1Offset + 8*i
	if off&(img.clusterSize-1) != 0 {
		return nil, 0, errorf("l1_entry", entryOff, "L2 table offset %#x is not cluster-aligned", off)
	}
	if off > img.File.Size()-img.clusterSize {
		return nil, 0, errorf("l1_entry", entryOff, "L2 table at %#x extends past the end of the file (%d bytes)", off, img.File.Size())
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if t := img.l2.get(off); t != nil {
		return t, off, nil
	}
	raw := make([]byte, img.clusterSize)
	if err := format.ReadFull(img.File, raw, off, Name, "l2_table"); err != nil {
		return nil, 0, err
	}
	t := make([]uint64, img.clusterSize/8)
	for j := range t {
		t[j] = binary.BigEndian.Uint64(raw[j*8:])
	}
	img.l2.add(off, t)
	return t, off, nil
}

// scan returns the longest run of one kind (and contiguous host offset)
// that starts at off and ends at or before limit. With splitCompressed,
// each compressed cluster is a run of its own.
func (img *Image) scan(off, limit int64, splitCompressed bool) (run, error) {
	var r run
	started := false
	add := func(p run) bool {
		if !started {
			r, started = p, true
			return true
		}
		return r.extend(p, splitCompressed)
	}
	l1Cover := img.l2Entries << img.clusterBits
	for cur := off; cur < limit; {
		l1i := cur / l1Cover
		table, tableOff, err := img.l2Table(l1i)
		if err != nil {
			return r, err
		}
		if table == nil {
			if !add(run{start: cur, end: min((l1i+1)*l1Cover, limit), host: -1}) {
				return r, nil
			}
			cur = r.end
			continue
		}
		// Walk this table's entries from cur.
		tableEnd := min((l1i+1)*l1Cover, limit)
		for cur < tableEnd {
			if started && r.kind == kData && !img.extL2 {
				if cur = img.extendData(&r, table, tableEnd); cur >= tableEnd {
					break
				}
			}
			ci := cur >> img.clusterBits
			idx := ci % img.l2Entries
			entryOff := tableOff + idx*img.entrySize
			clusterStart := ci << img.clusterBits
			clusterEnd := min(clusterStart+img.clusterSize, tableEnd)
			var bitmap uint64
			entry := table[idx*img.entrySize/8]
			if img.extL2 {
				bitmap = table[idx*2+1]
			}
			ok, err := img.cluster(entry, bitmap, entryOff, clusterStart, cur, clusterEnd, add)
			if err != nil {
				return r, err
			}
			if !ok {
				return r, nil
			}
			cur = r.end
		}
	}
	return r, nil
}

// extendData extends the data run r over the entries of table that
// continue it (standard entries, the next host cluster each) and returns
// its new end: the long runs of a preallocated or converted image without
// the general path's work per cluster. The entry it stops at goes through
// that path.
func (img *Image) extendData(r *run, table []uint64, tableEnd int64) int64 {
	cs := img.clusterSize
	for r.end < tableEnd && r.end&(cs-1) == 0 {
		want := r.host + (r.end - r.start)
		e := table[(r.end>>img.clusterBits)%img.l2Entries]
		if e&(l2Compressed|l2ZeroFlag) != 0 || int64(e&offsetMask) != want || want+cs > img.data.Size() {
			break
		}
		r.end = min(r.end+cs, tableEnd)
	}
	return r.end
}

// cluster classifies the guest range [from, to) of the cluster at
// clusterStart from its L2 entry and feeds the pieces to add; it stops
// and returns false when add refuses one.
func (img *Image) cluster(entry, bitmap uint64, entryOff, clusterStart, from, to int64, add func(run) bool) (bool, error) {
	if entry&l2Compressed != 0 {
		if img.hasDataFile {
			return false, errorf("l2_entry", entryOff, "compressed cluster in an image with an external data file")
		}
		if img.extL2 && bitmap != 0 {
			return false, errorf("l2_entry", entryOff+8, "compressed cluster has a subcluster bitmap %#x", bitmap)
		}
		host, _ := img.compressedExtent(entry)
		if host == 0 || host >= img.File.Size() {
			return false, errorf("l2_entry", entryOff, "compressed cluster at host offset %#x is outside the file (%d bytes)", host, img.File.Size())
		}
		return add(run{start: from, end: to, kind: kCompressed, host: -1, entry: entry, entryOff: entryOff}), nil
	}
	host := int64(entry & offsetMask)
	hostAllocated := host != 0 || (img.hasDataFile && entry&l2Copied != 0)
	if hostAllocated && host&(img.clusterSize-1) != 0 {
		return false, errorf("l2_entry", entryOff, "cluster offset %#x is not cluster-aligned", host)
	}
	piece := func(k kind, start, end int64) (bool, error) {
		p := run{start: start, end: end, kind: k, host: -1}
		if hostAllocated {
			p.host = host + (start - clusterStart)
		}
		if k == kData {
			if p.host+(end-start) > img.data.Size() {
				return false, errorf("l2_entry", entryOff, "data cluster at host offset %#x extends past the end of the %s (%d bytes)", host, img.dataName(), img.data.Size())
			}
		}
		return add(p), nil
	}
	if !img.extL2 {
		switch {
		case entry&l2ZeroFlag != 0:
			return piece(kZero, from, to)
		case hostAllocated:
			return piece(kData, from, to)
		}
		return piece(kUnalloc, from, to)
	}
	alloc, zero := uint32(bitmap), uint32(bitmap>>32)
	if alloc&zero != 0 {
		return false, errorf("l2_bitmap", entryOff+8, "subclusters %#x are both allocated and zero", alloc&zero)
	}
	if alloc != 0 && !hostAllocated {
		return false, errorf("l2_bitmap", entryOff+8, "subclusters %#x allocated in a cluster with no host offset", alloc)
	}
	sub := img.clusterSize / subclusters
	for cur := from; cur < to; {
		i := (cur - clusterStart) / sub
		end := min(clusterStart+(i+1)*sub, to)
		k := kUnalloc
		switch {
		case alloc&(1<<i) != 0:
			k = kData
		case zero&(1<<i) != 0:
			k = kZero
		}
		if ok, err := piece(k, cur, end); !ok || err != nil {
			return ok, err
		}
		cur = end
	}
	return true, nil
}

func (img *Image) dataName() string {
	if img.hasDataFile {
		return "external data file"
	}
	return "file"
}

// compressedExtent decodes a compressed cluster descriptor: the host
// offset of the compressed bytes and how many there are.
func (img *Image) compressedExtent(entry uint64) (host, length int64) {
	x := 62 - (img.clusterBits - 8)
	host = int64(entry & (1<<x - 1))
	sectors := int64((entry&(l2Compressed-1))>>x) + 1
	return host, sectors*compressedUnit - host%compressedUnit
}

// Extent returns the run at off from this image's tables.
func (img *Image) Extent(off int64) (format.Extent, error) { return img.ExtentTo(off, img.Size()) }

// ExtentTo returns the run at off, cut at limit, from this image's tables:
// clusters it does not store are Unallocated.
func (img *Image) ExtentTo(off, limit int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, fmt.Errorf("qcow2: extent offset %d outside the disk (%d bytes)", off, img.Size())
	}
	r, err := img.scan(off, min(limit, img.Size()), false)
	if err != nil {
		return format.Extent{}, err
	}
	e := format.Extent{Start: off, Length: r.end - off, Offset: -1}
	if r.host >= 0 {
		e.Offset, e.File = r.host, img.data
	}
	switch r.kind {
	case kZero:
		e.Status = format.Zero
	case kData:
		e.Status = format.Data
		e.Preallocated = img.preallocated()
	case kCompressed:
		e.Status, e.Compressed = format.Data, true
	}
	return e, nil
}

// ReadAt reads guest bytes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, img.Size())
	if n == 0 {
		return 0, clipErr
	}
	if img.Meta.Encrypted {
		return 0, fmt.Errorf("qcow2: image is encrypted; diskimg cannot decrypt it")
	}
	buf := p[:n]
	cur := off
	for len(buf) > 0 {
		r, err := img.scan(cur, cur+int64(len(buf)), true)
		if err != nil {
			return int(cur - off), err
		}
		chunk := buf[:r.end-cur]
		switch r.kind {
		case kUnalloc, kZero:
			clear(chunk)
		case kData:
			err = format.ReadFull(img.data, chunk, r.host, Name, "data cluster")
		case kCompressed:
			var c []byte
			c, err = img.decompressed(r)
			if err == nil {
				copy(chunk, c[cur&(img.clusterSize-1):])
			}
		}
		if err != nil {
			return int(cur - off), err
		}
		buf = buf[len(chunk):]
		cur += int64(len(chunk))
	}
	return n, clipErr
}

type zEntry struct {
	entry uint64
	data  []byte
}

// zCache keeps the last decompressed clusters, newest last, and the zstd
// decoder reused between them.
type zCache struct {
	clusters []zEntry
	zstd     *zstd.Decoder
}

// decompressed returns the guest bytes of the compressed cluster r.
func (img *Image) decompressed(r run) ([]byte, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	for _, z := range img.zcache.clusters {
		if z.entry == r.entry {
			return z.data, nil
		}
	}
	host, length := img.compressedExtent(r.entry)
	// The last compressed cluster may end inside its final sector, at the
	// end of the file; decompression stops when the cluster is full.
	length = min(length, img.File.Size()-host)
	src := make([]byte, length)
	if err := format.ReadFull(img.File, src, host, Name, "compressed cluster"); err != nil {
		return nil, err
	}
	out := make([]byte, img.clusterSize)
	var dec io.Reader
	switch img.compression {
	case compressZlib:
		dec = flate.NewReader(bytes.NewReader(src))
	case compressZstd:
		if img.zcache.zstd == nil {
			d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(maxZstdWindow*2))
			if err != nil {
				return nil, err
			}
			img.zcache.zstd = d
		}
		if err := img.zcache.zstd.Reset(bytes.NewReader(src)); err != nil {
			return nil, errorf("l2_entry", r.entryOff, "compressed cluster at %#x: %v", host, err)
		}
		dec = img.zcache.zstd
	}
	if _, err := io.ReadFull(dec, out); err != nil {
		return nil, errorf("l2_entry", r.entryOff, "compressed cluster at %#x (%d bytes) does not decompress to %d bytes: %v", host, length, img.clusterSize, err)
	}
	if len(img.zcache.clusters) >= zCacheClusters {
		img.zcache.clusters = img.zcache.clusters[1:]
	}
	img.zcache.clusters = append(img.zcache.clusters, zEntry{r.entry, out})
	return out, nil
}
