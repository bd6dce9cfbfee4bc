package vmdk

// The VMDK writer: a single hosted sparse extent file, monolithicSparse
// (qemu's default) or streamOptimized, with the embedded descriptor qemu
// writes. Both stream to a pipe.
//
// monolithicSparse is laid out exactly as qemu lays it out: header,
// descriptor, redundant grain directory and tables (every table, as qemu
// preallocates them), grain directory and tables, then the grains in guest
// order from the first 64 KiB boundary. As in qemu only grains that arrive
// with data are allocated, each in the next slot. On a file the grains are
// written first and the header and tables at Close, over the hole left for
// them; on a pipe, or on a file written front to back (WriteOptions.
// FrontToBack, the engine's streamed --checksum), the engine's data scan
// (MarkData) tells the writer the grains up front, and it writes the same
// bytes front to back, leaving holes on a file by seeking forward.
//
// streamOptimized is VMware's streaming layout: header (with the grain
// directory "at end"), descriptor, compressed grains each behind a grain
// marker, a grain table behind its marker after the grains it maps, then
// the grain directory, the footer (the header again, with the real
// directory offset) and the end-of-stream marker. Grains are compressed
// in Encode, on the engine's workers.

import (
	"fmt"
	"math/bits"
	mrand "math/rand/v2"
	"path/filepath"
	"strings"

	"github.com/diskimg/diskimg/format"
)

// Options, by qemu-img's -o names.
const (
	OptSubformat    = "subformat"
	OptAdapterType  = "adapter_type"
	OptHWVersion    = "hwversion"
	OptCompat6      = "compat6"
	OptZeroedGrain  = "zeroed_grain"
	OptToolsVersion = "toolsversion"
	OptBackingFile  = "backing_file"
	OptBackingFmt   = "backing_fmt"

	SubformatMonolithicSparse = "monolithicSparse"
	SubformatStreamOptimized  = "streamOptimized"
)

// Layout of the files qemu creates (block/vmdk.c vmdk_init_extent), which
// VMware's own tools use too.
const (
	// minHole is the shortest run of zeros left as a hole on a file.
	minHole = 64 << 10
	// WriterGrainSize is the grain: 128 sectors. qemu has no option for it.
	WriterGrainSize    = writerGrainSectors * sectorSize
	writerGrainSectors = 128
	// writerGTEs is the number of entries per grain table (the spec's
	// fixed 512), so one table maps 32 MiB.
	writerGTEs = 512
	gtBytes    = writerGTEs * 4
	gtSectors  = gtBytes / sectorSize
	// The embedded descriptor: sector 1, 20 sectors long.
	descSector  = 1
	descSectors = 20
	descBytes   = descSectors * sectorSize
	// rgdSector is where the redundant grain directory starts in a
	// monolithicSparse file: right after the descriptor.
	rgdSector = descSector + descSectors
	// streamOverhead is the sectors before the first grain of a
	// streamOptimized file: header and descriptor padded to a grain.
	streamOverhead = writerGrainSectors

	// Header versions: 1 plain, 2 with zeroed grains, 3 compressed.
	versionPlain      = 1
	versionZeroGrain  = 2
	versionCompressed = 3

	// hdrCheckBytes holds the newline-conversion test "\n \r\n".
	hdrCheckBytes = 73
	checkBytes    = "\n \r\n"

	// Metadata marker types beyond the reader's.
	markerGT = 1
	markerGD = 2

	// maxHostSector is the largest sector a grain table or directory
	// entry can hold (32 bits): the file's data ends before 2 TiB. The
	// disk may be larger: a sparse extent's capacity is 64 bits.
	maxHostSector = 1<<32 - 1
	// WriterMaxSize is the largest disk written: 64 TiB, above VMware's
	// largest (62 TB). Its tables are what bounds it: a monolithicSparse
	// file of 64 TiB starts with 8 GiB of them (holes until data
	// arrives), and the writer keeps a few MiB per 64 TiB in memory.
	WriterMaxSize = 64 << 40

	// defaultHWVersion and defaultToolsVersion are qemu's defaults;
	// compat6 means hardware version 6.
	defaultHWVersion    = "4"
	compat6HWVersion    = "6"
	defaultToolsVersion = "2147483647"
	// heads of the geometry: 16 for IDE, 255 for SCSI adapters, as
	// VMware does; sectors per track are always 63.
	ideHeads  = 16
	scsiHeads = 255
	geomSecs  = 63
	// maxDescValue bounds hwversion and toolsversion, so the descriptor
	// always fits its 20 sectors.
	maxDescValue = 128
)

