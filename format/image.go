// Package format defines the Image interface every disk image format
// implements, the errors and safety policy they share, and an ordered
// registry that probes a file and opens it with the right reader.
package format

import (
	"io"
)

// Status says what a guest range holds.
type Status uint8

const (
	// Unallocated ranges are stored nowhere in the chain; they read as zeros.
	Unallocated Status = iota
	// Zero ranges are stored as zeros (a zero cluster, a hole in a raw file).
	Zero
	// Data ranges hold bytes stored in the image or one of its backing files.
	Data
)

func (s Status) String() string {
	switch s {
	case Unallocated:
		return "unallocated"
	case Zero:
		return "zero"
	case Data:
		return "data"
	}
	return "invalid"
}

// Extent is a run of guest bytes with one status.
type Extent struct {
	Start  int64
	Length int64
	Status Status
	// Depth is the layer of the backing chain that provides the run:
	// 0 is the image itself, 1 its backing file, and so on.
	Depth int
	// Offset is the host file offset of Start in the layer's file when the
	// run is stored uncompressed and contiguously there; -1 otherwise.
	Offset int64
	// Compressed is set when the run is stored compressed.
	Compressed bool
	// File is the host file Offset refers to: the layer's own file, a
	// VMDK extent, a qcow2 external data file. Nil when Offset is -1.
	File File
	// HostHole marks a Zero run that the format stores at Offset where
	// the host file has a hole: allocated, but reading as zeros.
	HostHole bool
	// Preallocated marks storage the format allocated ahead of the data
	// (a fixed VHD, a flat VMDK extent, a static VDI, a qcow2 with
	// preallocated metadata): qemu looks for holes in the host file under
	// it, and under other runs does not (see MapFlags). VHDX blocks, for
	// which qemu has no block status, are marked too.
	Preallocated bool
}

// MapFlags returns qemu-img map's "zero" and "data" keys for e. A hole
// under allocated storage is data to qemu, and zero too where it looks
// at the host file (Preallocated).
func (e Extent) MapFlags() (zero, data bool) {
	switch {
	case e.Status == Data:
		return false, true
	case e.HostHole:
		return e.Preallocated, true
	}
	return true, false
}

// End returns the guest offset just past the extent.
func (e Extent) End() int64 { return e.Start + e.Length }

// Image is an open disk image: the guest-visible virtual disk, its extent map
// and its metadata.
//
// ReadAt and Extent are safe to call from several goroutines at once (the
// converter reads with parallel workers while it walks the map); a reader
// locks any table cache it shares.
//
// ReadAt follows io.ReaderAt: reads past Size return io.EOF. A read of data
// the file does not hold (a table or cluster pointing past the end of the
// file) is an error, never zeros.
type Image interface {
	io.ReaderAt
	io.Closer
	// Size returns the virtual disk size in bytes.
	Size() int64
	// Extent returns the longest run starting at off (0 <= off < Size) that
	// has one status, depth and contiguous host offset. Implementations
	// answer from metadata alone and never read guest data.
	Extent(off int64) (Extent, error)
	// Info returns the image's metadata.
	Info() *Info
}

// Info is the metadata `diskimg info` shows, named as qemu-img names it.
type Info struct {
	// Format is qemu's name for the format: raw, qcow2, vmdk, vpc, vhdx.
	Format string
	// Subformat is the variant where the format has several: the VMDK
	// create type, "fixed" or "dynamic" for VHD and VHDX.
	Subformat   string
	VirtualSize int64
	// ClusterSize is the allocation unit; 0 when the format has none.
	ClusterSize int64
	// Dirty reports the format's dirty or in-use flag.
	Dirty bool
	// NoDirtyFlag leaves the dirty flag out of the info report, where
	// qemu-img has no driver info for the format (parallels) and shows
	// neither a dirty flag nor a cluster size.
	NoDirtyFlag bool
	// BackingFile is the backing file name as stored in the image (of
	// several, the one that opened). The chain sets it and the two below
	// from the top layer's Backing, whether or not the file is opened.
	BackingFile string
	// FullBackingFile is BackingFile joined to the image's directory.
	FullBackingFile string
	// BackingFormat is the backing file's format as stored in the image.
	BackingFormat string
	Encrypted     bool
	// Specific is marshalled as qemu's "format-specific" data; nil when
	// qemu-img shows none for the format.
	Specific any
	// Backing is the opened backing image, nil when there is none or it was
	// not opened.
	Backing Image
	// ExtentFiles are the other host files that hold this image's data
	// (VMDK extents); actual-size counts them as qemu-img does.
	ExtentFiles []string
	// Snapshots are the image's internal snapshots, in the order it
	// stores them.
	Snapshots []Snapshot
}

// Base is embedded by drivers for the methods every image has alike.
type Base struct {
	// File is the image's file; Close closes it.
	File File
	// Meta is what Info returns; Meta.VirtualSize is what Size returns.
	Meta Info
}

// Size returns the virtual disk size in bytes.
func (b *Base) Size() int64 { return b.Meta.VirtualSize }

// Info returns a copy of the image's metadata.
func (b *Base) Info() *Info {
	info := b.Meta
	return &info
}

// Close closes the image's file.
func (b *Base) Close() error { return CloseFile(b.File) }

// FileDescriptor is implemented by files and targets that have an
// operating system file descriptor (an *os.File), for the system calls
// that need one: lseek's SEEK_DATA, fallocate, sync_file_range.
type FileDescriptor interface {
	Fd() uintptr
}
