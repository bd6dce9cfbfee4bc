package vmdk

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/zlibfast"
)

// Hosted sparse extent header ("KDMV"), little-endian, in the first sector
// (or, for a stream-optimized extent with gdOffset = gdAtEnd, in the footer
// near the end of the file). Offsets are from the start of the header.
const (
	hdrVersion          = 4
	hdrFlags            = 8
	hdrCapacity         = 12 // sectors
	hdrGrainSize        = 20 // sectors
	hdrDescriptorOffset = 28 // sectors
	hdrDescriptorSize   = 36 // sectors
	hdrNumGTEsPerGT     = 44
	hdrRGDOffset        = 48 // sectors
	hdrGDOffset         = 56 // sectors
	hdrOverHead         = 64 // sectors of metadata before the first grain
	hdrCompressAlgo     = 77 // uint16

	flagValidNewLineTest = 1 << 0
	flagRedundantGT      = 1 << 1
	flagZeroGrain        = 1 << 2  // a grain table entry of 1 is a zeroed grain
	flagCompressed       = 1 << 16 // grains are compressed
	flagMarkers          = 1 << 17 // grains and metadata are preceded by markers

	compressNone    = 0
	compressDeflate = 1 // RFC 1950 zlib streams

	// gdAtEnd in gdOffset says the real header is the footer.
	gdAtEnd = 0xffffffffffffffff
	// footerBytes is the footer marker, the footer and the end-of-stream
	// marker, one sector each, at the end of a stream-optimized extent.
	footerBytes = 3 * sectorSize

	// Marker types (the uint32 at offset 12 of a metadata marker).
	markerEOS    = 0
	markerFooter = 3

	// grainMarkerBytes is a grain marker's head: lba uint64, size uint32.
	grainMarkerBytes = 12

	// gteZeroed is the grain table entry of a zeroed grain (flagZeroGrain).
	gteZeroed = 1

	// maxGTEsPerGT is the grain table size the spec fixes (and qemu's cap).
	maxGTEsPerGT = 512
	// maxGrainSectors caps the grain size as qemu does (1 GiB).
	maxGrainSectors = 0x200000
)

// ESX sparse extent header ("COWD"), little-endian uint32 fields.
const (
	cowdVersion     = 4
	cowdFlags       = 8
	cowdCapacity    = 12 // sectors
	cowdGrainSize   = 16 // sectors
	cowdGDOffset    = 20 // sectors
	cowdNumGDEs     = 24
	cowdNumGTEsPerT = 4096 // fixed for COWD
)

// gtCacheSize is how many grain tables an extent keeps.
const gtCacheSize = 16

// extent is one extent of the disk: a flat region of a file or a sparse
// extent with a grain directory.
type extent struct {
	f     format.File
	owned bool   // f is an extent file the image opened (not the image file)
	name  string // as qemu shows it
	typ   string // the descriptor's extent type; "" for a monolithic file
	start int64  // guest offset of the extent
	size  int64  // bytes

	flat       bool
	flatOffset int64

	cowd       bool
	grain      int64 // bytes
	gtes       int64 // grain table entries per table
	gd         []uint32
	gdOffset   int64
	fileSize   int64
	compressed bool
	markers    bool
	zeroGrain  bool

	mu       sync.Mutex
	gtCache  map[uint32][]uint32
	gtOrder  []uint32
	zeroGT   []uint64 // bit i: grain table i holds no entries
	batch    []byte   // scratch for batched grain table reads
	lastG    int64    // grain index of lastData, -1 when none
	lastData []byte
}

