package format

import (
	"os"
	"path/filepath"
	"syscall"
)

// Report is the `info` record for one image, with qemu-img's JSON keys in
// qemu-img's order.
type Report struct {
	Snapshots           []Snapshot `json:"snapshots,omitempty"`
	VirtualSize         int64      `json:"virtual-size"`
	Filename            string     `json:"filename"`
	ClusterSize         int64      `json:"cluster-size,omitempty"`
	Format              string     `json:"format"`
	ActualSize          int64      `json:"actual-size"`
	AllocatedSize       int64      `json:"allocated-size"`
	Encrypted           bool       `json:"encrypted,omitempty"`
	BackingFilename     string     `json:"backing-filename,omitempty"`
	FullBackingFilename string     `json:"full-backing-filename,omitempty"`
	BackingFormat       string     `json:"backing-filename-format,omitempty"`
	FormatSpecific      *Specific  `json:"format-specific,omitempty"`
	DirtyFlag           *bool      `json:"dirty-flag,omitempty"`
}

// Specific is qemu-img's "format-specific" object.
type Specific struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// NewReport builds the info record of img, opened from filename.
func NewReport(filename string, img Image) (*Report, error) {
	info := img.Info()
	alloc, err := AllocatedBytes(img)
	if err != nil && BackingError(img) != nil {
		// The backing file did not open (Policy.DeferBackingErrors):
		// count the data of the image itself.
		alloc, err = AllocatedBytes(TopLayer(img))
	}
	if err != nil {
		return nil, err
	}
	r := &Report{
		VirtualSize:         img.Size(),
		Filename:            filename,
		ClusterSize:         info.ClusterSize,
		Format:              info.Format,
		ActualSize:          HostAllocated(filename),
		AllocatedSize:       alloc,
		Encrypted:           info.Encrypted,
		BackingFilename:     info.BackingFile,
		FullBackingFilename: info.FullBackingFile,
		BackingFormat:       info.BackingFormat,
		Snapshots:           info.Snapshots,
	}
	if !info.NoDirtyFlag {
		r.DirtyFlag = &info.Dirty
	}
	for _, f := range info.ExtentFiles {
		if !filepath.IsAbs(f) {
			f = filepath.Join(filepath.Dir(filename), f)
		}
		if f != filename {
			r.ActualSize += HostAllocated(f)
		}
	}
	if info.Specific != nil {
		r.FormatSpecific = &Specific{Type: info.Format, Data: info.Specific}
	}
	return r, nil
}

// HostAllocated returns the bytes a file occupies on its host filesystem
// (st_blocks × 512, as qemu-img's actual-size), 0 when unknown.
func HostAllocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
