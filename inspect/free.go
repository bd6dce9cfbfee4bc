package inspect

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/diskimg/diskimg/format"
)

// Sparsify finds the guest bytes that the filesystems inside an image
// mark free, by reading their allocation maps directly, and presents the
// image with those bytes read as zeros. Anything a parser is unsure of
// stays as it is: bytes outside recognised filesystems, journals and
// fixed metadata, unknown or encrypted containers, and filesystems that
// are dirty (unless forced) or whose maps do not add up.

// SparsifyOptions tune Sparsify.
type SparsifyOptions struct {
	// Force also sparsifies filesystems marked dirty or needing recovery,
	// whose on-disk maps may miss allocations still in a journal.
	Force bool
}

// SparsifyReport says, per filesystem, what Sparsify left out.
type SparsifyReport struct {
	Filesystems []SparsifiedFS `json:"filesystems"`
	// FreeBytes are the guest bytes now read as zeros.
	FreeBytes int64 `json:"free-bytes"`
	// SavedBytes are the free bytes the source holds as data: what a
	// conversion no longer copies.
	SavedBytes int64 `json:"saved-bytes"`
}

// SparsifiedFS is one filesystem or volume and what was left out of it.
type SparsifiedFS struct {
	Where string `json:"where"` // "disk", "partition 2", "partition 3, LV vg/root"
	Type  string `json:"type"`  // as in Filesystem.Type; "" when none was recognised
	Start int64  `json:"start"` // guest offset of its window
	Size  int64  `json:"size"`
	// FreeBytes and SavedBytes as in SparsifyReport, for this filesystem.
	FreeBytes  int64 `json:"free-bytes"`
	SavedBytes int64 `json:"saved-bytes"`
	// Kept says why the filesystem is copied whole; "" when its free
	// space was left out.
	Kept string `json:"kept,omitempty"`
}

// span is the byte range [start, end); for a free range, fs is the
// report entry it belongs to.
type span struct {
	start, end int64
	fs         int
}

// maxFreeSpans bounds the free ranges kept for one image (16 bytes each):
// a bitmap of alternating bits must not cost memory in proportion to the
// disk. Past the bound the shortest ranges are dropped, which only keeps
// data.
const maxFreeSpans = 1 << 21

// dirtyError marks a filesystem that is dirty or needs recovery.
type dirtyError struct{ why string }

func (e *dirtyError) Error() string { return e.why }

func dirty(format string, a ...any) error { return &dirtyError{fmt.Sprintf(format, a...)} }

// freeParser finds the free ranges of the filesystem on d and adds them to
// l, in increasing order. It returns a dirtyError (unless force) for a
// filesystem that needs recovery, and any other error when unsure.
type freeParser func(d dev, force bool, l *freeList) error

// freeParsers by Filesystem.Type; types not here are kept whole.
var freeParsers = map[string]freeParser{
	"ext2": extFree, "ext3": extFree, "ext4": extFree,
	"xfs":   xfsFree,
	"ntfs":  ntfsFree,
	"vfat":  vfatFree,
	"exfat": exfatFree,
	"swap":  swapFree,
}

// keptReasons say why a recognised type is copied whole.
var keptReasons = map[string]string{
	"crypto_LUKS": "encrypted",
	"btrfs":       "btrfs free space is not read: copied whole",
	"iso9660":     "read-only filesystem",
}

