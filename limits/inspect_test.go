package limits

import (
	"reflect"
	"testing"

	"github.com/diskimg/diskimg/inspect"
)

func TestAddInspection(t *testing.T) {
	r := &inspect.Report{
		PartitionTable: &inspect.PartitionTable{Type: "gpt", Partitions: []inspect.Partition{
			{Number: 1, TypeName: "BIOS boot"},
			{Number: 2, TypeName: "EFI System", Filesystem: &inspect.Filesystem{Type: "vfat", Size: 100, Used: 10}},
			{Number: 3, TypeName: "Linux filesystem", Filesystem: &inspect.Filesystem{Type: "xfs", Size: 1000, Used: 500}},
			{Number: 4, TypeName: "Microsoft basic data", Filesystem: &inspect.Filesystem{Type: "BitLocker", Encrypted: true, Size: 2000}},
			{Number: 5, TypeName: "unknown"},
		}},
		Boot: &inspect.Boot{Modes: []string{"bios", "uefi"}},
		OS: &inspect.OS{Type: "windows", Arch: "x86_64", Bits: 64, Role: "domain controller", CloudInit: true,
			Drivers: []inspect.Driver{{Name: "viostor", Load: "boot"}, {Name: "netkvm", Load: "disabled"}, {Name: "viostor", Load: "boot"}}},
	}
	var img Image
	AddInspection(&img, r)
	want := Image{Inspected: true, PartitionTable: "gpt", OSType: "windows", Arch: "x86_64", Bits: 64, FSSize: 3100, FSUsed: 510, Filesystems: 3,
		BootModes: []string{"bios", "uefi"}, Unsearched: []string{"partition 3 (xfs)", "partition 4 (BitLocker)", "partition 5 (no filesystem recognised)"},
		EncryptedVolumes: []string{"partition 4 (BitLocker)"}, BitLocker: true, WindowsRole: "domain controller", CloudInit: true, Drivers: []string{"viostor"}}
	if !reflect.DeepEqual(img, want) {
		t.Errorf("image\n%+v\nwant\n%+v", img, want)
	}
	img = Image{}
	AddInspection(&img, &inspect.Report{PartitionTable: &inspect.PartitionTable{Type: "mbr"}, Boot: &inspect.Boot{Modes: []string{}},
		OS: &inspect.OS{Type: "linux", Kernels: []inspect.Kernel{{Version: "6.1"}}, PersistentNetRules: true,
			Fstab: []inspect.FstabEntry{{Spec: "UUID=x", Mount: "/", By: "uuid"}, {Spec: "/dev/sdb1", Mount: "/home", By: "device"}}}})
	if img.Kernels != 1 || !img.PersistentNetRules || !reflect.DeepEqual(img.FstabDevices, []string{"/home on /dev/sdb1"}) || img.Encrypted {
		t.Errorf("linux image %+v", img)
	}
}
