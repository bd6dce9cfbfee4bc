// Package vmdk reads VMware virtual disks (VMDK): hosted sparse extents
// ("KDMV"), stream-optimized compressed extents, ESX sparse extents
// ("COWD"), flat extents, and descriptor files tying several extents
// together, with differencing parents. It follows VMware's "Virtual Disk
// Format 1.1" and reports what qemu-img's vmdk driver reports.
package vmdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/diskimg/diskimg/format"
)

// Name is qemu's name for the format.
const Name = "vmdk"

// Priority orders probing among the formats; VMDK has a 4-byte magic or a
// recognisable descriptor text.
const Priority = 20

const (
	sectorSize = 512

	// magicKDMV starts a hosted sparse extent ("KDMV" on disk).
	magicKDMV = "KDMV"
	// magicCOWD starts an ESX (VMFS) sparse extent, version 3 of the format.
	magicCOWD = "COWD"

	// descriptorSignature starts a descriptor file written by VMware.
	descriptorSignature = "# Disk DescriptorFile"
	// probeBytes is how much of a file the probe looks at, as qemu does.
	probeBytes = 2048
	// maxDescriptor bounds a descriptor's text; real ones are a few KiB,
	// qemu reads at most 1 MiB.
	maxDescriptor = 1<<20 - 1
	// maxEmbeddedDescriptor bounds the descriptor inside a sparse extent.
	maxEmbeddedDescriptor = 64 << 10
	// maxExtents bounds the extent lines of a descriptor: 62 TiB, the
	// largest VMware disk, in 2 GiB extents needs 31744.
	maxExtents = 32768

	// noParentCID is the parentCID of a disk without a parent.
	noParentCID = 0xffffffff
)

func init() {
	format.Register(&format.Format{Name: Name, Priority: Priority, Probe: Probe, Open: format.Opens(Open)})
}

// Probe reports a sparse extent magic or a descriptor file: comment and
// blank lines followed by a "version=N" line, as qemu's probe accepts.
func Probe(f format.File) bool {
	buf := make([]byte, probeBytes)
	n, _ := f.ReadAt(buf, 0)
	buf = buf[:n]
	if n >= 4 && (string(buf[:4]) == magicKDMV || string(buf[:4]) == magicCOWD) {
		return true
	}
	return probeDescriptor(buf)
}

func probeDescriptor(buf []byte) bool {
	for len(buf) > 0 {
		line, rest, found := bytes.Cut(buf, []byte("\n"))
		switch {
		case len(line) == 0:
			return false // qemu takes no empty line before the version
		case line[0] == '#':
		case line[0] == ' ':
			// Only lines of spaces (with an optional CR) may come first.
			if !found || len(bytes.TrimRight(bytes.TrimLeft(line, " "), "\r")) != 0 ||
				bytes.Count(line, []byte("\r")) > 1 {
				return false
			}
		default:
			v := string(bytes.TrimSuffix(line, []byte("\r")))
			return found && (v == "version=1" || v == "version=2" || v == "version=3")
		}
		buf = rest
	}
	return false
}

// Image is an open VMDK disk: of a differencing disk, this file's layer of
// the chain.
type Image struct {
	format.Base // Meta holds the virtual size; Info is built on demand
	extents     []*extent

	cid, parentCID uint32
	createType     string
	parentHint     string

	files []string // extent files other than f, for actual-size
}

// Open opens f as a VMDK disk. Extent files are opened through o, which
// applies the path policy; the parent of a differencing disk is the
// chain's (format.Layer).
func Open(f format.File, o *format.Opener) (_ *Image, err error) {
	if o == nil {
		o = format.NewOpener(format.Policy{Untrusted: true})
	}
	var magic [4]byte
	if err := format.ReadFull(f, magic[:], 0, Name, "magic"); err != nil {
		if !Probe(f) {
			return nil, fmt.Errorf("vmdk: %w", format.ErrWrongType)
		}
		return nil, err
	}
	img := &Image{Base: format.Base{File: f}}
	defer func() {
		if err != nil {
			img.closeExtents()
		}
	}()
	var desc []byte
	switch string(magic[:]) {
	case magicKDMV, magicCOWD:
		x, d, err := openSparse(f, f.Size(), true)
		if err != nil {
			return nil, err
		}
		if x == nil {
			// A header with no capacity whose descriptor lists the extents.
			if err := img.openDescriptor(d, o); err != nil {
				return nil, err
			}
			desc = d
			break
		}
		x.name = f.Name()
		img.extents = []*extent{x}
		img.createType = "monolithicSparse"
		if x.cowd {
			img.createType = "vmfsSparse"
		}
		if x.compressed {
			img.createType = "streamOptimized"
		}
		desc = d
	default:
		if !Probe(f) {
			return nil, fmt.Errorf("vmdk: %w", format.ErrWrongType)
		}
		size := f.Size()
		if size > maxDescriptor {
			return nil, format.Errorf(Name, "descriptor file", 0, "%d bytes is larger than the %d-byte limit for a descriptor", size, maxDescriptor)
		}
		desc = make([]byte, size)
		if err := format.ReadFull(f, desc, 0, Name, "descriptor file"); err != nil {
			return nil, err
		}
		if err := img.openDescriptor(desc, o); err != nil {
			return nil, err
		}
	}
	if err := img.parseIDs(desc); err != nil {
		return nil, err
	}
	size := int64(0)
	for _, x := range img.extents {
		x.start = size
		size += x.size // each is at most MaxVirtualSize: no overflow
		if size > format.MaxVirtualSize {
			return nil, format.Errorf(Name, "extent description", -1, "the extents add up to more than the %d-byte limit", int64(format.MaxVirtualSize))
		}
	}
	img.Meta.VirtualSize = size
	return img, nil
}