// Sparsify returns img with the free space of its filesystems read as
// zeros and reported as Zero extents, and the report of what was left
// out. The error is non-nil only when the image itself cannot be read.
func Sparsify(img format.Image, opts SparsifyOptions) (format.Image, *SparsifyReport, error) {
	budget := int64(maxReadBudget) + img.Size()/32
	disk := dev{r: img, size: img.Size(), budget: &budget}
	r := &Report{Findings: []Finding{}}
	if err := inspectDisk(disk, r, Options{NoOS: true}); err != nil {
		return nil, nil, err
	}
	vols, protect, err := volumesOf(r, disk)
	if err != nil {
		return nil, nil, err
	}
	rep := &SparsifyReport{Filesystems: []SparsifiedFS{}}
	var free []span
	perFS := max(maxFreeSpans/max(len(vols), 1), 1024)
	for _, v := range vols {
		idx := len(rep.Filesystems)
		found, err := v.freeSpans(disk, opts.Force, perFS, &rep.Filesystems)
		if err != nil {
			return nil, nil, err
		}
		for i, spans := range found {
			for _, s := range spans {
				s.fs = idx + i
				free = append(free, s)
			}
		}
	}
	slices.SortFunc(free, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	free = subtract(disjoint(free), protect)
	if err := rep.count(img, free); err != nil {
		return nil, nil, err
	}
	if len(free) == 0 {
		return img, rep, nil
	}
	return &sparseImage{Image: img, free: mergeSpans(free)}, rep, nil
}

// volume is a window of the disk that may hold a filesystem.
type volume struct {
	where string
	win   span
	fs    *Filesystem
	// others are the other partitions: bytes they share with win are
	// never free.
	others []span
}

// volumesOf lists the filesystem windows Inspect found and the bytes no
// filesystem may free: partition tables and, for each window, the other
// partitions overlapping it.
func volumesOf(r *Report, disk dev) ([]volume, []span, error) {
	var vols []volume
	var protect []span
	if r.Filesystem != nil {
		// A filesystem on the whole disk wins over an MBR in its first
		// sector; the partitions that MBR lists keep their bytes.
		v := volume{where: "disk", win: span{start: 0, end: disk.size}, fs: r.Filesystem}
		s0, err := disk.read(0, sectorSize)
		if err != nil {
			return nil, nil, err
		}
		if mbrLooksValid(s0) {
			pt, err := readMBR(disk, s0, &Report{})
			if err != nil {
				return nil, nil, err
			}
			for _, p := range pt.Partitions {
				v.others = append(v.others, span{start: p.Start, end: p.Start + p.Size})
			}
			protect = pt.meta
		}
		return []volume{v}, protect, nil
	}
	pt := r.PartitionTable
	if pt == nil {
		return nil, nil, nil
	}
	protect = append(protect, pt.meta...)
	var parts []span
	for _, p := range pt.Partitions {
		if pt.Type == "mbr" && isExtended(mbrTypeByte(p.Type)) && p.Number <= mbrMaxEntries {
			continue
		}
		parts = append(parts, span{start: p.Start, end: p.Start + p.Size})
		vols = append(vols, volume{where: partWhere(p.Number), win: parts[len(parts)-1], fs: p.Filesystem})
	}
	for i := range vols {
		for j, o := range parts {
			if i != j && o.start < vols[i].win.end && vols[i].win.start < o.end {
				vols[i].others = append(vols[i].others, o)
			}
		}
	}
	return vols, protect, nil
}

// disjoint drops the parts of each range of the sorted list s that an
// earlier one covers.
func disjoint(s []span) []span {
	out := s[:0]
	for _, x := range s {
		if n := len(out); n > 0 {
			x.start = max(x.start, out[n-1].end)
		}
		if x.start < x.end {
			out = append(out, x)
		}
	}
	return out
}

// freeSpans adds the volume's report entries to out (more than one for
// an LVM physical volume whose logical volumes hold filesystems) and
// returns, for each entry, its free ranges in guest offsets.
func (v volume) freeSpans(disk dev, force bool, limit int, out *[]SparsifiedFS) ([][]span, error) {
	e := SparsifiedFS{Where: v.where, Start: v.win.start, Size: v.win.end - v.win.start}
	if v.fs == nil {
		e.Kept = "no filesystem recognised"
		*out = append(*out, e)
		return [][]span{nil}, nil
	}
	e.Type = v.fs.Type
	d := disk.sub(v.win.start, v.win.end-v.win.start)
	if v.fs.Type == "LVM2_member" {
		return lvmFreeSpans(d, v, e, force, limit, out)
	}
	spans, kept, err := runParser(d, v.fs.Type, force, limit)
	if err != nil {
		return nil, err
	}
	e.Kept = kept
	*out = append(*out, e)
	return [][]span{clipSpans(spans, v.win.start, v.others)}, nil
}

// runParser runs the parser for typ on d. kept says why nothing is
// freed; err is only an image read error.
func runParser(d dev, typ string, force bool, limit int) (spans []span, kept string, err error) {
	// Two signatures (swap left under a newer filesystem, say) leave
	// open which one is in use.
	var types []string
	for _, p := range probes {
		fs, err := p(d, "", &Report{})
		if isImageErr(err) {
			return nil, "", err
		}
		if fs != nil && err == nil {
			types = append(types, fs.Type)
		}
	}
	if len(types) > 1 {
		return nil, "ambiguous: signatures of " + strings.Join(types, " and "), nil
	}
	parse, ok := freeParsers[typ]
	if !ok {
		if kept = keptReasons[typ]; kept == "" {
			kept = "free space of " + typ + " is not read: copied whole"
		}
		return nil, kept, nil
	}
	l := &freeList{limit: limit, window: d.size}
	if err := parse(d, force, l); err != nil {
		if isImageErr(err) {
			return nil, "", err
		}
		var de *dirtyError
		if errors.As(err, &de) {
			return nil, "dirty: " + de.why + " (force to sparsify it anyway)", nil
		}
		return nil, "unsure: " + err.Error(), nil
	}
	return l.spans, "", nil
}

// clipSpans moves spans (relative to a window at base) to guest offsets,
// leaving out the bytes other partitions share with the window.
func clipSpans(spans []span, base int64, others []span) []span {
	out := make([]span, 0, len(spans))
	for _, s := range spans {
		out = append(out, span{start: s.start + base, end: s.end + base})
	}
	return subtract(out, others)
}

// subtract returns the parts of a (sorted, disjoint) outside every range
// of b (any order); each part keeps its range's fs.
func subtract(a, b []span) []span {
	if len(b) == 0 {
		return a
	}
	b = mergeSpans(b)
	var out []span
	j := 0
	for _, s := range a {
		for j < len(b) && b[j].end <= s.start {
			j++
		}
		for k := j; k < len(b) && b[k].start < s.end && s.start < s.end; k++ {
			if b[k].start > s.start {
				out = append(out, span{start: s.start, end: b[k].start, fs: s.fs})
			}
			s.start = max(s.start, b[k].end)
		}
		if s.start < s.end {
			out = append(out, s)
		}
	}
	return out
}

// mergeSpans sorts ranges and joins those that overlap or touch,
// dropping their fs.
func mergeSpans(s []span) []span {
	s = slices.Clone(s)
	slices.SortFunc(s, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	var out []span
	for _, x := range s {
		if x.end <= x.start {
			continue
		}
		if n := len(out); n > 0 && x.start <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, x.end)
			continue
		}
		out = append(out, span{start: x.start, end: x.end})
	}
	return out
}

