// Package limits checks a disk image against a cloud's import and export
// rules and decides the upload path. Profiles are plain data; Check and
// Plan are pure functions of what info and inspect found. No I/O.
package limits

import (
	"fmt"
	"slices"
	"strings"
)

// Sizes as the clouds' documents use them: their "GB" is GiB.
const (
	MiB int64 = 1 << 20
	GiB int64 = 1 << 30
	TiB int64 = 1 << 40
)

// Severity of a finding.
type Severity string

const (
	Error   Severity = "error"   // the cloud refuses the image or request
	Warning Severity = "warning" // likely to fail or to surprise
	Info    Severity = "info"    // a documented limit worth knowing
)

// Direction of the transfer.
type Direction string

const (
	Import Direction = "import"
	Export Direction = "export"
)

// Image is what is known about the image file, from `info` and `inspect`.
// Zero values mean unknown.
type Image struct {
	Filename      string
	Format        string // qemu's name: raw, qcow2, vmdk, vpc, vhdx, …
	Subformat     string // vmdk create type; vpc "fixed" or "dynamic"
	VirtualSize   int64
	FileSize      int64 // bytes the file takes to upload (its length)
	AllocatedSize int64 // guest bytes holding data
	Encrypted     bool
	Backing       bool // has a backing file
	DataFile      bool // qcow2 external data file
	// OpenFlags are the diskimg options that open the image as it was
	// planned (--allow-backing-outside when its chain leaves its
	// directory, --no-backing, --parent FILE); the plan's commands
	// repeat them.
	OpenFlags []string
	// Measure returns the length of the file diskimg writes when it
	// converts the image to format, with the -o options given (qemu-img
	// style, "subformat=fixed"), at virtualSize: the writer's own Measure
	// (its Required size). limits imports no format package, so the caller
	// supplies it; without it, or when it fails, a conversion is taken to
	// be as large as the disk.
	// With sparsify it measures the image with the free space of its
	// filesystems left out (convert --sparsify).
	Measure func(format string, options []string, virtualSize int64, sparsify bool) (int64, error) `json:"-"`

	Inspected      bool   // partitions and filesystems could be read
	PartitionTable string // "mbr", "gpt", "none"
	OSType         string // "linux", "windows"
	Arch           string // "x86_64", "aarch64", …
	Bits           int    // 32 or 64
	FSSize         int64  // bytes of all filesystems
	FSUsed         int64  // bytes in use by all filesystems
	InodesUsed     int64
	InodesTotal    int64
	Filesystems    int // how many filesystems were read

	// What decides whether the image boots on the cloud, from inspect.
	BootModes []string // boot modes a loader was found for: bios, uefi
	// Unsearched names the volumes that may hold an OS inspect does not
	// look into ("partition 2 (xfs)"), EncryptedVolumes those encrypted.
	Unsearched       []string
	EncryptedVolumes []string
	BitLocker        bool
	WindowsRole      string   // workstation, server, domain controller; "" when unknown
	CloudInit        bool     // cloud-init (Linux) or Cloudbase-Init (Windows)
	Drivers          []string // paravirtual drivers installed and enabled: virtio_blk, netkvm, …
	Kernels          int      // Linux kernels installed
	// FstabDevices are the fstab entries naming kernel devices
	// ("/home on /dev/sdb1").
	FstabDevices       []string
	PersistentNetRules bool
	// SparsifyFree are the data bytes that lie in free filesystem space:
	// what `convert --sparsify` leaves out.
	SparsifyFree int64
	// sparsified: the image as convert --sparsify reads it (see
	// sparsified); Measure is asked for that image.
	sparsified bool
}

// Request is what the user intends to do with the image.
type Request struct {
	Direction    Direction
	Disk         string // "system" (default) or "data"
	Arch         string // architecture of the servers to create: "x86_64" or "aarch64"
	MemoryGiB    int64  // memory of the servers to create
	FlavorDisk   int64  // disk size of the target flavor, bytes
	UploadFormat string // format the user wants to upload; "" lets Plan choose
	// Quotas the request mentions, by rule id suffix ("private-images",
	// "shared-tenants", …): the number the user intends.
	Quotas map[string]int64
	// BootMode is how the image boots, bios or uefi, when the user knows
	// better than inspect (or must choose, for a hybrid image); "" takes
	// the modes inspect found.
	BootMode string
	// Sparsify converts the upload with --sparsify, leaving out
	// Image.SparsifyFree.
	Sparsify bool
}

// Finding is one rule's verdict on the image and request.
type Finding struct {
	Rule     string   `json:"rule"`
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
	Source   string   `json:"source"`
}

func (r *Request) disk() string {
	if r.Disk == "" {
		return "system"
	}
	return r.Disk
}

func (r *Request) direction() Direction {
	if r.Direction == "" {
		return Import
	}
	return r.Direction
}

// Check applies every rule of p to the image and request, in the
// profile's order, and returns what they found.
func Check(img Image, p *Profile, req Request) []Finding {
	var out []Finding
	for _, r := range p.Rules {
		if r.Direction != "" && r.Direction != req.direction() {
			continue
		}
		if r.Disk != "" && r.Disk != req.disk() {
			continue
		}
		if r.OS != "" && r.OS != img.OSType {
			continue
		}
		if msg, sev, hit := r.Kind.eval(r, img, req); hit {
			if sev == "" {
				sev = r.Severity
			}
			out = append(out, Finding{Rule: r.ID, Severity: sev, Message: msg, Source: sourceOf(r, p)})
		}
	}
	return out
}

func sourceOf(r Rule, p *Profile) string {
	if r.Source != "" {
		return r.Source
	}
	return p.Source
}

// size prints bytes with the unit the documents use.
func size(n int64) string {
	switch {
	case n >= TiB && n%TiB == 0:
		return fmt.Sprintf("%d TiB", n/TiB)
	case n >= GiB && n%GiB == 0:
		return fmt.Sprintf("%d GiB", n/GiB)
	case n >= MiB && n%MiB == 0:
		return fmt.Sprintf("%d MiB", n/MiB)
	case n >= GiB:
		return fmt.Sprintf("%.2f GiB (%d bytes)", float64(n)/float64(GiB), n)
	}
	return fmt.Sprintf("%d bytes", n)
}

func formatList(f []string) string {
	up := make([]string, len(f))
	for i, s := range f {
		up[i] = displayFormat(s)
	}
	return strings.Join(up, ", ")
}

// displayFormat names a format as the clouds' documents do (VHD for vpc).
func displayFormat(f string) string {
	if f == "vpc" {
		return "VHD"
	}
	return strings.ToUpper(f)
}

func contains(list []string, s string) bool { return slices.Contains(list, s) }
