package format

// Holes in the host file under allocated blocks. A driver maps a guest
// range to a host offset from its tables alone; where the host file has a
// hole there (a qcow2 made with preallocation=metadata, a fixed VHD, a
// flat VMDK, a static VDI, a sparse raw file), the range reads as zeros
// and is not stored. The opener wraps every image so that its extent map
// asks the filesystem, as qemu's block status does under the format
// layer: such ranges are Zero (HostHole; Extent.MapFlags says how
// qemu-img map shows them), so the converter skips them without reading
// and allocated-size does not count them.
//
// The wrapper also records each local file's size, modification time and
// identity when it was opened: Unchanged reports a source that changed
// during a run.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxHostRuns bounds the runs cached per host file; past it the cache
// starts again. A walk asks in increasing order, so it needs few.
const maxHostRuns = 4096

// maxMemo bounds the extents an image remembers from its first walk from
// offset 0: a conversion walks the map several times (measure, the
// writer's layout, the engine), and the walks after the first cost
// nothing when the map has fewer runs.
const maxMemo = 1 << 16

// hostRun is a run of a host file that is all data or all hole.
type hostRun struct {
	start, end int64
	data       bool
}

// hostRuns finds a host file's data and hole runs with lseek(2)'s
// SEEK_DATA and SEEK_HOLE: one pair of calls per run, cached.
type hostRuns struct {
	name  string
	fd    int
	size  int64 // the file's size when it was opened
	mu    sync.Mutex
	runs  []hostRun // sorted, disjoint
	seeks int       // runs asked of the filesystem, for tests
}

// errChanged is wrapped by the errors that report a source changed
// during a run.
var errChanged = errors.New("changed during the run")

// runAt returns the run holding host offset off. At or past the size the
// file had when opened nothing is known: the driver reads it (or fails).
func (h *hostRuns) runAt(off int64) (hostRun, error) {
	if off >= h.size {
		return hostRun{off, 1<<63 - 1, true}, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	i := sort.Search(len(h.runs), func(i int) bool { return h.runs[i].end > off })
	if i < len(h.runs) && h.runs[i].start <= off {
		return h.runs[i], nil
	}
	r, err := h.seek(off)
	if err != nil {
		return r, err
	}
	if i < len(h.runs) {
		// A run found from inside ends no later than the next one known.
		r.end = min(r.end, h.runs[i].start)
	}
	if len(h.runs) >= maxHostRuns {
		h.runs, i = h.runs[:0], 0
	}
	h.runs = append(h.runs, hostRun{})
	copy(h.runs[i+1:], h.runs[i:])
	h.runs[i] = r
	return r, nil
}

// seek asks the filesystem for the run at off (off < size).
func (h *hostRuns) seek(off int64) (hostRun, error) {
	h.seeks++
	all := hostRun{off, h.size, true}
	data, err := unix.Seek(h.fd, off, unix.SEEK_DATA)
	switch {
	case err == syscall.ENXIO:
		// No data after off: a hole to the end, if the file still ends
		// where it did. If it has shrunk, off may be past its new end.
		var st unix.Stat_t
		if err := unix.Fstat(h.fd, &st); err != nil {
			return all, fmt.Errorf("%s: %w", h.name, err)
		}
		if st.Size != h.size {
			return all, fmt.Errorf("%s: size %d %w (was %d when opened)", h.name, st.Size, errChanged, h.size)
		}
		return hostRun{off, h.size, false}, nil
	case err != nil || data < off:
		return all, nil // the filesystem cannot tell: all data
	case data > off:
		return hostRun{off, min(data, h.size), false}, nil
	}
	hole, err := unix.Seek(h.fd, off, unix.SEEK_HOLE)
	if err != nil || hole <= off {
		return all, nil
	}
	return hostRun{off, min(hole, h.size), true}, nil
}

// fileStamp is what a local file looked like when it was opened.
type fileStamp struct {
	f     File
	size  int64
	mtime time.Time
	fi    os.FileInfo
}

// statter is a File that can stat its descriptor (an *os.File).
type statter interface {
	Stat() (os.FileInfo, error)
}

// holesImage splits an image's Data extents by its host files' holes and
// remembers its files' stamps. Backing images are wrapped by their own
// opener, so only the image's own layer (depth 0) is split here.
type holesImage struct {
	Image
	files map[File]*hostRuns
	// raw images are their host file: a hole is plain zeros, as qemu's
	// raw driver reports it ("data": false), not a hole under a block.
	raw    bool
	stamps []fileStamp

	mu   sync.Mutex
	last Extent // the driver's last extent, reused for the runs within it
	// memo holds the extents that tile [0, memoEnd), up to maxMemo.
	memo    []Extent
	memoEnd int64
}

// holesChecker is a holesImage over an image that has a checker.
type holesChecker struct{ *holesImage }

func (h holesChecker) Check(ctx context.Context) (*CheckResult, error) {
	return h.Image.(Checker).Check(ctx)
}

// withHoles wraps img, whose host files are files (its own first).
func withHoles(img Image, files []File, raw bool) Image {
	h := &holesImage{Image: img, files: map[File]*hostRuns{}, raw: raw}
	for _, f := range files {
		if s, ok := f.(statter); ok {
			if fi, err := s.Stat(); err == nil {
				h.stamps = append(h.stamps, fileStamp{f: f, size: fi.Size(), mtime: fi.ModTime(), fi: fi})
			}
		}
		fd, ok := f.(FileDescriptor)
		if !ok || h.files[f] != nil {
			continue
		}
		h.files[f] = &hostRuns{name: f.Name(), fd: int(fd.Fd()), size: f.Size()}
	}
	if _, ok := img.(Checker); ok {
		return holesChecker{h}
	}
	return h
}

// holesOf returns img's holesImage, nil when it is not wrapped.
func holesOf(img Image) *holesImage {
	switch h := img.(type) {
	case *holesImage:
		return h
	case holesChecker:
		return h.holesImage
	}
	return nil
}

// forget drops the extents remembered: the driver now maps the disk
// differently (another snapshot).
func (h *holesImage) forget() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.memo, h.memoEnd, h.last = nil, 0, Extent{}
}

