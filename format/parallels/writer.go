package parallels

// The Parallels writer: the header and catalog as qemu-img creates them
// ("WithouFreSpacExt", catalog in clusters), then the clusters that hold
// data, packed in guest order. A cluster is the engine's block, so each
// arrives whole: data, or nothing to store. On a file the clusters come
// first and the header and catalog are written at Close over the room
// left for them; on a pipe (or front to back, for --checksum) they come
// first, from the engine's data scan, so a pipe gets the file's bytes.

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/blockset"
)

const (
	optClusterSize     = "cluster_size"
	defaultClusterSize = 1 << 20
	// qemu's geometry, which readers ignore.
	headsNumber = 16
	secPerCyl   = 32
)

func init() {
	format.RegisterWriter(&format.WriterFormat{
		Name: Name,
		Options: []format.OptionSpec{
			{Name: optClusterSize, Help: "cluster size (default 1M; rounded up to whole sectors as qemu does; at most 16M)"},
		},
		Check:   func(o format.WriteOptions) error { _, err := planOf(o); return err },
		New:     format.Creates(NewWriter),
		Measure: Measure,
	})
}

// plan is what the options and the size make of the output.
type plan struct {
	size      int64 // virtual size: the source's, rounded up to sectors
	cluster   int64
	entries   int64 // catalog entries
	dataStart int64 // file offset of the first cluster: header and catalog, rounded up to a cluster
}

func roundUp(v, unit int64) int64 { return (v + unit - 1) / unit * unit }

// planOf validates the options and lays the image out as qemu-img create
// does for the same size and cluster size.
func planOf(o format.WriteOptions) (plan, error) {
	p := plan{cluster: defaultClusterSize}
	if v, ok := o.Options[optClusterSize]; ok {
		n, err := format.ParseSize(v)
		if err != nil || n <= 0 {
			return p, fmt.Errorf("parallels: option cluster_size=%s: not a size", v)
		}
		if p.cluster = roundUp(n, sectorSize); p.cluster > format.MaxBlockSize {
			return p, fmt.Errorf("parallels: option cluster_size=%s: at most %d bytes (a cluster is written as one block)", v, format.MaxBlockSize)
		}
	}
	if o.Size < 0 {
		return p, fmt.Errorf("parallels: negative size %d", o.Size)
	}
	p.size = roundUp(o.Size, sectorSize)
	p.entries = (p.size + p.cluster - 1) / p.cluster
	p.dataStart = roundUp(headerSize+entrySize*p.entries, p.cluster)
	switch {
	case p.entries > maxBATEntries || p.entries*entrySize > format.MaxTableBytes:
		return p, fmt.Errorf("parallels: a disk of %d bytes needs %d catalog entries of %d-byte clusters, more than a reader takes (use a larger cluster_size)", p.size, p.entries, p.cluster)
	case p.dataStart/p.cluster+p.entries > math.MaxUint32:
		return p, fmt.Errorf("parallels: a disk of %d bytes does not fit 32-bit cluster numbers of %d bytes", p.size, p.cluster)
	}
	return p, nil
}

// Measure gives this writer's output sizes (qemu-img 7.2 cannot measure
// parallels): the header and catalog, and a cluster per cluster holding
// data (Required is an upper bound when some turn out all zero).
func Measure(o format.WriteOptions) (format.Measurement, error) {
	p, err := planOf(o)
	if err != nil {
		return format.Measurement{}, err
	}
	_, count, err := blockset.Layout(o, p.size, p.cluster, Name)
	if err != nil {
		return format.Measurement{}, err
	}
	return format.Measurement{Required: p.dataStart + count*p.cluster, FullyAllocated: p.dataStart + p.entries*p.cluster}, nil
}

// Writer writes a Parallels image.
type Writer struct {
	p       plan
	size    int64 // source size: blocks arrive for [0, size)
	out     *format.Output
	st      *blockset.Storage // the clusters stored (Lazy: a file, header and catalog at Close)
	written int64             // clusters stored so far
	next    int64             // guest offset of the next block expected
	headers bool              // the header and catalog are written
}

// NewWriter returns a Parallels writer on dst, which must be new and
// empty. It writes nothing yet. A non-seekable dst is supported.
func NewWriter(dst format.Target, o format.WriteOptions) (*Writer, error) {
	p, err := planOf(o)
	if err != nil {
		return nil, err
	}
	out, err := format.NewOutput(dst, Name)
	if err != nil {
		return nil, err
	}
	w := &Writer{p: p, size: o.Size, out: out}
	if w.st, _, err = blockset.NewStorage(o, p.size, p.cluster, out.Seekable(), Name); err != nil {
		return nil, err
	}
	if w.st.Lazy {
		return w, out.Skip(p.dataStart)
	}
	return w, nil
}

