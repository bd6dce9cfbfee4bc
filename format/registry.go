package format

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// File is an image file opened for reading.
type File interface {
	io.ReaderAt
	// Size returns the file's length in bytes.
	Size() int64
	// Name returns the path the file was opened by; other files the image
	// refers to are resolved against its directory. "" when unnamed.
	Name() string
}

// RelativeFile is a File that opens the files its image names itself: an
// object in a bucket or behind a URL resolves a backing file or extent
// against its own location, never as a local path. The opener applies the
// policy's other rules (Untrusted, NoBacking, no protocol names) first.
type RelativeFile interface {
	File
	// OpenRelative opens ref, a name the image stores. Without
	// allowOutside it stays in the file's own directory (bucket prefix).
	OpenRelative(ref string, allowOutside bool) (ReadCloserFile, error)
}

// ReadCloserFile is a File its opener closes.
type ReadCloserFile interface {
	File
	io.Closer
}

// Format describes one image format to the registry.
type Format struct {
	// Name is qemu's name for the format (raw, qcow2, vmdk, vpc, vhdx).
	Name string
	// Aliases are other accepted names ("vhd" for vpc).
	Aliases []string
	// Priority orders probing: lower first. Raw probes last.
	Priority int
	// Probe reports whether f carries this format's signature. It reads
	// only a few fixed bytes.
	Probe func(f File) bool
	// Open opens f as this format. It returns an error wrapping
	// ErrWrongType when f has no such signature. On success the image owns
	// f: if f is an io.Closer, the image's Close closes it.
	Open func(f File, o *Opener) (Image, error)
	// CheckFile, when set, checks a file whose structure Open refuses
	// (a BAT pointing past the end of the file), so `check` can report
	// the corruption as qemu-img does instead of failing to open.
	CheckFile func(ctx context.Context, f File) (*CheckResult, error)
	// Unread marks a format diskimg recognises but does not read: its
	// Open refuses every file with an *UnsupportedError, so a file in
	// it is never taken for a raw disk. Formats leaves it out.
	Unread bool
}

// UnsupportedError refuses a file in a format diskimg does not read.
type UnsupportedError struct {
	Format string // qemu's name for the format
	Detail string // why, or what would read it; may be ""
}

func (e *UnsupportedError) Error() string {
	s := e.Format + " images are not supported"
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

var formats = registry[*Format]{order: func(a, b *Format) int { return cmp.Compare(a.Priority, b.Priority) }}

// registry is a list kept in an order, safe for concurrent use.
type registry[T any] struct {
	mu    sync.RWMutex
	list  []T
	order func(a, b T) int
}

func (r *registry[T]) add(v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, v)
	slices.SortStableFunc(r.list, r.order)
}

// all returns a copy of the list.
func (r *registry[T]) all() []T {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Clone(r.list)
}

// named reports whether name is a name or one of aliases.
func named(name, n string, aliases []string) bool {
	return n == name || slices.Contains(aliases, name)
}

// Register adds a format to the registry; each format package calls it
// from init.
func Register(f *Format) { formats.add(f) }

// Opens adapts a driver's Open to Format.Open.
func Opens[I Image](open func(File, *Opener) (I, error)) func(File, *Opener) (Image, error) {
	return func(f File, o *Opener) (Image, error) {
		img, err := open(f, o)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return img, nil
	}
}

// OpensFile adapts the Open of a driver that needs no Opener.
func OpensFile[I Image](open func(File) (I, error)) func(File, *Opener) (Image, error) {
	return Opens(func(f File, _ *Opener) (I, error) { return open(f) })
}

// Formats returns the formats diskimg reads, in probe order.
func Formats() []*Format {
	var out []*Format
	for _, f := range Recognised() {
		if !f.Unread {
			out = append(out, f)
		}
	}
	return out
}

// Recognised returns every registered format in probe order, those
// diskimg does not read (Unread) included.
func Recognised() []*Format {
	return formats.all()
}

// Lookup finds a format by name or alias; a format that is not read is
// found too, and refuses what it opens by name.
func Lookup(name string) (*Format, error) {
	for _, f := range Recognised() {
		if named(name, f.Name, f.Aliases) {
			return f, nil
		}
	}
	var names []string
	for _, f := range Formats() {
		names = append(names, f.Name)
	}
	return nil, fmt.Errorf("unknown format %q (known: %s)", name, strings.Join(names, ", "))
}

// Probe returns the first registered format whose signature f carries,
// one that is not read included: such a file is refused by name rather
// than read as raw.
func Probe(f File) (*Format, error) {
	for _, ft := range Recognised() {
		if ft.Probe(f) {
			return ft, nil
		}
	}
	return nil, fmt.Errorf("no format matches and none is registered as fallback")
}

// HasMagic reports whether f holds the bytes of magic at off: the
// signature test of most formats' Probe.
func HasMagic(f File, off int64, magic string) bool {
	b := make([]byte, len(magic))
	n, _ := f.ReadAt(b, off)
	return n == len(b) && string(b) == magic
}

// Opener opens the images and files an image refers to, under a Policy, and
// keeps track of the backing chain to refuse loops and overlong chains.
type Opener struct {
	Policy
	depth int
	chain []string     // real paths of the images opened so far in this chain
	self  RelativeFile // the file being opened, when it resolves names itself
	// related are the files OpenRelated opened for the image being
	// opened: its host files besides its own (see withHoles).
	related []File
}

// NewOpener returns an opener applying policy p.
func NewOpener(p Policy) *Opener { return &Opener{Policy: p} }