// openSparse reads a sparse extent's header and grain directory. For a
// top-level file whose header has no capacity but a descriptor (a
// descriptor embedded in a sparse header), it returns a nil extent and the
// descriptor. It returns the embedded descriptor, if any.
func openSparse(f format.File, fileSize int64, top bool) (*extent, []byte, error) {
	hdr := make([]byte, sectorSize)
	if err := format.ReadFull(f, hdr, 0, Name, "sparse extent header"); err != nil {
		return nil, nil, err
	}
	if string(hdr[:4]) == magicCOWD {
		x, err := openCOWD(f, hdr, fileSize)
		return x, nil, err
	}
	var desc []byte
	descOff, descSize := le.Uint64(hdr[hdrDescriptorOffset:]), le.Uint64(hdr[hdrDescriptorSize:])
	if descOff != 0 {
		n := int64(min(descSize, maxEmbeddedDescriptor/sectorSize)) * sectorSize
		if descOff > uint64(fileSize/sectorSize) {
			return nil, nil, format.Errorf(Name, "descriptorOffset", hdrDescriptorOffset, "sector %d is past the end of the file (%d bytes)", descOff, fileSize)
		}
		off := int64(descOff) * sectorSize
		if err := format.CheckTable(Name, "descriptorSize", off, n, fileSize); err != nil {
			return nil, nil, err
		}
		desc = make([]byte, n)
		if err := format.ReadFull(f, desc, off, Name, "embedded descriptor"); err != nil {
			return nil, nil, err
		}
	}
	if le.Uint64(hdr[hdrCapacity:]) == 0 && descOff != 0 {
		if !top {
			return nil, nil, format.Errorf(Name, "capacity", hdrCapacity, "an extent with no capacity")
		}
		return nil, desc, nil
	}
	hdrBase := int64(0)
	if le.Uint64(hdr[hdrGDOffset:]) == gdAtEnd {
		// The footer takes precedence over the header.
		if fileSize < sectorSize+footerBytes {
			return nil, nil, format.Errorf(Name, "footer", 0, "gdOffset says the header is in a footer, but the file has only %d bytes", fileSize)
		}
		hdrBase = fileSize - footerBytes
		foot := make([]byte, footerBytes)
		if err := format.ReadFull(f, foot, hdrBase, Name, "footer"); err != nil {
			return nil, nil, err
		}
		marker, footer, eos := foot[:sectorSize], foot[sectorSize:2*sectorSize], foot[2*sectorSize:]
		switch {
		case le.Uint32(marker[8:]) != 0 || le.Uint32(marker[12:]) != markerFooter:
			return nil, nil, format.Errorf(Name, "footer marker", hdrBase, "not a footer marker")
		case string(footer[:4]) != magicKDMV:
			return nil, nil, format.Errorf(Name, "footer magic", hdrBase+sectorSize, "%q is not %q", footer[:4], magicKDMV)
		case le.Uint64(eos) != 0 || le.Uint32(eos[8:]) != 0 || le.Uint32(eos[12:]) != markerEOS:
			return nil, nil, format.Errorf(Name, "end-of-stream marker", hdrBase+2*sectorSize, "not an end-of-stream marker")
		}
		hdr = footer
		hdrBase += sectorSize
	}
	field := func(name string, off int) (string, int64) { return name, hdrBase + int64(off) }

	version := le.Uint32(hdr[hdrVersion:])
	if version < 1 || version > 3 {
		n, o := field("version", hdrVersion)
		return nil, nil, format.Errorf(Name, n, o, "unsupported version %d", version)
	}
	flags := le.Uint32(hdr[hdrFlags:])
	x := &extent{f: f, fileSize: fileSize, lastG: -1}
	switch algo := le.Uint16(hdr[hdrCompressAlgo:]); algo {
	case compressNone:
	case compressDeflate:
		x.compressed = true
	default:
		n, o := field("compressAlgorithm", hdrCompressAlgo)
		return nil, nil, format.Errorf(Name, n, o, "unknown compression algorithm %d", algo)
	}
	x.markers = flags&flagMarkers != 0
	x.zeroGrain = flags&flagZeroGrain != 0

	capacity := le.Uint64(hdr[hdrCapacity:])
	if capacity > maxExtentSectors {
		n, o := field("capacity", hdrCapacity)
		return nil, nil, format.Errorf(Name, n, o, "%d sectors exceeds the %d-byte limit", capacity, int64(format.MaxVirtualSize))
	}
	grain := le.Uint64(hdr[hdrGrainSize:])
	if grain == 0 || grain > maxGrainSectors || bits.OnesCount64(grain) != 1 {
		n, o := field("grainSize", hdrGrainSize)
		return nil, nil, format.Errorf(Name, n, o, "%d sectors is not a power of two from 1 to %d", grain, maxGrainSectors)
	}
	gtes := le.Uint32(hdr[hdrNumGTEsPerGT:])
	if gtes == 0 || gtes > maxGTEsPerGT {
		n, o := field("numGTEsPerGT", hdrNumGTEsPerGT)
		return nil, nil, format.Errorf(Name, n, o, "%d entries is not from 1 to %d", gtes, maxGTEsPerGT)
	}
	overhead := le.Uint64(hdr[hdrOverHead:])
	if overhead > uint64(fileSize/sectorSize) {
		n, o := field("overHead", hdrOverHead)
		return nil, nil, format.Errorf(Name, n, o, "%d sectors of metadata, but the file has only %d bytes: truncated", overhead, fileSize)
	}
	gdOff := le.Uint64(hdr[hdrGDOffset:])
	if gdOff > uint64(fileSize/sectorSize) {
		n, o := field("gdOffset", hdrGDOffset)
		return nil, nil, format.Errorf(Name, n, o, "sector %d is past the end of the file (%d bytes)", gdOff, fileSize)
	}
	x.size = int64(capacity) * sectorSize
	x.grain = int64(grain) * sectorSize
	x.gtes = int64(gtes)
	x.gdOffset = int64(gdOff) * sectorSize
	if err := x.loadGD(f, "gdOffset"); err != nil {
		return nil, nil, err
	}
	return x, desc, nil
}

