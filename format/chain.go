package format

// Backing chains in one place. A driver answers for its own file only:
// ranges it does not store are Unallocated and read as zeros, and it says
// how it names the image under it (Backing). The chain below resolves that
// name under the path policy, opens the image and forwards extent queries
// and reads of Unallocated ranges to it, one layer deeper each time, as
// qemu's generic block layer does for its drivers.

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Backing is how a layer names the image under it: a backing file or a
// differencing parent.
type Backing struct {
	// Names are the stored names to try, in order (a differencing VHD
	// has several parent locators); the first that opens is the parent.
	// Info shows Names[0] until one has opened.
	Names []string
	// Format is the backing image's format as stored; "" probes it.
	Format string
	// ID is the identity the parent must have, for messages ("UUID {…}"
	// for a differencing VDI, "DataWriteGuid {…}" for a VHDX, "CID …"
	// for a VMDK). A layer that sets it checks it in Verify, so the
	// chain also tries the parents the user gave (Policy.Parents); a
	// layer without Names names its parent by ID alone.
	ID string
	// Verify, when set, checks that the opened parent is the image this
	// layer was made against (a VHD's parent unique id, a VMDK's parent
	// CID). It gets the name that opened and the parent's top layer
	// (TopLayer), so it can look at the parent's own driver.
	Verify func(name string, parent Image) error
	// VerifyOnRead keeps a failed Verify from failing the open: the chain
	// opens and maps, and only reads the parent would serve fail (qemu's
	// VMDK parent CID check).
	VerifyOnRead bool
}

// Layer is a driver's image of one file of a backing chain. Ranges the
// file does not store are Unallocated, at depth 0, and its ReadAt reads
// them as zeros; Opener wraps it so that they come from the image its
// Backing names.
type Layer interface {
	Image
	// Backing names the image under this one; nil when there is none.
	Backing() *Backing
	// ExtentTo is Extent with the run cut at limit (off < limit <=
	// Size()): the chain never needs more, so a layer never scans its
	// tables past what is asked.
	ExtentTo(off, limit int64) (Extent, error)
}

// TopLayer returns the driver's own image of img's file: img itself, or
// the top of a backing chain.
func TopLayer(img Image) Image {
	img = unwrapHoles(img)
	if c, ok := img.(*chain); ok {
		return c.top
	}
	return img
}

// BackingError reports why a backing image of img's chain did not open
// when the policy deferred the error (Policy.DeferBackingErrors); nil
// when every image of the chain opened or none was asked for.
func BackingError(img Image) error {
	for {
		c, ok := unwrapHoles(img).(*chain)
		if !ok {
			return nil
		}
		if c.unavailable != nil {
			return c.unavailable
		}
		if c.backing == nil {
			return nil
		}
		img = c.backing
	}
}

// chain is a Layer with the image under it.
type chain struct {
	top     Layer
	ref     *Backing
	info    Info  // the top's Info with the backing file's names
	backing Image // nil when the policy opens no backing file
	// mismatch is a failed Verify the ref defers to reads (VerifyOnRead).
	mismatch error
	// unavailable is why the backing image did not open, under
	// Policy.DeferBackingErrors: extent queries and reads that need it
	// fail with it.
	unavailable error
}

// withBacking wraps top, which names a backing image, in a chain and opens
// that image under o's policy. f is top's file, whose directory relative
// names are resolved against.
func (o *Opener) withBacking(top Layer, ref *Backing, f File) (Image, error) {
	c := &chain{top: top, ref: ref, info: *top.Info()}
	format := c.info.Format
	if len(ref.Names) == 0 && ref.ID == "" {
		return nil, fmt.Errorf("%s: the image names no backing file", format)
	}
	if len(ref.Names) > 0 {
		// Shown whether or not the file opens; a parent named by ID
		// alone is shown once it has.
		c.name(ref.Names[0], f)
		c.info.BackingFormat = ref.Format
	}
	if o.NoBacking {
		return c, nil
	}
	if err := o.openParent(c, f); err != nil {
		if !o.DeferBackingErrors {
			return nil, err
		}
		c.unavailable = err
	}
	return c, nil
}