// openDescriptor opens the extents a descriptor lists.
func (img *Image) openDescriptor(desc []byte, o *format.Opener) error {
	d, err := parseDescriptor(desc)
	if err != nil {
		return err
	}
	switch d.createType {
	case "monolithicFlat", "vmfs", "vmfsSparse", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat":
	case "":
		return format.Errorf(Name, "createType", -1, "the descriptor has no createType")
	default:
		// qemu opens descriptors of these types only; monolithicSparse and
		// streamOptimized live inside a sparse extent.
		return format.Errorf(Name, "createType", -1, "unsupported create type %q", d.createType)
	}
	img.createType = d.createType
	if len(d.extents) == 0 {
		return format.Errorf(Name, "extent description", -1, "the descriptor lists no extents")
	}
	self := img.File.Name()
	dirPrefix := ""
	if i := strings.LastIndexByte(self, '/'); i >= 0 {
		dirPrefix = self[:i+1]
	}
	// Extents naming one file share its descriptor, so a descriptor that
	// lists the same file thousands of times holds one open file.
	opened := map[string]format.File{}
	for _, l := range d.extents {
		x, err := img.openExtent(l, o, self, opened)
		if err != nil {
			return err
		}
		// qemu shows the name as it joined it to the descriptor's directory.
		x.name = l.file
		if !filepath.IsAbs(l.file) {
			x.name = dirPrefix + l.file
		}
		x.typ = l.typ
		img.extents = append(img.extents, x)
		if x.compressed {
			img.createType = "streamOptimized"
		}
	}
	return nil
}

func (img *Image) openExtent(l extentLine, o *format.Opener, self string, opened map[string]format.File) (_ *extent, err error) {
	key := filepath.Clean(l.file)
	ef, shared := opened[key]
	if !shared {
		f, err := o.OpenRelated(self, l.file)
		if err != nil {
			return nil, fmt.Errorf("vmdk: extent %q: %w", l.file, err)
		}
		ef, opened[key] = f, f
		defer func() {
			if err != nil {
				f.Close()
				delete(opened, key)
			}
		}()
	}
	img.files = append(img.files, l.file)
	var x *extent
	switch l.typ {
	case "FLAT", "VMFS":
		end := l.offset*sectorSize + l.sectors*sectorSize
		if end > ef.Size() {
			return nil, format.Errorf(Name, "extent "+l.file, l.offset*sectorSize, "flat extent of %d sectors at sector %d extends past the end of the file (%d bytes)", l.sectors, l.offset, ef.Size())
		}
		x = &extent{flat: true, f: ef, size: l.sectors * sectorSize, flatOffset: l.offset * sectorSize}
	case "SPARSE", "VMFSSPARSE":
		var magic [4]byte
		if err := format.ReadFull(ef, magic[:], 0, Name, "extent "+l.file+" magic"); err != nil {
			return nil, err
		}
		if m := string(magic[:]); m != magicKDMV && m != magicCOWD {
			return nil, format.Errorf(Name, "extent "+l.file+" magic", 0, "%q is not a sparse extent", m)
		}
		x, _, err = openSparse(ef, ef.Size(), false)
		if err != nil {
			return nil, fmt.Errorf("extent %q: %w", l.file, err)
		}
	default:
		return nil, format.Errorf(Name, "extent type", -1, "unsupported extent type %q", l.typ)
	}
	x.owned = !shared // closed once, by the extent that opened it
	return x, nil
}

// parseIDs reads CID, parentCID and parentFileNameHint from the descriptor.
func (img *Image) parseIDs(desc []byte) error {
	d, err := parseDescriptor(desc)
	if err != nil {
		return err
	}
	var ok bool
	if img.cid, ok = d.hexField("CID"); !ok {
		return format.Errorf(Name, "CID", -1, "missing or not hexadecimal in the descriptor")
	}
	if img.parentCID, ok = d.hexField("parentCID"); !ok {
		return format.Errorf(Name, "parentCID", -1, "missing or not hexadecimal in the descriptor")
	}
	img.parentHint = d.fields["parentFileNameHint"]
	return nil
}

// ReadAt reads guest bytes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, img.Size())
	if n == 0 {
		return 0, clipErr
	}
	end := off + int64(n)
	for pos := off; pos < end; {
		e, x, err := img.local(pos, end)
		if err != nil {
			return int(pos - off), err
		}
		buf := p[pos-off : e.End()-off]
		switch {
		case e.Status != format.Data:
			clear(buf)
		case e.Compressed:
			if err := x.readCompressed(buf, pos-x.start); err != nil {
				return int(pos - off), err
			}
		default:
			if err := format.ReadFull(x.f, buf, e.Offset, Name, "grain data"); err != nil {
				return int(pos - off), err
			}
		}
		pos = e.End()
	}
	return n, clipErr
}