func openCOWD(f format.File, hdr []byte, fileSize int64) (*extent, error) {
	if v := le.Uint32(hdr[cowdVersion:]); v != 1 {
		return nil, format.Errorf(Name, "version", cowdVersion, "unsupported COWD version %d", v)
	}
	capacity := uint64(le.Uint32(hdr[cowdCapacity:]))
	grain := uint64(le.Uint32(hdr[cowdGrainSize:]))
	if grain == 0 || grain > maxGrainSectors || bits.OnesCount64(grain) != 1 {
		return nil, format.Errorf(Name, "granularity", cowdGrainSize, "%d sectors is not a power of two from 1 to %d", grain, maxGrainSectors)
	}
	gdOff := uint64(le.Uint32(hdr[cowdGDOffset:]))
	if gdOff > uint64(fileSize/sectorSize) {
		return nil, format.Errorf(Name, "gdOffset", cowdGDOffset, "sector %d is past the end of the file (%d bytes)", gdOff, fileSize)
	}
	x := &extent{f: f, fileSize: fileSize, lastG: -1, cowd: true, typ: "",
		size: int64(capacity) * sectorSize, grain: int64(grain) * sectorSize,
		gtes: cowdNumGTEsPerT, gdOffset: int64(gdOff) * sectorSize}
	need := (x.size + x.grain*x.gtes - 1) / (x.grain * x.gtes)
	if n := int64(le.Uint32(hdr[cowdNumGDEs:])); n < need {
		return nil, format.Errorf(Name, "numGDEntries", cowdNumGDEs, "%d entries cannot map %d sectors", n, capacity)
	}
	if err := x.loadGD(f, "gdOffset"); err != nil {
		return nil, err
	}
	return x, nil
}

// loadGD reads the grain directory: one entry per grain table.
func (x *extent) loadGD(f format.File, field string) error {
	span := x.grain * x.gtes
	n := (x.size + span - 1) / span
	if err := format.CheckTable(Name, "grain directory ("+field+")", x.gdOffset, n*4, x.fileSize); err != nil {
		return err
	}
	raw := make([]byte, n*4)
	if err := format.ReadFull(f, raw, x.gdOffset, Name, "grain directory"); err != nil {
		return err
	}
	x.gd = make([]uint32, n)
	for i := range x.gd {
		x.gd[i] = le.Uint32(raw[i*4:])
	}
	x.gtCache = map[uint32][]uint32{}
	x.zeroGT = make([]uint64, (n+63)/64)
	return nil
}

// table returns grain table gdi, nil when its directory entry is empty or
// the table holds only empty entries. The caller holds x.mu.
func (x *extent) table(gdi int64) ([]uint32, error) {
	sec := x.gd[gdi]
	if sec == 0 || x.zeroGT[gdi/64]&(1<<(gdi%64)) != 0 {
		return nil, nil
	}
	if t, ok := x.gtCache[sec]; ok {
		return t, nil
	}
	gtBytes := x.gtes * 4
	off := int64(sec) * sectorSize
	if off > x.fileSize || gtBytes > x.fileSize-off {
		return nil, format.Errorf(Name, fmt.Sprintf("grain directory entry %d", gdi), x.gdOffset+gdi*4,
			"grain table at sector %d extends past the end of the file (%d bytes)", sec, x.fileSize)
	}
	// Grain tables usually follow each other: read a batch in one go and
	// note the empty ones, so walking a large empty disk costs a few
	// reads, not one per table.
	step := (gtBytes + sectorSize - 1) / sectorSize
	n := int64(1)
	for gdi+n < int64(len(x.gd)) && n*step*sectorSize < gtBatchBytes {
		next := int64(x.gd[gdi+n])
		if next != int64(sec)+n*step || next*sectorSize+gtBytes > x.fileSize {
			break
		}
		n++
	}
	raw := x.batch[:0]
	if need := int((n-1)*step*sectorSize + gtBytes); cap(raw) < need {
		raw = make([]byte, need)
		x.batch = raw
	} else {
		raw = raw[:need]
	}
	if err := format.ReadFull(x.f, raw, off, Name, "grain table"); err != nil {
		return nil, err
	}
	var t []uint32
	for k := int64(0); k < n; k++ {
		b := raw[k*step*sectorSize:][:gtBytes]
		if bytes.Equal(b, zeroTable[:gtBytes]) {
			x.zeroGT[(gdi+k)/64] |= 1 << ((gdi + k) % 64)
			continue
		}
		if k == 0 {
			t = make([]uint32, x.gtes)
			for i := range t {
				t[i] = le.Uint32(b[i*4:])
			}
		}
	}
	if t == nil {
		return nil, nil
	}
	if len(x.gtOrder) >= gtCacheSize {
		delete(x.gtCache, x.gtOrder[0])
		x.gtOrder = x.gtOrder[1:]
	}
	x.gtCache[sec] = t
	x.gtOrder = append(x.gtOrder, sec)
	return t, nil
}