// openParent opens the image c.ref names: the first of its stored names
// that opens and passes Verify, then, for a ref with an ID, the first of
// the parents the user gave that does. Of the failures it reports a
// parent that opened but is not the right one first.
func (o *Opener) openParent(c *chain, f File) error {
	ref, format := c.ref, c.info.Format
	var openErr, verifyErr error
	try := func(open func(*Opener) (Image, error), name string, given bool) bool {
		strict := ref.Verify != nil && (!ref.VerifyOnRead || given)
		if strict {
			// Check the identity of the image alone first, so that of
			// several candidates only the right one's chain is opened:
			// the work stays linear in the candidates at every level.
			alone := *o
			alone.NoBacking = true
			b, err := open(&alone)
			if err != nil {
				openErr = cmpOr(openErr, fmt.Errorf("%s: %w", format, err))
				return false
			}
			err = ref.Verify(name, TopLayer(b))
			b.Close()
			if err != nil {
				verifyErr = cmpOr(verifyErr, err)
				return false
			}
		}
		b, err := open(o)
		if err != nil {
			openErr = cmpOr(openErr, fmt.Errorf("%s: %w", format, err))
			return false
		}
		if ref.Verify != nil {
			if err := ref.Verify(name, TopLayer(b)); err != nil {
				// A parent the user gave must be the right one.
				if strict {
					b.Close()
					verifyErr = cmpOr(verifyErr, err)
					return false
				}
				c.mismatch = err
			}
		}
		c.backing = b
		c.info.Backing, c.info.BackingFormat = b, ref.Format
		if given {
			// A path the user gave is shown as given.
			c.info.BackingFile, c.info.FullBackingFile = name, name
		} else {
			c.name(name, f)
		}
		return true
	}
	if len(ref.Names) > 0 && f.Name() == "" {
		// Relative names need the image's directory.
		openErr = fmt.Errorf("%s: backing file %q named by an image opened without a file name", format, ref.Names[0])
	} else {
		for _, name := range ref.Names {
			open := func(op *Opener) (Image, error) { return op.openBacking(f.Name(), name, ref.Format) }
			if try(open, name, false) {
				return nil
			}
		}
	}
	if ref.ID != "" {
		for _, path := range o.Parents {
			open := func(op *Opener) (Image, error) { return op.openGiven(path, ref.Format) }
			if try(open, path, true) {
				return nil
			}
		}
	}
	err := cmpOr(verifyErr, openErr)
	switch {
	case ref.ID == "":
	case err == nil:
		return fmt.Errorf("%s: the image names its parent only by %s: give the parent image with --parent FILE", format, ref.ID)
	case len(o.Parents) > 0:
		return fmt.Errorf("%w (and no image given with --parent is %s)", err, ref.ID)
	case len(ref.Names) > 0:
		return fmt.Errorf("%w (the parent, %s, may also be given with --parent FILE)", err, ref.ID)
	}
	return err
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// name records the backing file name shown by Info: as stored, and joined
// to the image's directory as qemu shows it (only a string: whether the
// file may be opened is the policy's decision).
func (c *chain) name(name string, f File) {
	c.info.BackingFile = name
	c.info.FullBackingFile = ""
	if f.Name() != "" {
		c.info.FullBackingFile = FullName(f.Name(), name)
	}
}

func (c *chain) Size() int64 { return c.top.Size() }

func (c *chain) Info() *Info {
	info := c.info
	return &info
}

// Close closes the backing chain and then the top layer.
func (c *chain) Close() error {
	var err error
	if c.backing != nil {
		err = c.backing.Close()
	}
	return errors.Join(err, c.top.Close())
}

// Check checks the top layer's structure; a check never looks down the
// chain.
func (c *chain) Check(ctx context.Context) (*CheckResult, error) {
	ch, ok := c.top.(Checker)
	if !ok {
		return nil, fmt.Errorf("%s: %w", c.info.Format, errors.ErrUnsupported)
	}
	return ch.Check(ctx)
}

// Extent returns the top layer's run at off, or where the top stores
// nothing, the backing image's run one layer down. Past the end of a
// shorter backing image the range stays Unallocated at depth 0: zeros, as
// qemu maps it.
func (c *chain) Extent(off int64) (Extent, error) {
	size := c.Size()
	if off < 0 || off >= size {
		return Extent{}, fmt.Errorf("%s: extent offset %d out of range [0,%d)", c.info.Format, off, size)
	}
	if c.backing == nil {
		e, err := c.layerExtent(off, size)
		if err == nil && e.Status == Unallocated && c.unavailable != nil {
			return Extent{}, c.unavailable
		}
		return e, err
	}
	if off >= c.backing.Size() {
		return c.layerExtent(off, size)
	}
	// Ask the top about off alone first: where it stores nothing, its
	// run is cut at the end of the backing image's run.
	first, err := c.layerExtent(off, off+1)
	if err != nil || first.Status != Unallocated {
		if err == nil {
			first, err = c.layerExtent(off, size)
		}
		return first, err
	}
	be, err := c.backing.Extent(off)
	if err != nil {
		return Extent{}, err
	}
	if be.Start != off || be.Length <= 0 || be.End() > c.backing.Size() {
		return Extent{}, fmt.Errorf("%s: backing image returned extent [%d,+%d) at %d", c.info.Format, be.Start, be.Length, off)
	}
	e, err := c.layerExtent(off, be.End())
	if err != nil {
		return Extent{}, err
	}
	be.Length = e.Length
	be.Depth++
	return be, nil
}

// layerExtent is the top layer's ExtentTo, checked: a run that does not
// start at off or ends past limit would make the walk loop or overrun.
func (c *chain) layerExtent(off, limit int64) (Extent, error) {
	e, err := c.top.ExtentTo(off, limit)
	if err == nil && (e.Start != off || e.Length <= 0 || e.End() > limit) {
		err = fmt.Errorf("%s: extent map returned [%d,+%d) at offset %d, limit %d", c.info.Format, e.Start, e.Length, off, limit)
	}
	return e, err
}

// ReadAt reads the top layer's runs from the top layer and its
// Unallocated runs from the backing image, zeros past its end.
func (c *chain) ReadAt(p []byte, off int64) (int, error) {
	if c.backing == nil && c.unavailable == nil {
		return c.top.ReadAt(p, off)
	}
	return ReadRuns(p, off, c.Size(), c.layerExtent, func(buf []byte, e Extent) error {
		if e.Status == Unallocated {
			return c.readBacking(buf, e.Start)
		}
		return readLayer(c.top, buf, e.Start)
	})
}

// readBacking reads guest bytes the top does not store: from the backing
// image, and zeros past its end.
func (c *chain) readBacking(p []byte, off int64) error {
	if c.unavailable != nil {
		return c.unavailable
	}
	if c.mismatch != nil {
		return c.mismatch
	}
	var m int64
	if bs := c.backing.Size(); off < bs {
		m = min(int64(len(p)), bs-off)
		if err := readFull(c.backing, p[:m], off, c.info.Format+": backing file"); err != nil {
			return err
		}
	}
	clear(p[m:])
	return nil
}

// readLayer reads all of p at off from the top layer; its own errors
// already name the format and field.
func readLayer(l Layer, p []byte, off int64) error {
	k, err := l.ReadAt(p, off)
	if k == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = fmt.Errorf("%s: short read of %d bytes at guest offset %d: %w", l.Info().Format, len(p), off, io.ErrUnexpectedEOF)
	}
	return err
}

// readFull reads all of p at off from img, which holds it: a short read is
// an error even at the end of the disk.
func readFull(img Image, p []byte, off int64, what string) error {
	k, err := img.ReadAt(p, off)
	if k == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%s: reading %d bytes at guest offset %d: %w", what, len(p), off, err)
}