// adapterTypes are qemu's adapter_type values.
var adapterTypes = []string{"ide", "lsilogic", "buslogic", "legacyESX"}

func init() {
	format.RegisterWriter(&format.WriterFormat{
		Name: Name,
		Options: []format.OptionSpec{
			{Name: OptSubformat, Help: "monolithicSparse (the default) or streamOptimized", Validate: validSubformat},
			{Name: OptAdapterType, Help: "ide (the default), lsilogic, buslogic or legacyESX", Validate: format.OneOf(adapterTypes...)},
			{Name: OptHWVersion, Help: "VMware hardware version written in the descriptor (default 4)", Validate: validDescValue},
			{Name: OptCompat6, Help: "on or off (the default): hardware version 6", Validate: validBool},
			{Name: OptZeroedGrain, Help: "on or off (the default): enable the zeroed-grain feature", Validate: validBool},
			{Name: OptToolsVersion, Help: "VMware tools version written in the descriptor (default 2147483647)", Validate: validDescValue},
			{Name: OptBackingFile, Help: "not supported: diskimg writes standalone images", Validate: unsupported},
			{Name: OptBackingFmt, Help: "not supported: diskimg writes standalone images", Validate: unsupported},
		},
		// As qemu-img does, -c is accepted; it compresses only
		// streamOptimized, whose grains are always compressed.
		Compress: true,
		MaxSize:  WriterMaxSize,
		Check:    func(o format.WriteOptions) error { _, err := newParams(o); return err },
		New:      NewWriter,
		Measure:  Measure,
	})
}

func validSubformat(v string) error {
	switch v {
	case SubformatMonolithicSparse, SubformatStreamOptimized:
		return nil
	case "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat":
		return fmt.Errorf("%s writes several files; diskimg writes one (use %s or %s)", v, SubformatMonolithicSparse, SubformatStreamOptimized)
	}
	return fmt.Errorf("must be one of %s, %s", SubformatMonolithicSparse, SubformatStreamOptimized)
}

// parseBool reads a qemu boolean option value.
func parseBool(v string) (bool, error) {
	switch v {
	case "on", "yes", "true":
		return true, nil
	case "off", "no", "false":
		return false, nil
	}
	return false, fmt.Errorf("must be on or off")
}

func validBool(v string) error { _, err := parseBool(v); return err }

// validDescValue accepts a value that can sit between the quotes of a
// descriptor line.
func validDescValue(v string) error {
	if v == "" || len(v) > maxDescValue {
		return fmt.Errorf("must be 1 to %d characters", maxDescValue)
	}
	for _, c := range []byte(v) {
		if c < 0x20 || c > 0x7e || c == '"' {
			return fmt.Errorf("must be printable ASCII without quotes")
		}
	}
	return nil
}

func unsupported(string) error {
	return fmt.Errorf("not supported: diskimg writes standalone images")
}

// params are a validated set of options and the layout they imply.
type params struct {
	stream  bool
	zeroed  bool
	adapter string
	hw      string
	tools   string

	size      int64 // virtual size in bytes
	sectors   int64 // capacity: the size rounded up to whole sectors
	grains    int64
	gtCount   int64
	gdSectors int64
	// monolithicSparse: the grain directory's sector and the first grain's.
	gdSector, grainSector int64
}

