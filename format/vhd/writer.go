package vhd

// The VHD writer: dynamic disks (footer copy, dynamic disk header, BAT,
// then the blocks in guest order, then the footer) and fixed disks (the
// data, then the footer). Everything is written front to back, so the
// output streams to a pipe and the engine's --checksum is a single pass,
// and the bytes on a pipe are the bytes of the file.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/blockset"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// Footer fields the writer sets beyond those the reader needs.
const (
	featureReserved   = 2 // the spec's "reserved" feature bit, always set
	formatVersion     = 0x00010000
	noDataOffset      = 0xFFFFFFFFFFFFFFFF // footer data offset of a fixed disk
	creatorVersion    = 0x00050003         // Virtual PC 2007, as qemu writes it
	creatorOS         = "Wi2k"
	creatorQemu       = "qemu" // size from the CHS geometry
	creatorQemuForced = "qem2" // size from the current size (force_size)
)

// Dynamic disk header fields the writer sets beyond those the reader needs.
const (
	dynDataOffset = 8  // uint64: unused, all ones
	dynVersion    = 24 // uint32: header version
)

// Layout of a dynamic disk as qemu creates it.
const (
	// WriterBlockSize is the guest bytes per block: qemu-img 7.2 has no
	// option for it and always uses 2 MiB, as do Virtual PC and Hyper-V.
	WriterBlockSize = 2 << 20
	// bitmapBytes is a block's sector bitmap: one bit per sector of a
	// 2 MiB block, 512 bytes, exactly one sector.
	bitmapBytes  = WriterBlockSize / sectorSize / 8
	headerOffset = vhdspec.FooterSize           // the dynamic header follows the footer copy
	batOffset    = headerOffset + dynHeaderSize // the BAT follows the header
	// chsMaxCylinders, chsMaxHeads and chsMaxSectors are the largest
	// geometry; force_size writes it so readers use the current size.
	chsMaxCylinders = 65535
	chsMaxHeads     = 16
	chsMaxSectors   = 255
	// MaxWriteSize is the largest disk written: qemu's 2040 GiB.
	MaxWriteSize = maxSectors * sectorSize
	// azureUnit is the granularity of an Azure disk's virtual size.
	azureUnit = 1 << 20
)

// Subformats and options, by qemu-img's -o names; azure is diskimg's own.
const (
	SubformatDynamic = "dynamic"
	SubformatFixed   = "fixed"
	optSubformat     = "subformat"
	optForceSize     = "force_size"
	optAzure         = "azure"
)

// pageBytes is the unit of holes inside a data block on a file:
// qemu-img's default -S.
const pageBytes = 4 << 10

func init() {
	format.RegisterWriter(&format.WriterFormat{
		Name:    Name,
		Aliases: []string{"vhd"},
		Options: []format.OptionSpec{
			{Name: optSubformat, Help: "dynamic (sparse, the default) or fixed (the data then a footer)",
				Validate: format.OneOf(SubformatDynamic, SubformatFixed)},
			{Name: optForceSize, Help: "on: keep the exact size instead of rounding it up to a CHS geometry (off by default)",
				Validate: validateBool},
			{Name: optAzure, Help: "on: an Azure-ready disk (diskimg only): fixed, force_size, size rounded up to a whole MiB",
				Validate: validateBool},
		},
		MaxSize: MaxWriteSize,
		Check:   func(o format.WriteOptions) error { _, err := planOf(o); return err },
		New:     format.Creates(NewWriter),
		Measure: Measure,
	})
}

// qemu's boolean option spellings.
var boolValues = map[string]bool{"on": true, "yes": true, "true": true, "y": true, "off": false, "no": false, "false": false, "n": false}

func validateBool(v string) error {
	if _, ok := boolValues[v]; !ok {
		return fmt.Errorf("must be on or off")
	}
	return nil
}

// plan is what the options and the source size make of the output.
type plan struct {
	fixed, force bool
	size         int64 // the VHD's virtual size
	cyl, heads   int64 // CHS geometry written in the footer
	spt          int64
	entries      int64 // BAT entries (dynamic)
	dataStart    int64 // file offset of the first block (dynamic)
}