// gtBatchBytes bounds one batched read of grain tables.
const gtBatchBytes = 1 << 20

// zeroTable is an empty grain table to compare with.
var zeroTable [cowdNumGTEsPerT * 4]byte

// grainEntry classifies grain g of a sparse extent: its status and, for
// data, the host offset of the grain (or of its marker when compressed).
// The caller holds x.mu.
func (x *extent) grainEntry(g int64, t []uint32, gdi int64) (format.Status, int64, error) {
	gte := t[g%x.gtes]
	switch {
	case gte == 0:
		return format.Unallocated, -1, nil
	case gte == gteZeroed && x.zeroGrain:
		return format.Zero, -1, nil
	}
	host := int64(gte) * sectorSize
	// The grain must lie in the file: all of it, or its marker head when
	// compressed (the compressed length is checked when read).
	need := min(x.grain, x.size-g*x.grain)
	if x.compressed {
		need = 1
		if x.markers {
			need = grainMarkerBytes
		}
	}
	if host > x.fileSize || need > x.fileSize-host {
		gtOff := int64(x.gd[gdi])*sectorSize + (g%x.gtes)*4
		return 0, 0, format.Errorf(Name, "grain table entry", gtOff, "grain %d at sector %d extends past the end of the file (%d bytes)", g, gte, x.fileSize)
	}
	return format.Data, host, nil
}