func newParams(o format.WriteOptions) (*params, error) {
	if o.Size < 0 || o.Size > WriterMaxSize {
		return nil, fmt.Errorf("vmdk: virtual size %d is out of range (0 to %d bytes)", o.Size, int64(WriterMaxSize))
	}
	p := &params{adapter: "ide", hw: defaultHWVersion, tools: defaultToolsVersion, size: o.Size}
	opt := func(k string) (string, bool) { v, ok := o.Options[k]; return v, ok }
	if v, ok := opt(OptSubformat); ok {
		if err := validSubformat(v); err != nil {
			return nil, fmt.Errorf("vmdk: %s: %w", OptSubformat, err)
		}
		p.stream = v == SubformatStreamOptimized
	}
	if v, ok := opt(OptAdapterType); ok {
		if err := format.OneOf(adapterTypes...)(v); err != nil {
			return nil, fmt.Errorf("vmdk: %s: %w", OptAdapterType, err)
		}
		p.adapter = v
	}
	hwSet := false
	if v, ok := opt(OptHWVersion); ok && v != "undefined" {
		if err := validDescValue(v); err != nil {
			return nil, fmt.Errorf("vmdk: %s: %w", OptHWVersion, err)
		}
		p.hw, hwSet = v, true
	}
	if v, ok := opt(OptCompat6); ok {
		on, err := parseBool(v)
		if err != nil {
			return nil, fmt.Errorf("vmdk: %s: %w", OptCompat6, err)
		}
		if on {
			if hwSet {
				return nil, fmt.Errorf("vmdk: compat6 cannot be enabled with hwversion set")
			}
			p.hw = compat6HWVersion
		}
	}
	if v, ok := opt(OptZeroedGrain); ok {
		on, err := parseBool(v)
		if err != nil {
			return nil, fmt.Errorf("vmdk: %s: %w", OptZeroedGrain, err)
		}
		p.zeroed = on
	}
	if v, ok := opt(OptToolsVersion); ok {
		if err := validDescValue(v); err != nil {
			return nil, fmt.Errorf("vmdk: %s: %w", OptToolsVersion, err)
		}
		p.tools = v
	}
	for _, k := range []string{OptBackingFile, OptBackingFmt} {
		if _, ok := opt(k); ok {
			return nil, fmt.Errorf("vmdk: %s: %w", k, unsupported(""))
		}
	}
	p.sectors = (o.Size + sectorSize - 1) / sectorSize
	p.grains = (p.sectors + writerGrainSectors - 1) / writerGrainSectors
	p.gtCount = (p.grains + writerGTEs - 1) / writerGTEs
	p.gdSectors = (p.gtCount*4 + sectorSize - 1) / sectorSize
	tables := p.gdSectors + p.gtCount*gtSectors
	p.gdSector = rgdSector + tables
	p.grainSector = (p.gdSector + tables + writerGrainSectors - 1) / writerGrainSectors * writerGrainSectors
	return p, nil
}