// planOf validates the options and computes the output's size and
// geometry the way qemu-img create does for the same size and options.
func planOf(o format.WriteOptions) (plan, error) {
	var p plan
	switch o.Options[optSubformat] {
	case "", SubformatDynamic:
	case SubformatFixed:
		p.fixed = true
	default:
		return p, fmt.Errorf("vpc: subformat %q (want %s or %s)", o.Options[optSubformat], SubformatDynamic, SubformatFixed)
	}
	force, forceSet := boolValues[o.Options[optForceSize]]
	p.force = force
	if o.Size < 0 {
		return p, fmt.Errorf("vpc: negative size %d", o.Size)
	}
	// qemu sizes disks in whole sectors, rounding up.
	size := roundUp(o.Size, sectorSize)
	if boolValues[o.Options[optAzure]] {
		if sf := o.Options[optSubformat]; sf == SubformatDynamic {
			return p, fmt.Errorf("vpc: azure=on writes a fixed disk; it cannot be combined with subformat=%s", sf)
		}
		if forceSet && !force {
			return p, fmt.Errorf("vpc: azure=on keeps the exact size; it cannot be combined with force_size=off")
		}
		p.fixed, p.force = true, true
		size = roundUp(size, azureUnit)
	}
	if p.force {
		p.cyl, p.heads, p.spt = chsMaxCylinders, chsMaxHeads, chsMaxSectors
		p.size = size
	} else {
		// The smallest geometry holding the disk, found as qemu does:
		// the spec's formula rounds down, so ask for one more sector
		// until it does not.
		want := min(size/sectorSize, vhdspec.MaxGeometry)
		for n := want; p.cyl*p.heads*p.spt < want; n++ {
			p.cyl, p.heads, p.spt = vhdspec.Geometry(min(n, vhdspec.MaxGeometry))
		}
		p.size = p.cyl * p.heads * p.spt * sectorSize
		if p.cyl*p.heads*p.spt == vhdspec.MaxGeometry {
			// The largest geometry means "use the current size".
			p.size = size
		}
	}
	if p.size > MaxWriteSize {
		return p, fmt.Errorf("vpc: disk of %d bytes exceeds the format's limit of %d bytes (2040 GiB)", p.size, int64(MaxWriteSize))
	}
	if !p.fixed {
		p.entries = (p.size + WriterBlockSize - 1) / WriterBlockSize
		p.dataStart = batOffset + roundUp(4*p.entries, sectorSize)
	}
	return p, nil
}

// blockStride is the file bytes of one allocated block.
const blockStride = bitmapBytes + WriterBlockSize

// Measure answers qemu-img measure for VHD output. qemu-img 7.2 itself
// cannot ("Block driver 'vpc' does not support size measurement"), so the
// figures are this writer's exact output sizes: a fixed disk is its data
// and a footer; a dynamic disk holds the headers, the BAT, one block per
// block of the layout holding data and the footer (blocks that turn out
// all zero are left out, so Required is an upper bound then).
func Measure(o format.WriteOptions) (format.Measurement, error) {
	p, err := planOf(o)
	if err != nil {
		return format.Measurement{}, err
	}
	if p.fixed {
		n := p.size + vhdspec.FooterSize
		return format.Measurement{Required: n, FullyAllocated: n}, nil
	}
	_, count, err := blockset.Layout(o, p.size, WriterBlockSize, Name)
	if err != nil {
		return format.Measurement{}, err
	}
	return format.Measurement{
		Required:       p.dataStart + count*blockStride + vhdspec.FooterSize,
		FullyAllocated: p.dataStart + p.entries*blockStride + vhdspec.FooterSize,
	}, nil
}

// Hooks for tests, which need identical bytes from two conversions.
var (
	now     = time.Now
	newUUID = func() ([16]byte, error) {
		var u [16]byte
		if _, err := rand.Read(u[:]); err != nil {
			return u, err
		}
		u[6] = u[6]&0x0f | 0x40 // version 4: random
		u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
		return u, nil
	}
)