// run returns the extent-relative run at off ending at or before limit.
func (x *extent) run(off, limit int64) (format.Extent, error) {
	e := format.Extent{Start: off, Offset: -1}
	if x.flat {
		e.Length = limit - off
		e.Status = format.Data
		e.Offset = x.flatOffset + off
		return e, nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	span := x.grain * x.gtes
	first := true
	pos := off
	for pos < limit {
		gdi := pos / span
		t, err := x.table(gdi)
		if err != nil {
			return e, err
		}
		if t == nil {
			if !first && e.Status != format.Unallocated {
				break
			}
			e.Status, first = format.Unallocated, false
			pos = min((gdi+1)*span, x.size)
			continue
		}
		stop := false
		for g := pos / x.grain; pos < limit && g < (gdi+1)*x.gtes; g++ {
			st, host, err := x.grainEntry(g, t, gdi)
			if err != nil {
				if first {
					return e, err
				}
				stop = true // report the run so far; the error comes next call
				break
			}
			if first {
				e.Status, first = st, false
				e.Compressed = st == format.Data && x.compressed
				if st == format.Data && !x.compressed {
					e.Offset = host + pos%x.grain
				}
			} else if st != e.Status ||
				(st == format.Data && !x.compressed && host != e.Offset+(g*x.grain-off)) {
				stop = true
				break
			}
			pos = min((g+1)*x.grain, x.size)
		}
		if stop {
			break
		}
	}
	e.Length = min(pos, limit) - off
	return e, nil
}

// readCompressed reads guest bytes at extent offset off from compressed
// grains.
func (x *extent) readCompressed(p []byte, off int64) error {
	for len(p) > 0 {
		g, in := off/x.grain, off%x.grain
		n := min(int64(len(p)), x.grain-in)
		if err := x.readGrain(p[:n], g, in); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// readGrain fills p from compressed grain g, from byte in of the grain. A
// whole grain inflates straight into p. A part of one is inflated into a
// grain of its own, kept as the last grain, so reading a grain in pieces
// inflates it once. Only the lookups hold x.mu: workers reading different
// grains inflate side by side.
func (x *extent) readGrain(p []byte, g, in int64) error {
	x.mu.Lock()
	if g == x.lastG {
		data := x.lastData
		x.mu.Unlock()
		return copyGrain(p, data, g, in)
	}
	host, err := x.grainHost(g)
	x.mu.Unlock()
	if err != nil {
		return err
	}
	whole := in == 0 && int64(len(p)) == x.grain
	var dst []byte
	if whole {
		dst = p
	}
	data, err := x.inflate(dst, g, host)
	if err != nil {
		return err
	}
	if whole {
		return checkGrain(g, len(data), x.grain)
	}
	x.mu.Lock()
	x.lastG, x.lastData = g, data
	x.mu.Unlock()
	return copyGrain(p, data, g, in)
}

// copyGrain copies grain g's inflated data from byte in to p, which must
// not reach past the data.
func copyGrain(p, data []byte, g, in int64) error {
	if err := checkGrain(g, len(data), in+int64(len(p))); err != nil {
		return err
	}
	copy(p, data[in:])
	return nil
}

// checkGrain reports a grain that inflated to fewer bytes than a read
// needs.
func checkGrain(g int64, inflated int, need int64) error {
	if need > int64(inflated) {
		return format.Errorf(Name, "compressed grain", -1, "grain %d inflates to %d bytes, reading needs %d", g, inflated, need)
	}
	return nil
}

// grainHost returns where compressed grain g's stream (or its marker)
// starts in the file. The caller holds x.mu.
func (x *extent) grainHost(g int64) (int64, error) {
	gdi := g / x.gtes
	t, err := x.table(gdi)
	if err != nil {
		return 0, err
	}
	if t == nil {
		return 0, fmt.Errorf("vmdk: grain %d is not allocated", g)
	}
	st, host, err := x.grainEntry(g, t, gdi)
	if err != nil {
		return 0, err
	}
	if st != format.Data {
		return 0, fmt.Errorf("vmdk: grain %d holds no data", g)
	}
	return host, nil
}

var (
	// streamPool holds buffers for compressed grains, which are at most
	// two grains long (checked per grain).
	streamPool  sync.Pool // *[]byte
	decoderPool = sync.Pool{New: func() any { return new(zlibfast.Decoder) }}
)

// maxDeflateRatio bounds how many bytes deflate makes of one: a 258-byte
// match coded in two bits.
const maxDeflateRatio = 1032

// inflate reads compressed grain g at host and inflates it into dst and
// returns the bytes it filled. With dst nil it inflates into a buffer of
// its own, no bigger than the stream can fill, so a lying grain size does
// not make a few bytes of input allocate a whole grain (up to 1 GiB).
func (x *extent) inflate(dst []byte, g, host int64) ([]byte, error) {
	size := min(2*x.grain, x.fileSize-host)
	at := host
	if x.markers {
		var m [grainMarkerBytes]byte
		if err := format.ReadFull(x.f, m[:], host, Name, "grain marker"); err != nil {
			return nil, err
		}
		size = int64(le.Uint32(m[8:]))
		if size == 0 || size > 2*x.grain {
			return nil, format.Errorf(Name, "grain marker size", host+8, "%d bytes for a grain of %d", size, x.grain)
		}
		if size > x.fileSize-host-grainMarkerBytes {
			return nil, format.Errorf(Name, "grain marker size", host+8, "compressed grain of %d bytes extends past the end of the file (%d bytes)", size, x.fileSize)
		}
		at += grainMarkerBytes
	}
	bp, _ := streamPool.Get().(*[]byte)
	if bp == nil || int64(cap(*bp)) < size {
		b := make([]byte, size)
		bp = &b
	}
	defer streamPool.Put(bp)
	src := (*bp)[:size]
	if err := format.ReadFull(x.f, src, at, Name, fmt.Sprintf("compressed grain %d", g)); err != nil {
		return nil, err
	}
	if dst == nil {
		dst = make([]byte, min(x.grain, maxDeflateRatio*size))
	}
	d := decoderPool.Get().(*zlibfast.Decoder)
	defer decoderPool.Put(d)
	n, err := d.Decode(dst, src)
	switch {
	case errors.Is(err, zlibfast.ErrTooLong):
		return nil, format.Errorf(Name, "compressed grain", host, "grain %d inflates beyond the grain size %d", g, x.grain)
	case err != nil:
		return nil, format.Errorf(Name, "compressed grain", host, "grain %d: %v", g, err)
	}
	return dst[:n], nil
}