// NeedsDataScan is true on a pipe or front to back: the catalog precedes
// the clusters, so the clusters to store come from MarkData.
func (w *Writer) NeedsDataScan() bool { return w.st.NeedsDataScan() }

// MarkData notes clusters that will carry data.
func (w *Writer) MarkData(start, length int64) {
	if !w.headers {
		w.st.MarkData(start, length)
	}
}

// BlockSize is the cluster.
func (w *Writer) BlockSize() int64 { return w.p.cluster }

// Encode has nothing to prepare.
func (w *Writer) Encode(*format.Block) error { return nil }

// Write stores the clusters of a data block, each after the last one
// stored; ranges of zeros store nothing, except a cluster the catalog
// already names (a pipe), which is written as zeros.
func (w *Writer) Write(b *format.Block) error {
	switch {
	case b.Start != w.next:
		return fmt.Errorf("parallels: block at %d arrived, expected one at %d", b.Start, w.next)
	case b.Length <= 0 || b.End() > w.size:
		return fmt.Errorf("parallels: block [%d,+%d) outside the disk of %d bytes", b.Start, b.Length, w.size)
	case b.Status == format.Data && int64(len(b.Data)) != b.Length:
		return fmt.Errorf("parallels: data block [%d,+%d) carries %d bytes", b.Start, b.Length, len(b.Data))
	}
	w.next = b.End()
	if err := w.headersFirst(); err != nil {
		return err
	}
	for off := b.Start; off < b.End(); {
		c := off / w.p.cluster
		stored, err := w.st.Take(c, off, b.Status == format.Data)
		if err != nil {
			return err
		}
		if !stored {
			off = min(w.st.Next(c)*w.p.cluster, b.End())
			continue
		}
		end := min((c+1)*w.p.cluster, b.End())
		if err := w.out.SkipTo(w.p.dataStart + w.written*w.p.cluster); err != nil {
			return err
		}
		w.written++
		if b.Status == format.Data {
			_, err = w.out.Write(b.Data[off-b.Start : end-b.Start])
		} else {
			err = w.out.Skip(end - off)
		}
		if err != nil {
			return err
		}
		off = end
	}
	return nil
}

// headersFirst writes the header and catalog before the first cluster on
// a pipe (or front to back), once; on a file they come at Close.
func (w *Writer) headersFirst() error {
	if w.st.Lazy || w.headers {
		return nil
	}
	return w.writeHeaders()
}

// writeHeaders writes the header and the catalog of the stored clusters
// at offset 0 of the output.
func (w *Writer) writeHeaders() error {
	w.headers = true
	p := w.p
	le := binary.LittleEndian
	h := make([]byte, headerSize, 64<<10)
	copy(h, magicExt)
	le.PutUint32(h[hdrVersion:], version)
	le.PutUint32(h[hdrHeads:], headsNumber)
	le.PutUint32(h[hdrCylinders:], uint32(p.size/sectorSize/headsNumber/secPerCyl))
	le.PutUint32(h[hdrTracks:], uint32(p.cluster/sectorSize))
	le.PutUint32(h[hdrBATEntries:], uint32(p.entries))
	le.PutUint64(h[hdrNbSectors:], uint64(p.size/sectorSize))
	le.PutUint32(h[hdrDataOff:], uint32(p.dataStart/sectorSize))
	chunk := h
	slot := uint32(p.dataStart / p.cluster)
	for i := range p.entries {
		var e uint32
		if w.st.Used.Has(i) {
			e, slot = slot, slot+1
		}
		chunk = le.AppendUint32(chunk, e)
		if len(chunk) == cap(chunk) {
			if _, err := w.out.Write(chunk); err != nil {
				return err
			}
			chunk = chunk[:0]
		}
	}
	if _, err := w.out.Write(chunk); err != nil {
		return err
	}
	return w.out.SkipTo(p.dataStart)
}

// Close ends the image after its last cluster, whole, and on a file
// writes the header and catalog.
func (w *Writer) Close() error {
	if w.next != w.size {
		return fmt.Errorf("parallels: closed after %d of %d bytes", w.next, w.size)
	}
	if err := w.headersFirst(); err != nil {
		return err
	}
	if used := w.st.Used.Count(); w.written != used {
		return fmt.Errorf("parallels: %d clusters written, %d allocated", w.written, used)
	}
	if err := w.out.Finish(w.p.dataStart + w.written*w.p.cluster); err != nil {
		return err
	}
	if !w.st.Lazy {
		return nil
	}
	if err := w.out.Rewind(); err != nil {
		return err
	}
	if err := w.writeHeaders(); err != nil {
		return err
	}
	return w.out.EndRewrite()
}