// unwrapHoles returns the image a holesImage wraps, or img.
func unwrapHoles(img Image) Image {
	if h := holesOf(img); h != nil {
		return h.Image
	}
	return img
}

// Extent returns the driver's run at off, cut where the host file
// changes between data and hole; hole parts are Zero.
func (h *holesImage) Extent(off int64) (Extent, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if off >= 0 && off < h.memoEnd {
		i := sort.Search(len(h.memo), func(i int) bool { return h.memo[i].End() > off })
		return clipExtent(h.memo[i], off), nil
	}
	e, err := h.split(off)
	if err == nil && off == h.memoEnd && e.Start == off && e.Length > 0 && len(h.memo) < maxMemo {
		h.memo = append(h.memo, e)
		h.memoEnd = e.End()
	}
	return e, err
}

// clipExtent returns the part of e from off on.
func clipExtent(e Extent, off int64) Extent {
	d := off - e.Start
	e.Start, e.Length = off, e.Length-d
	if e.Offset >= 0 {
		e.Offset += d
	}
	return e
}

// split is Extent without the memo; h.mu is held.
func (h *holesImage) split(off int64) (Extent, error) {
	e, err := h.driverExtent(off)
	if err != nil || e.Status != Data || e.Offset < 0 || e.Depth != 0 || e.Compressed {
		return e, err
	}
	runs := h.files[e.File]
	if runs == nil {
		return e, nil
	}
	r, err := runs.runAt(e.Offset)
	if err != nil {
		return Extent{}, fmt.Errorf("%s: %w", h.Info().Format, err)
	}
	if n := r.end - e.Offset; n < e.Length {
		e.Length = n
	}
	if !r.data {
		e.Status = Zero
		e.HostHole = !h.raw
	}
	return e, nil
}

// driverExtent is the driver's Extent at off, from the last one when off
// lies inside it: a long extent split into many host runs is looked up
// in the driver's tables once. h.mu is held.
func (h *holesImage) driverExtent(off int64) (Extent, error) {
	if e := h.last; e.Length > 0 && off > e.Start && off < e.End() {
		return clipExtent(e, off), nil
	}
	e, err := h.Image.Extent(off)
	if err == nil && e.Start == off && e.Length > 0 {
		h.last = e
	}
	return e, err
}

// Unchanged returns an error when a local file img reads (its own, its
// extent and data files, its backing chain's) has changed since it was
// opened: its size or modification time, or its name now names another
// file. A conversion and its verification call it at their end, so a
// source written to during the run fails it instead of giving a mix of
// two versions. Files without a descriptor (remote objects, which check
// their own version) are not checked.
func Unchanged(img Image) error {
	for depth := 0; img != nil && depth <= MaxChainDepth; depth++ {
		if h := holesOf(img); h != nil {
			for _, s := range h.stamps {
				if err := s.check(); err != nil {
					return err
				}
			}
		}
		img = img.Info().Backing
	}
	return nil
}

func (s *fileStamp) check() error {
	name := s.f.Name()
	if name == "" {
		name = "the source"
	}
	fi, err := s.f.(statter).Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	switch {
	case fi.Size() != s.size:
		return fmt.Errorf("%s %w: its size is %d bytes, %d when it was opened", name, errChanged, fi.Size(), s.size)
	case !fi.ModTime().Equal(s.mtime):
		return fmt.Errorf("%s %w: it was modified at %s", name, errChanged, fi.ModTime().Format(time.RFC3339Nano))
	}
	if s.f.Name() != "" {
		if now, err := os.Stat(s.f.Name()); err == nil && !os.SameFile(now, s.fi) {
			return fmt.Errorf("%s %w: another file was put in its place", name, errChanged)
		}
	}
	return nil
}