// Backing names a differencing disk's parent (parentFileNameHint); nil
// for other disks. qemu opens a parent whose CID is not the disk's
// parentCID, but refuses to read from it; a parent the user gives
// (--parent, for a hint that names a file elsewhere, such as VMware's
// absolute Windows paths) must have the CID.
func (img *Image) Backing() *format.Backing {
	if img.parentHint == "" {
		return nil
	}
	return &format.Backing{Names: []string{img.parentHint}, Format: Name, VerifyOnRead: true, ID: fmt.Sprintf("CID %08x", img.parentCID),
		Verify: func(_ string, parent format.Image) error {
			if p, ok := parent.(*Image); ok && p.cid != img.parentCID {
				return format.Errorf(Name, "parentCID", -1, "%08x does not match the parent's CID: the parent changed since this disk was made", img.parentCID)
			}
			return nil
		}}
}

// Close closes the extent files and the image file.
func (img *Image) Close() error {
	return errors.Join(img.closeExtents(), img.Base.Close())
}

func (img *Image) closeExtents() error {
	var err error
	for _, x := range img.extents {
		if x.owned {
			if e := format.CloseFile(x.f); err == nil {
				err = e
			}
		}
	}
	img.extents = nil
	return err
}

// find returns the index of the extent holding guest offset off.
func (img *Image) find(off int64) int {
	return sort.Search(len(img.extents), func(i int) bool {
		x := img.extents[i]
		return x.start+x.size > off
	})
}

// Extent returns the run at off with one status and contiguous host
// offset.
func (img *Image) Extent(off int64) (format.Extent, error) { return img.ExtentTo(off, img.Size()) }

// ExtentTo is Extent with the run cut at limit; grains the disk does not
// store are Unallocated.
func (img *Image) ExtentTo(off, limit int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, fmt.Errorf("vmdk: extent offset %d out of range [0,%d)", off, img.Size())
	}
	e, x, err := img.local(off, min(limit, img.Size()))
	if err == nil && e.Offset >= 0 {
		e.File, e.Preallocated = x.f, x.flat
	}
	return e, err
}

// local returns this disk's own run at off, ending at or before limit, and
// for data the extent holding it. Runs without data continue across extent
// boundaries; data runs stay in one extent file.
func (img *Image) local(off, limit int64) (format.Extent, *extent, error) {
	i := img.find(off)
	if i >= len(img.extents) {
		return format.Extent{}, nil, fmt.Errorf("vmdk: offset %d is in no extent", off)
	}
	x := img.extents[i]
	e, err := x.run(off-x.start, min(limit, x.start+x.size)-x.start)
	if err != nil {
		return e, nil, err
	}
	e.Start = off
	for e.Status != format.Data && e.End() == x.start+x.size && e.End() < limit {
		i++
		x = img.extents[i]
		r, err := x.run(0, min(limit, x.start+x.size)-x.start)
		if err != nil {
			return e, nil, err
		}
		if r.Status != e.Status {
			break
		}
		e.Length += r.Length
	}
	return e, x, nil
}

// Info describes the disk as qemu-img does.
func (img *Image) Info() *format.Info {
	info := &format.Info{
		Format:      Name,
		Subformat:   img.createType,
		VirtualSize: img.Size(),
		ExtentFiles: img.files,
	}
	// qemu reports a cluster size only when every extent is sparse alike.
	if len(img.extents) > 0 && !img.extents[0].flat {
		first := img.extents[0]
		info.ClusterSize = first.grain
		for _, x := range img.extents[1:] {
			if x.flat || x.compressed != first.compressed || x.grain != first.grain {
				info.ClusterSize = 0
			}
		}
	}
	spec := &Specific{CID: img.cid, ParentCID: img.parentCID, CreateType: img.createType, Extents: []ExtentInfo{}}
	for _, x := range img.extents {
		ei := ExtentInfo{Compressed: x.compressed, VirtualSize: x.size, Filename: x.name, Format: x.typ}
		if !x.flat {
			ei.ClusterSize = x.grain
		}
		spec.Extents = append(spec.Extents, ei)
	}
	info.Specific = spec
	return info
}

// Specific is qemu-img's vmdk "format-specific" data, keys in its order.
type Specific struct {
	CID        uint32       `json:"cid"`
	ParentCID  uint32       `json:"parent-cid"`
	CreateType string       `json:"create-type"`
	Extents    []ExtentInfo `json:"extents"`
}

// ExtentInfo describes one extent as qemu-img does.
type ExtentInfo struct {
	Compressed  bool   `json:"compressed,omitempty"`
	VirtualSize int64  `json:"virtual-size"`
	Filename    string `json:"filename"`
	ClusterSize int64  `json:"cluster-size,omitempty"`
	Format      string `json:"format"`
}

var le = binary.LittleEndian