// Writer writes a VHD image. A dynamic disk allocates a block only for
// blocks that arrive as data, packed in guest order after the BAT; the
// rest stay unused in the BAT, as qemu-img leaves them. On a file the
// headers and the BAT are written at Close; on a pipe they must come
// first, so the engine's data scan (MarkData) tells the writer the blocks
// beforehand, and a pipe gets the file's bytes. On a file, 4 KiB zero
// pages inside data blocks are holes too.
type Writer struct {
	p      plan
	size   int64 // source size: blocks arrive for [0, size)
	out    *format.Output
	footer []byte

	// Dynamic disks.
	st        *blockset.Storage // the blocks allocated (Lazy: a file, headers and BAT at Close)
	written   int64             // blocks begun so far
	blockEnd  int64             // file offset where the current block's data ends
	next      int64             // guest offset of the next block expected
	headers   bool              // the headers and BAT are written
	holePages bool              // scan data blocks for zero pages (seekable target)
}

// NewWriter returns a VHD writer on dst, which must be new and empty. It
// writes nothing yet. A non-seekable dst is supported.
func NewWriter(dst format.Target, o format.WriteOptions) (*Writer, error) {
	p, err := planOf(o)
	if err != nil {
		return nil, err
	}
	out, err := format.NewOutput(dst, Name)
	if err != nil {
		return nil, err
	}
	w := &Writer{p: p, size: o.Size, out: out, holePages: out.Seekable()}
	if w.footer, err = makeFooter(p); err != nil {
		return nil, err
	}
	if p.fixed {
		return w, nil
	}
	var count int64
	if w.st, count, err = blockset.NewStorage(o, p.size, WriterBlockSize, out.Seekable(), Name); err != nil {
		return nil, err
	}
	if last := p.dataStart + count*blockStride; last/sectorSize > batUnused-1 {
		return nil, fmt.Errorf("vpc: %d blocks do not fit the 32-bit sector offsets of the BAT", count)
	}
	if w.st.Lazy {
		// Blocks from dataStart on; the headers and BAT in Close.
		return w, out.Skip(p.dataStart)
	}
	return w, nil
}

// NeedsDataScan is true for a dynamic disk on a pipe or written front to
// back: the BAT precedes the data, so the blocks to allocate come from
// MarkData.
func (w *Writer) NeedsDataScan() bool { return !w.p.fixed && w.st.NeedsDataScan() }

// MarkData notes blocks that will carry data.
func (w *Writer) MarkData(start, length int64) {
	if !w.headers && !w.p.fixed {
		w.st.MarkData(start, length)
	}
}

// makeFooter builds the 512-byte footer for plan p.
func makeFooter(p plan) ([]byte, error) {
	f := make([]byte, vhdspec.FooterSize)
	copy(f, cookie)
	be := binary.BigEndian
	be.PutUint32(f[vhdspec.OffFeatures:], featureReserved)
	be.PutUint32(f[vhdspec.OffFormatVersion:], formatVersion)
	if p.fixed {
		be.PutUint64(f[vhdspec.OffDataOffset:], noDataOffset)
	} else {
		be.PutUint64(f[vhdspec.OffDataOffset:], headerOffset)
	}
	be.PutUint32(f[vhdspec.OffTimestamp:], uint32(now().Unix()-vhdspec.Epoch.Unix()))
	app := creatorQemu
	if p.force {
		app = creatorQemuForced
	}
	copy(f[vhdspec.OffCreatorApp:], app)
	be.PutUint32(f[vhdspec.OffCreatorVersion:], creatorVersion)
	copy(f[vhdspec.OffCreatorOS:], creatorOS)
	be.PutUint64(f[vhdspec.OffOriginalSize:], uint64(p.size))
	be.PutUint64(f[vhdspec.OffCurrentSize:], uint64(p.size))
	be.PutUint16(f[vhdspec.OffGeometry:], uint16(p.cyl))
	f[footerHeads] = byte(p.heads)
	f[footerSectors] = byte(p.spt)
	typ := uint32(typeDynamic)
	if p.fixed {
		typ = typeFixed
	}
	be.PutUint32(f[vhdspec.OffDiskType:], typ)
	u, err := newUUID()
	if err != nil {
		return nil, fmt.Errorf("vpc: unique id: %w", err)
	}
	copy(f[vhdspec.OffUniqueID:], u[:])
	be.PutUint32(f[vhdspec.OffChecksum:], vhdspec.Checksum(f, vhdspec.OffChecksum))
	return f, nil
}