// descriptor returns the embedded descriptor text as qemu writes it.
func (p *params) descriptor(cid uint32, file string) string {
	createType := SubformatMonolithicSparse
	if p.stream {
		createType = SubformatStreamOptimized
	}
	heads := int64(ideHeads)
	if p.adapter != "ide" {
		heads = scsiHeads
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=1\nCID=%08x\nparentCID=%08x\ncreateType=%q\n\n", cid, uint32(noParentCID), createType)
	fmt.Fprintf(&b, "# Extent description\nRW %d SPARSE %q\n\n", p.sectors, file)
	fmt.Fprintf(&b, "# The Disk Data Base\n#DDB\n\n")
	fmt.Fprintf(&b, "ddb.virtualHWVersion = %q\n", p.hw)
	fmt.Fprintf(&b, "ddb.geometry.cylinders = \"%d\"\n", p.sectors*sectorSize/(geomSecs*heads*sectorSize))
	fmt.Fprintf(&b, "ddb.geometry.heads = \"%d\"\n", heads)
	fmt.Fprintf(&b, "ddb.geometry.sectors = \"%d\"\n", geomSecs)
	fmt.Fprintf(&b, "ddb.adapterType = %q\n", p.adapter)
	fmt.Fprintf(&b, "ddb.toolsVersion = %q\n", p.tools)
	return b.String()
}

// header returns a sparse extent header sector with the given grain
// directory placement.
func (p *params) header(rgd int64, gd uint64, overhead int64) []byte {
	h := make([]byte, sectorSize)
	copy(h, magicKDMV)
	version := uint32(versionPlain)
	flags := uint32(flagValidNewLineTest)
	if p.zeroed {
		version = versionZeroGrain
		flags |= flagZeroGrain
	}
	if p.stream {
		// No redundant directory: a stream has one copy of everything.
		version = versionCompressed
		flags |= flagCompressed | flagMarkers
		le.PutUint16(h[hdrCompressAlgo:], compressDeflate)
	} else {
		flags |= flagRedundantGT
	}
	le.PutUint32(h[hdrVersion:], version)
	le.PutUint32(h[hdrFlags:], flags)
	le.PutUint64(h[hdrCapacity:], uint64(p.sectors))
	le.PutUint64(h[hdrGrainSize:], writerGrainSectors)
	le.PutUint64(h[hdrDescriptorOffset:], descSector)
	le.PutUint64(h[hdrDescriptorSize:], descSectors)
	le.PutUint32(h[hdrNumGTEsPerGT:], writerGTEs)
	le.PutUint64(h[hdrRGDOffset:], uint64(rgd))
	le.PutUint64(h[hdrGDOffset:], gd)
	le.PutUint64(h[hdrOverHead:], uint64(overhead))
	copy(h[hdrCheckBytes:], checkBytes)
	return h
}

// prologue returns the header and descriptor sectors.
func (p *params) prologue(rgd int64, gd uint64, overhead int64, file string) []byte {
	b := make([]byte, (1+descSectors)*sectorSize)
	copy(b, p.header(rgd, gd, overhead))
	copy(b[descSector*sectorSize:], p.descriptor(newCID(), file))
	return b
}

// newCID makes a descriptor's content ID: random, as qemu's; tests fix it.
var newCID = mrand.Uint32

// extentName is the file name the descriptor's extent line gives: the
// output's final name, or qemu's default for a nameless one.
func extentName(name string) string {
	if name == "" {
		return "image.vmdk"
	}
	return filepath.Base(name)
}

// Measure answers qemu-img measure for VMDK output (qemu-img 7.2 itself
// cannot measure VMDK). For monolithicSparse both figures are exact: the
// metadata plus a grain per Data grain of the layout (or every grain);
// Required is an upper bound when some of those grains hold only zeros,
// which the writer leaves unallocated.
// For streamOptimized they are upper bounds: every grain stored as it
// would be if it did not compress at all.
func Measure(o format.WriteOptions) (format.Measurement, error) {
	p, err := newParams(o)
	if err != nil {
		return format.Measurement{}, err
	}
	data, tables := int64(0), int64(0)
	if o.Layout != nil {
		var lastGT int64 = -1
		err := o.Layout.Align(o.Size, WriterGrainSize)(func(e format.Extent) error {
			if e.Status != format.Data {
				return nil
			}
			first, end := e.Start/WriterGrainSize, (e.End()+WriterGrainSize-1)/WriterGrainSize
			data += end - first
			// Grain tables holding data, for streamOptimized.
			f, l := first/writerGTEs, (end-1)/writerGTEs
			if f == lastGT {
				f++
			}
			if l >= f {
				tables += l - f + 1
			}
			lastGT = l
			return nil
		})
		if err != nil {
			return format.Measurement{}, err
		}
	}
	if !p.stream {
		base := p.grainSector * sectorSize
		return format.Measurement{Required: base + data*WriterGrainSize, FullyAllocated: base + p.grains*WriterGrainSize}, nil
	}
	size := func(grains, gts int64) int64 {
		return streamOverhead*sectorSize + grains*maxCompressedGrain +
			gts*(sectorSize+gtBytes) + sectorSize + p.gdSectors*sectorSize + footerBytes
	}
	return format.Measurement{Required: size(data, tables), FullyAllocated: size(p.grains, p.gtCount)}, nil
}

// NewWriter returns a VMDK writer of o.Size bytes on dst; o.Options were
// validated by the registry. Both subformats stream to a non-seekable dst.
func NewWriter(dst format.Target, o format.WriteOptions) (format.Writer, error) {
	p, err := newParams(o)
	if err != nil {
		return nil, err
	}
	out, err := format.NewOutput(dst, Name)
	if err != nil {
		return nil, err
	}
	out.MinHole = minHole
	if p.stream {
		return newStreamWriter(out, p, extentName(o.Name))
	}
	layout := o.Layout
	if layout == nil {
		layout = format.AllData(o.Size)
	}
	return newSparseWriter(out, p, layout.Align(o.Size, WriterGrainSize), extentName(o.Name), !out.Seekable() || o.FrontToBack)
}

// sparseWriter writes monolithicSparse. On a file the grains go first,
// packed from grainSector as Data blocks arrive, and the header and tables
// are written at Close over the hole left for them. Up front (on a pipe,
// or on a file asked to be written front to back) the header and tables
// go first, at the first Write, for the grains the engine's data scan
// found (MarkData); the grains then follow in the same places. Both ways
// give the same bytes.
type sparseWriter struct {
	out  *format.Output
	p    *params
	file string
	// upfront: the header and tables precede the grains, the output is
	// written strictly front to back.
	upfront bool

	// alloc holds the grains that get a slot, in guest order. It starts
	// as the layout's Data grains, which bound what may arrive as data; up
	// front the data scan replaces it, otherwise a block that arrives
	// without data drops its grains.
	alloc grainBits
	// metaDone: the header and tables are written (up front).
	metaDone bool
	slots    int64 // slots filled (a file) or laid out (up front)
	done     int64 // guest bytes written
}

func newSparseWriter(out *format.Output, p *params, layout format.Layout, file string, upfront bool) (*sparseWriter, error) {
	w := &sparseWriter{out: out, p: p, file: file, upfront: upfront, alloc: newGrainBits(p.gtCount)}
	err := layout(func(e format.Extent) error {
		if e.Status != format.Data {
			return nil
		}
		if e.Start < 0 || e.End() > p.size {
			return fmt.Errorf("vmdk: layout range [%d,+%d) outside the disk", e.Start, e.Length)
		}
		w.alloc.set(e.Start/WriterGrainSize, (e.End()+WriterGrainSize-1)/WriterGrainSize, true)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !upfront {
		// The header and tables come last: leave their place.
		return w, out.Skip(p.grainSector * sectorSize)
	}
	return w, nil
}

// NeedsDataScan is true up front (on a pipe, or front to back on a file),
// where the tables precede the grains: the grains to allocate then come
// from MarkData, not the layout.
func (w *sparseWriter) NeedsDataScan() bool {
	if !w.upfront || w.metaDone {
		return false
	}
	w.alloc.reset()
	return true
}

// MarkData allocates the grains of a block that will carry data.
func (w *sparseWriter) MarkData(start, length int64) {
	if w.metaDone || start < 0 || length <= 0 || start+length > w.p.size {
		return
	}
	w.alloc.set(start/WriterGrainSize, (start+length+WriterGrainSize-1)/WriterGrainSize, true)
}

// checkSlots fails when slots grains would not all be addressable.
func (w *sparseWriter) checkSlots(slots int64) error {
	if slots > 0 && w.p.grainSector+(slots-1)*writerGrainSectors > maxHostSector {
		return fmt.Errorf("vmdk: the data does not fit the 2 TiB a sparse extent can address")
	}
	return nil
}

// writeMeta writes everything before the first grain, front to back from
// the output's current offset 0: header, descriptor, the redundant grain
// directory and tables, the grain directory and tables, with a slot for
// each grain of alloc.
func (w *sparseWriter) writeMeta() error {
	p := w.p
	slots := w.alloc.count(0, p.grains)
	if err := w.checkSlots(slots); err != nil {
		return err
	}
	if _, err := w.out.Write(p.prologue(rgdSector, uint64(p.gdSector), p.grainSector, w.file)); err != nil {
		return err
	}
	// Both copies: a directory naming its tables, then the tables.
	for _, dir := range []int64{rgdSector, p.gdSector} {
		if err := w.writeGD(dir + p.gdSectors); err != nil {
			return err
		}
		n, err := w.writeGTs()
		if err != nil {
			return err
		}
		if n != slots {
			return fmt.Errorf("vmdk: internal error: tables map %d grains of %d", n, slots)
		}
	}
	return w.out.Skip(p.grainSector*sectorSize - w.out.Pos())
}

// writeGD writes a grain directory whose tables start at sector first.
func (w *sparseWriter) writeGD(first int64) error {
	buf := make([]byte, min(w.p.gdSectors*sectorSize, 64<<10))
	for i := int64(0); i < w.p.gtCount; {
		n := min(w.p.gtCount-i, int64(len(buf)/4))
		for k := int64(0); k < n; k++ {
			le.PutUint32(buf[k*4:], uint32(first+(i+k)*gtSectors))
		}
		if _, err := w.out.Write(buf[:n*4]); err != nil {
			return err
		}
		i += n
	}
	return w.out.Skip(w.p.gdSectors*sectorSize - w.p.gtCount*4)
}

// writeGTs writes every grain table, giving each grain of alloc the next
// slot, and returns the number of slots. Empty tables are holes on a
// file.
func (w *sparseWriter) writeGTs() (int64, error) {
	var gt [gtBytes]byte
	var slot int64
	for _, tab := range w.alloc.tabs {
		if tab == nil || *tab == [writerGTEs / 64]uint64{} {
			if err := w.out.Skip(gtBytes); err != nil {
				return 0, err
			}
			continue
		}
		clear(gt[:])
		for i := range writerGTEs {
			if tab[i/64]&(1<<(i%64)) != 0 {
				le.PutUint32(gt[i*4:], uint32(w.p.grainSector+slot*writerGrainSectors))
				slot++
			}
		}
		if _, err := w.out.Write(gt[:]); err != nil {
			return 0, err
		}
	}
	return slot, nil
}

// streamMeta writes the header and tables up front.
func (w *sparseWriter) streamMeta() error {
	w.metaDone = true
	w.slots = w.alloc.count(0, w.p.grains)
	return w.writeMeta()
}

// BlockSize is the grain.
func (w *sparseWriter) BlockSize() int64 { return WriterGrainSize }

// Encode does nothing: monolithicSparse grains are stored as they are.
func (w *sparseWriter) Encode(*format.Block) error { return nil }

// Write stores the block's Data grains in the next slots. A block without
// data stores nothing on a file; up front it fills the slots laid out for
// its grains, if any, with zeros (there are none after a data scan).
func (w *sparseWriter) Write(b *format.Block) error {
	if err := checkBlock(b, w.done, w.p.size); err != nil {
		return err
	}
	if w.upfront && !w.metaDone {
		if err := w.streamMeta(); err != nil {
			return err
		}
	}
	g0, g1 := b.Start/WriterGrainSize, (b.End()+WriterGrainSize-1)/WriterGrainSize
	if b.Status != format.Data {
		w.done = b.End()
		if w.upfront {
			return w.out.Skip(w.alloc.count(g0, g1) * WriterGrainSize)
		}
		w.alloc.set(g0, g1, false)
		return nil
	}
	if w.alloc.count(g0, g1) != g1-g0 {
		return fmt.Errorf("vmdk: data block [%d,+%d) outside the layout's data", b.Start, b.Length)
	}
	if !w.upfront {
		if err := w.checkSlots(w.slots + g1 - g0); err != nil {
			return err
		}
		w.slots += g1 - g0
	}
	if _, err := w.out.Write(b.Data); err != nil {
		return err
	}
	w.done = b.End()
	// The last grain of the disk is stored whole.
	return w.out.Skip((g1-g0)*WriterGrainSize - b.Length)
}

// Close sets the file's length; when they come last it then writes the
// header and tables.
func (w *sparseWriter) Close() error {
	if w.done != w.p.size {
		return fmt.Errorf("vmdk: closed after %d of %d bytes", w.done, w.p.size)
	}
	if w.upfront && !w.metaDone {
		if err := w.streamMeta(); err != nil {
			return err
		}
	}
	if err := w.out.Finish((w.p.grainSector + w.slots*writerGrainSectors) * sectorSize); err != nil {
		return err
	}
	if w.upfront {
		return nil
	}
	if n := w.alloc.count(0, w.p.grains); n != w.slots {
		return fmt.Errorf("vmdk: internal error: %d grains written, %d allocated", w.slots, n)
	}
	if err := w.out.Rewind(); err != nil {
		return err
	}
	if err := w.writeMeta(); err != nil {
		return err
	}
	return w.out.EndRewrite()
}

// grainBits is a set of grains: a bitmap per grain table, allocated when
// the table gets its first grain.
type grainBits struct {
	tabs []*[writerGTEs / 64]uint64
}

func newGrainBits(tables int64) grainBits {
	return grainBits{tabs: make([]*[writerGTEs / 64]uint64, tables)}
}

// reset empties the set.
func (s *grainBits) reset() { clear(s.tabs) }

// wordMask returns how many grains from g on, before g1, share g's bitmap
// word, and their mask in it.
func wordMask(g, g1 int64) (int64, uint64) {
	b := g % 64
	n := min(64-b, g1-g)
	if n == 64 {
		return n, ^uint64(0)
	}
	return n, (1<<n - 1) << b
}

// set adds (on) or removes grains [g0, g1).
func (s *grainBits) set(g0, g1 int64, on bool) {
	for g := g0; g < g1; {
		t := g / writerGTEs
		tab := s.tabs[t]
		if tab == nil {
			if !on {
				g = (t + 1) * writerGTEs
				continue
			}
			tab = new([writerGTEs / 64]uint64)
			s.tabs[t] = tab
		}
		n, mask := wordMask(g, g1)
		if on {
			tab[g%writerGTEs/64] |= mask
		} else {
			tab[g%writerGTEs/64] &^= mask
		}
		g += n
	}
}

// count returns how many grains of [g0, g1) are in the set.
func (s *grainBits) count(g0, g1 int64) int64 {
	var c int64
	for g := g0; g < g1; {
		t := g / writerGTEs
		tab := s.tabs[t]
		if tab == nil {
			g = (t + 1) * writerGTEs
			continue
		}
		n, mask := wordMask(g, g1)
		c += int64(bits.OnesCount64(tab[g%writerGTEs/64] & mask))
		g += n
	}
	return c
}

// checkBlock checks that b follows done, ends inside the disk and carries
// its data.
func checkBlock(b *format.Block, done, size int64) error {
	switch {
	case b.Start != done:
		return fmt.Errorf("vmdk: block at %d arrived when %d bytes were written", b.Start, done)
	case b.Length <= 0 || b.End() > size:
		return fmt.Errorf("vmdk: block [%d,+%d) outside the disk of %d bytes", b.Start, b.Length, size)
	case b.Status == format.Data && int64(len(b.Data)) != b.Length:
		return fmt.Errorf("vmdk: data block [%d,+%d) carries %d bytes", b.Start, b.Length, len(b.Data))
	}
	return nil
}