// Open opens the image at path. formatName forces a format; "" probes.
func Open(path string, formatName string, p Policy) (Image, error) {
	return NewOpener(p).open(path, formatName)
}

func (o *Opener) open(path, formatName string) (Image, error) {
	real, err := filepath.Abs(path)
	if err == nil {
		if r, err := filepath.EvalSymlinks(real); err == nil {
			real = r
		}
	}
	if err := o.checkChain(path, real); err != nil {
		return nil, err
	}
	f, err := OpenFile(path)
	if err != nil {
		return nil, err
	}
	return o.openChild(f, path, real, formatName)
}

// checkChain refuses a file (real after resolving links) already in the
// chain, and a chain too deep.
func (o *Opener) checkChain(path, real string) error {
	for _, p := range o.chain {
		if p == real {
			return fmt.Errorf("%s: backing chain loops back to this file", path)
		}
	}
	if o.depth > MaxChainDepth {
		return fmt.Errorf("%s: backing chain deeper than %d images", path, MaxChainDepth)
	}
	return nil
}

// openChild opens f, found as path (real after resolving links), as the
// next image of the chain; it closes f on error.
func (o *Opener) openChild(f ReadCloserFile, path, real, formatName string) (Image, error) {
	child := &Opener{Policy: o.Policy, depth: o.depth + 1, chain: append(append([]string(nil), o.chain...), real)}
	img, err := child.OpenImage(f, formatName)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return img, nil
}

// OpenImage opens an already open file as an image; formatName forces a
// format, "" probes. The image owns f on success. An image that names a
// backing file comes with it (see Layer), opened under the policy.
func (o *Opener) OpenImage(f File, formatName string) (Image, error) {
	if err := readable(f); err != nil {
		return nil, err
	}
	var ft *Format
	var err error
	if formatName != "" {
		ft, err = Lookup(formatName)
	} else {
		ft, err = Probe(f)
	}
	if err != nil {
		return nil, err
	}
	if rf, ok := f.(RelativeFile); ok {
		o.self = rf
	}
	o.related = nil
	img, err := ft.Open(f, o)
	if errors.Is(err, ErrWrongType) {
		return nil, fmt.Errorf("not a %s image: %w", ft.Name, err)
	}
	if err != nil {
		return nil, err
	}
	files := append([]File{f}, o.related...)
	l, ok := img.(Layer)
	if !ok || l.Backing() == nil {
		return withHoles(img, files, ft.Name == "raw"), nil
	}
	c, err := o.withBacking(l, l.Backing(), f)
	if err != nil {
		// This closes f too, which the caller then closes again: an
		// *os.File refuses a second close without touching the descriptor.
		l.Close()
		return nil, err
	}
	return withHoles(c, files, false), nil
}

// openBacking opens the image that the image at imagePath names as ref
// (a backing file or differencing parent); formatName is the stored
// backing format, "" to probe. A file that resolves names itself (a
// remote image) opens ref beside it.
func (o *Opener) openBacking(imagePath, ref, formatName string) (Image, error) {
	img, err := o.openRef(imagePath, ref, formatName)
	if err != nil {
		return nil, fmt.Errorf("backing file: %w", err)
	}
	return img, nil
}

func (o *Opener) openRef(imagePath, ref, formatName string) (Image, error) {
	if o.self != nil {
		f, err := o.openRelative(ref)
		if err != nil {
			return nil, err
		}
		if err := o.checkChain(f.Name(), f.Name()); err != nil {
			f.Close()
			return nil, err
		}
		return o.openChild(f, f.Name(), f.Name(), formatName)
	}
	path, err := o.Resolve(imagePath, ref)
	if err != nil {
		return nil, err
	}
	return o.open(path, formatName)
}

// openGiven opens path, a parent the user named (Policy.Parents), as
// given; formatName is the stored format, "" to probe.
func (o *Opener) openGiven(path, formatName string) (Image, error) {
	if err := o.checkRef(path); err != nil {
		return nil, fmt.Errorf("parent: %w", err)
	}
	img, err := o.open(path, formatName)
	if err != nil {
		return nil, fmt.Errorf("parent: %w", err)
	}
	return img, nil
}

// OpenRelated opens a plain file (a VMDK extent) that the image at
// imagePath names as ref.
func (o *Opener) OpenRelated(imagePath, ref string) (ReadCloserFile, error) {
	var f ReadCloserFile
	var err error
	if o.self != nil {
		f, err = o.openRelative(ref)
	} else if path, rerr := o.Resolve(imagePath, ref); rerr != nil {
		return nil, rerr
	} else {
		f, err = OpenFile(path)
	}
	if err == nil {
		o.related = append(o.related, f)
	}
	return f, err
}

// openRelative opens ref through the file being opened, which resolves it
// against its own location.
func (o *Opener) openRelative(ref string) (ReadCloserFile, error) {
	if err := o.checkRef(ref); err != nil {
		return nil, err
	}
	return o.self.OpenRelative(ref, o.AllowOutside)
}

// OSFile is a File backed by an *os.File.
type OSFile struct {
	*os.File
	size int64
}

// OpenFile opens path read-only. Directories and devices other than block
// devices are refused.
func OpenFile(path string) (*OSFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	size := fi.Size()
	switch {
	case fi.Mode().IsRegular():
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		// A block device reports size 0 from Stat; ask it by seeking.
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
			return nil, err
		}
	default:
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	return &OSFile{File: f, size: size}, nil
}

// Size returns the file's size when it was opened.
func (f *OSFile) Size() int64 { return f.size }

// CloseFile closes f when it is an io.Closer; readers call it from Close.
func CloseFile(f File) error {
	if c, ok := f.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