// headersFirst writes the headers and BAT before the first block on a
// pipe (or a file written front to back), once; on a lazy file they come
// at Close.
func (w *Writer) headersFirst() error {
	if w.st.Lazy || w.headers {
		return nil
	}
	return w.writeHeaders(w.out)
}

// writeHeaders writes the footer copy, the dynamic disk header and the
// BAT for the used blocks, padded with unused entries to whole sectors as
// qemu does, to o, at its offset 0.
func (w *Writer) writeHeaders(o *format.Output) error {
	w.headers = true
	if _, err := o.Write(w.footer); err != nil {
		return err
	}
	h := make([]byte, dynHeaderSize)
	copy(h, dynCookie)
	be := binary.BigEndian
	be.PutUint64(h[dynDataOffset:], noDataOffset)
	be.PutUint64(h[dynTableOffset:], batOffset)
	be.PutUint32(h[dynVersion:], formatVersion)
	be.PutUint32(h[dynMaxEntries:], uint32(w.p.entries))
	be.PutUint32(h[dynBlockSize:], WriterBlockSize)
	be.PutUint32(h[dynChecksum:], vhdspec.Checksum(h, dynChecksum))
	if _, err := o.Write(h); err != nil {
		return err
	}
	chunk := make([]byte, 0, 64<<10)
	host := w.p.dataStart / sectorSize
	batEnd := w.p.dataStart - batOffset
	for i := int64(0); i*4 < batEnd; i++ {
		e := uint32(batUnused)
		if i < w.p.entries && w.st.Used.Has(i) {
			e = uint32(host)
			host += blockStride / sectorSize
		}
		chunk = be.AppendUint32(chunk, e)
		if len(chunk) == cap(chunk) {
			if _, err := o.Write(chunk); err != nil {
				return err
			}
			chunk = chunk[:0]
		}
	}
	_, err := o.Write(chunk)
	return err
}

// BlockSize is the VHD block for a dynamic disk; a sector for a fixed one.
func (w *Writer) BlockSize() int64 {
	if w.p.fixed {
		return sectorSize
	}
	return WriterBlockSize
}

// zeroPages is Encode's result for a data block with zero pages: bit i is
// set when page i of the block is all zero.
type zeroPages []uint64

// Encode finds the zero pages of a data block on a seekable target, so
// Write can leave them as holes.
func (w *Writer) Encode(b *format.Block) error {
	if !w.holePages || b.Status != format.Data {
		return nil
	}
	var zp zeroPages
	n := (len(b.Data) + pageBytes - 1) / pageBytes
	for i := 0; i < n; i++ {
		pg := b.Data[i*pageBytes : min((i+1)*pageBytes, len(b.Data))]
		if format.IsZero(pg) {
			if zp == nil {
				zp = make(zeroPages, (n+63)/64)
			}
			zp[i/64] |= 1 << (i % 64)
		}
	}
	if zp != nil {
		b.Encoded = zp
	}
	return nil
}

