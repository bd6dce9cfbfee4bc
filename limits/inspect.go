package limits

import (
	"fmt"
	"slices"

	"github.com/diskimg/diskimg/inspect"
)

// AddInspection fills in what inspect found inside the image: partition
// table, filesystems and their use, boot loaders, and the operating
// system with what decides whether it boots on another hypervisor.
func AddInspection(img *Image, r *inspect.Report) {
	if r == nil || r.PartitionTable == nil {
		return
	}
	img.Inspected = true
	img.PartitionTable = r.PartitionTable.Type
	addFS := func(where string, typeName string, fs *inspect.Filesystem) {
		if fs == nil {
			if typeName != "" && !slices.Contains(noOSTypes, typeName) {
				img.Unsearched = append(img.Unsearched, where+" (no filesystem recognised)")
			}
			return
		}
		if fs.Encrypted {
			img.EncryptedVolumes = append(img.EncryptedVolumes, fmt.Sprintf("%s (%s)", where, fs.Type))
			img.BitLocker = img.BitLocker || fs.Type == "BitLocker"
		}
		if slices.Contains(unsearchedFS, fs.Type) {
			img.Unsearched = append(img.Unsearched, fmt.Sprintf("%s (%s)", where, fs.Type))
		}
		img.Filesystems++
		img.FSSize += fs.Size
		img.FSUsed += fs.Used
		img.InodesUsed += fs.InodesUsed
		img.InodesTotal += fs.InodesTotal
	}
	addFS("the disk", "", r.Filesystem)
	for _, p := range r.PartitionTable.Partitions {
		addFS(fmt.Sprintf("partition %d", p.Number), p.TypeName, p.Filesystem)
	}
	if r.Boot != nil {
		img.BootModes = r.Boot.Modes
	}
	o := r.OS
	if o == nil {
		return
	}
	img.OSType, img.Arch, img.Bits = o.Type, o.Arch, o.Bits
	img.WindowsRole = o.Role
	img.CloudInit = o.CloudInit
	img.Kernels = len(o.Kernels)
	img.PersistentNetRules = o.PersistentNetRules
	for _, d := range o.Drivers {
		if d.Load != "disabled" && !slices.Contains(img.Drivers, d.Name) {
			img.Drivers = append(img.Drivers, d.Name)
		}
	}
	for _, e := range o.Fstab {
		if e.By == "device" {
			img.FstabDevices = append(img.FstabDevices, e.Mount+" on "+e.Spec)
		}
	}
}

// unsearchedFS are filesystems and containers that may hold an OS inspect
// does not look into.
var unsearchedFS = []string{"xfs", "btrfs", "LVM2_member", "crypto_LUKS", "BitLocker"}

// noOSTypes are partition types that hold no filesystem of their own.
var noOSTypes = []string{"BIOS boot", "Extended", "W95 Ext'd (LBA)", "Linux extended", "Microsoft reserved", "Microsoft LDM metadata"}