// count fills in the free and saved bytes: saved are the free bytes the
// source's map says hold data.
func (rep *SparsifyReport) count(img format.Image, free []span) error {
	for _, f := range free {
		rep.Filesystems[f.fs].FreeBytes += f.end - f.start
		rep.FreeBytes += f.end - f.start
	}
	i := 0
	return format.Walk(img, 0, func(e format.Extent) error {
		if e.Status != format.Data {
			return nil
		}
		for i < len(free) && free[i].end <= e.Start {
			i++
		}
		for k := i; k < len(free) && free[k].start < e.End(); k++ {
			n := min(free[k].end, e.End()) - max(free[k].start, e.Start)
			rep.Filesystems[free[k].fs].SavedBytes += n
			rep.SavedBytes += n
		}
		return nil
	})
}

// WriteText writes the report as a table for people.
func (rep *SparsifyReport) WriteText(w io.Writer) error {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WHERE\tFS\tSIZE\tLEFT OUT\tOF WHICH DATA\t")
	for _, f := range rep.Filesystems {
		typ := f.Type
		if typ == "" {
			typ = "-"
		}
		left, data := human(f.FreeBytes), human(f.SavedBytes)
		if f.Kept != "" {
			left, data = "kept whole: "+f.Kept, ""
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", f.Where, typ, human(f.Size), left, data)
	}
	tw.Flush()
	fmt.Fprintf(&b, "sparsify: %s of free space read as zeros, %s of it held data\n", human(rep.FreeBytes), human(rep.SavedBytes))
	_, err := io.WriteString(w, b.String())
	return err
}

// freeList collects a filesystem's free ranges in increasing order,
// clipped to its window, within a bound on their number.
type freeList struct {
	spans  []span
	limit  int   // most ranges kept
	min    int64 // ranges shorter than this are dropped
	window int64 // the filesystem's device size: ranges are clipped to it
}

var errUnsorted = errors.New("free ranges are out of order")

// add adds the free range [start, end), which must not start before the
// end of the previous one.
func (l *freeList) add(start, end int64) error {
	start, end = max(start, 0), min(end, l.window)
	if end <= start {
		return nil
	}
	n := len(l.spans)
	if n > 0 && start < l.spans[n-1].end {
		return errUnsorted
	}
	if n > 0 && start == l.spans[n-1].end {
		l.spans[n-1].end = end
		return nil
	}
	if end-start < l.min {
		return nil
	}
	if n >= l.limit {
		l.min = max(l.min*2, 4096)
		kept := l.spans[:0]
		for _, s := range l.spans {
			if s.end-s.start >= l.min {
				kept = append(kept, s)
			}
		}
		l.spans = kept
		if end-start < l.min {
			return nil
		}
	}
	l.spans = append(l.spans, span{start: start, end: end})
	return nil
}

// protect removes the (any order) ranges from the list.
func (l *freeList) protect(p []span) { l.spans = subtract(l.spans, p) }

// bitmapRuns calls fn for each run of zero bits among the first n bits of
// b (least significant bit first, 1 = in use) and returns how many bits
// are zero.
func bitmapRuns(b []byte, n int64, fn func(from, to int64) error) (int64, error) {
	n = min(n, int64(len(b))*8)
	var zeros int64
	start := int64(-1)
	flush := func(i int64) error {
		if start < 0 {
			return nil
		}
		s := start
		start = -1
		return fn(s, i)
	}
	for i := int64(0); i < n; {
		if i%8 == 0 && i+8 <= n && (b[i/8] == 0 || b[i/8] == 0xff) {
			if b[i/8] == 0xff {
				if err := flush(i); err != nil {
					return 0, err
				}
			} else {
				zeros += 8
				if start < 0 {
					start = i
				}
			}
			i += 8
			continue
		}
		if b[i/8]&(1<<(i%8)) == 0 {
			zeros++
			if start < 0 {
				start = i
			}
		} else if err := flush(i); err != nil {
			return 0, err
		}
		i++
	}
	return zeros, flush(n)
}

// sparseImage reads the free ranges of an image as zeros.
type sparseImage struct {
	format.Image
	free []span // sorted, disjoint, not touching
}

// next returns the index of the first free range ending after off.
func (s *sparseImage) next(off int64) int {
	i, _ := slices.BinarySearchFunc(s.free, off, func(x span, off int64) int {
		if x.end <= off {
			return -1
		}
		return 1
	})
	return i
}

func (s *sparseImage) Extent(off int64) (format.Extent, error) {
	i := s.next(off)
	if i < len(s.free) && s.free[i].start <= off {
		return format.Extent{Start: off, Length: min(s.free[i].end, s.Size()) - off, Status: format.Zero, Offset: -1}, nil
	}
	e, err := s.Image.Extent(off)
	if err != nil {
		return e, err
	}
	if i < len(s.free) && s.free[i].start < e.End() && s.free[i].start > e.Start {
		e.Length = s.free[i].start - e.Start
	}
	return e, nil
}

func (s *sparseImage) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, s.Size())
	if n == 0 {
		return 0, clipErr
	}
	end := off + int64(n)
	i := s.next(off)
	for pos := off; pos < end; {
		if i < len(s.free) && s.free[i].start <= pos {
			e := min(s.free[i].end, end)
			clear(p[pos-off : e-off])
			pos = e
			i++
			continue
		}
		e := end
		if i < len(s.free) {
			e = min(e, s.free[i].start)
		}
		m, err := s.Image.ReadAt(p[pos-off:e-off], pos)
		if int64(m) < e-pos {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return int(pos-off) + m, err
		}
		pos = e
	}
	return n, clipErr
}