// Write writes a block: its data, or zeros (a hole on a file).
func (w *Writer) Write(b *format.Block) error {
	if b.Start != w.next {
		return fmt.Errorf("vpc: block at %d arrived, expected one at %d", b.Start, w.next)
	}
	if b.Length <= 0 || b.End() > w.size {
		return fmt.Errorf("vpc: block [%d,+%d) outside the disk of %d bytes", b.Start, b.Length, w.size)
	}
	if b.Status == format.Data && int64(len(b.Data)) != b.Length {
		return fmt.Errorf("vpc: data block [%d,+%d) carries %d bytes", b.Start, b.Length, len(b.Data))
	}
	w.next = b.End()
	if w.p.fixed {
		return w.writeData(b, 0, b.Length)
	}
	if err := w.headersFirst(); err != nil {
		return err
	}
	for off := b.Start; off < b.End(); {
		bi := off / WriterBlockSize
		stored, err := w.st.Take(bi, off, b.Status == format.Data)
		if err != nil {
			return err
		}
		if !stored {
			// Jump to the next used block, or the block's end.
			off = min(w.st.Next(bi)*WriterBlockSize, b.End())
			continue
		}
		end := min((bi+1)*WriterBlockSize, b.End())
		if off == bi*WriterBlockSize {
			if err := w.beginBlock(); err != nil {
				return err
			}
		}
		if err := w.writeData(b, off-b.Start, end-off); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// beginBlock pads the previous block to its full size and writes the next
// allocated block's sector bitmap, every sector marked present as qemu
// does.
func (w *Writer) beginBlock() error {
	if w.blockEnd > w.out.Pos() {
		if err := w.out.SkipTo(w.blockEnd); err != nil {
			return err
		}
	}
	if want := w.p.dataStart + w.written*blockStride; w.out.Pos() != want {
		return fmt.Errorf("vpc: block %d would start at file offset %d, its BAT entry says %d", w.written, w.out.Pos(), want)
	}
	w.written++
	if _, err := w.out.Write(fullBitmap); err != nil {
		return err
	}
	w.blockEnd = w.out.Pos() + WriterBlockSize
	return nil
}

var fullBitmap = bytes.Repeat([]byte{0xFF}, bitmapBytes)

// writeData writes n bytes of b from offset at: its data with zero pages
// as holes, or zeros.
func (w *Writer) writeData(b *format.Block, at, n int64) error {
	if b.Status != format.Data {
		return w.out.Skip(n)
	}
	data := b.Data[at : at+n]
	zp, _ := b.Encoded.(zeroPages)
	if zp == nil {
		_, err := w.out.Write(data)
		return err
	}
	// Pages are counted from the block's start; at is a multiple of
	// pageBytes (a VHD block boundary inside the block).
	zeroAt := func(i int64) bool { pg := (at + i) / pageBytes; return zp[pg/64]&(1<<(pg%64)) != 0 }
	for i := int64(0); i < n; {
		zero := zeroAt(i)
		j := min((i/pageBytes+1)*pageBytes, n)
		for j < n && zeroAt(j) == zero {
			j = min(j+pageBytes, n)
		}
		var err error
		if zero {
			err = w.out.Skip(j - i)
		} else {
			_, err = w.out.Write(data[i:j])
		}
		if err != nil {
			return err
		}
		i = j
	}
	return nil
}

// Close pads the last block (or, for a fixed disk, the rest of the disk:
// the CHS or Azure rounding) and writes the footer.
func (w *Writer) Close() error {
	if w.next != w.size {
		return fmt.Errorf("vpc: closed after %d of %d bytes", w.next, w.size)
	}
	if w.p.fixed {
		if err := w.out.SkipTo(w.p.size); err != nil {
			return err
		}
	} else {
		if err := w.headersFirst(); err != nil {
			return err
		}
		if used := w.st.Used.Count(); w.written != used {
			return fmt.Errorf("vpc: %d blocks written, %d allocated", w.written, used)
		}
		if err := w.out.SkipTo(max(w.blockEnd, w.p.dataStart)); err != nil {
			return err
		}
	}
	if _, err := w.out.Write(w.footer); err != nil {
		return err
	}
	if err := w.out.Flush(); err != nil {
		return err
	}
	if w.p.fixed || !w.st.Lazy {
		return nil
	}
	// On a file: the headers and the BAT, now that the blocks are known,
	// over the hole left for them.
	if err := w.out.Rewind(); err != nil {
		return err
	}
	if err := w.writeHeaders(w.out); err != nil {
		return err
	}
	if w.out.Pos() != w.p.dataStart {
		return fmt.Errorf("vpc: internal error: headers of %d bytes, data at %d", w.out.Pos(), w.p.dataStart)
	}
	return w.out.EndRewrite()
}
