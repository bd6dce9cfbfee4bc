package limits

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Documents the rules come from.
const (
	srcHuawei    = "Huawei Cloud IMS: Constraints (updated 2024-03-05)"
	srcRackspace = "Rackspace: Cloud server image limitations (2016-12-13)"
	srcAWS       = "AWS VM Import/Export: requirements for imported VMs"
	srcAzure     = "Azure: prepare a VHD for upload (fixed VHD, whole MiB)"
	srcGCP       = "Google Compute Engine: import a raw disk image (disk.raw in tar.gz)"
	srcOpenStack = "OpenStack Glance: disk formats"

	srcHuaweiLinux   = "Huawei Cloud IMS: Preparing an Image File (Linux) (https://support.huaweicloud.com/intl/en-us/usermanual-ims/ims_01_0209.html)"
	srcHuaweiWindows = "Huawei Cloud IMS: Preparing an Image File (Windows) (https://support.huaweicloud.com/intl/en-us/usermanual-ims/ims_01_0204.html)"
	srcHuaweiUEFI    = "Huawei Cloud IMS: OSs Supporting UEFI Boot Mode; register the image with boot mode UEFI"
	srcRackspaceBoot = "Rackspace Cloud Images: an imported VHD must be prepared for XenServer, whose HVM guests start with BIOS"
	srcAWSLimits     = "AWS VM Import/Export: Limitations for resources being imported (https://docs.aws.amazon.com/vm-import/latest/userguide/limitations-image-importing.html)"
	srcAWSBootMode   = "AWS CLI: aws ec2 import-image --boot-mode legacy-bios|uefi (https://docs.aws.amazon.com/cli/latest/reference/ec2/import-image.html)"
	srcAzureGen2     = "Azure: Support for generation 2 VMs (https://learn.microsoft.com/azure/virtual-machines/generation-2)"
	srcAzureLinux    = "Azure: Information for non-endorsed distributions (https://learn.microsoft.com/azure/virtual-machines/linux/create-upload-generic)"
	srcGCPImport     = "Google Compute Engine: Manually import boot disks (https://cloud.google.com/compute/docs/import/import-existing-image)"
	srcGCPCustomOS   = "Google Compute Engine: Requirements to build custom images (https://cloud.google.com/compute/docs/images/building-custom-os)"
	srcGCPGuestOS    = "Google Compute Engine: guest OS features, UEFI_COMPATIBLE (https://cloud.google.com/compute/docs/images/create-custom#guest-os-features)"
	srcOpenStackReq  = "OpenStack Virtual Machine Image Guide: Image requirements (https://docs.openstack.org/image-guide/openstack-images.html)"
	srcOpenStackProp = "OpenStack Glance: Useful image properties, hw_disk_bus, hw_vif_model, hw_firmware_type (https://docs.openstack.org/glance/latest/admin/useful-image-properties.html)"
	srcFstab         = "fstab(5): name filesystems by UUID=, LABEL= or PARTUUID=, which do not change with the disk bus (https://man7.org/linux/man-pages/man5/fstab.5.html)"
	srcBitLocker     = "Microsoft: BitLocker recovery overview, a changed boot environment asks for the recovery key (https://learn.microsoft.com/windows/security/operating-system-security/data-protection/bitlocker/recovery-overview)"
)

// systemDisk are the rules every profile has for a system disk: a
// partition table, a boot loader and an OS.
func systemDisk(cloud, src string) []Rule {
	return []Rule{
		{ID: cloud + ".system-disk.partition-table", Kind: KindPartitionTable, Severity: Error, Direction: Import, Disk: "system", Source: src,
			Message: "a system disk must have an MBR or GPT partition table"},
		{ID: cloud + ".system-disk.bootloader", Kind: KindBootLoader, Severity: Error, Direction: Import, Disk: "system", Source: src,
			Message: "a system disk must have a boot loader"},
		{ID: cloud + ".system-disk.os", Kind: KindOS, Severity: Error, Direction: Import, Disk: "system", Source: src,
			Message: "a system disk must hold an operating system"},
	}
}

// kvmGuide is what a KVM cloud's image-preparation guide asks of the
// guest: its boot mode, virtio drivers, cloud-init (Cloudbase-Init) and
// no persistent net rules. Its fields are the rules' sources and
// messages.
type kvmGuide struct {
	cloud string
	// driversSrc, when set, is the virtio rules' source for both OSs.
	bootSrc, linuxSrc, windowsSrc, driversSrc string
	boot, virtio, initMsg, net                string
}

func (g kvmGuide) rules() []Rule {
	r := func(id string, k Kind, os, src, msg string) Rule {
		return Rule{ID: g.cloud + "." + id, Kind: k, Severity: Warning, Direction: Import, OS: os, Source: src, Message: msg}
	}
	return []Rule{biosUnlessTold(g.cloud, g.bootSrc, g.boot),
		needsDrivers(g.cloud+".linux-virtio", "linux", cmp.Or(g.driversSrc, g.linuxSrc), g.virtio, "virtio_blk|virtio_scsi", "virtio_net"),
		needsDrivers(g.cloud+".windows-virtio", "windows", cmp.Or(g.driversSrc, g.windowsSrc), g.virtio, "viostor|vioscsi", "netkvm"),
		r("cloud-init", KindCloudInit, "linux", g.linuxSrc, "install cloud-init, "+g.initMsg),
		r("cloudbase-init", KindCloudInit, "windows", g.windowsSrc, "install Cloudbase-Init, "+g.initMsg),
		r("persistent-net", KindPersistentNet, "linux", g.linuxSrc, g.net),
	}
}

// biosUnlessTold is the rule of a cloud that starts images with BIOS
// unless the image says UEFI: msg says how.
func biosUnlessTold(cloud, src, msg string) Rule {
	return Rule{ID: cloud + ".boot-mode", Kind: KindBootMode, Severity: Warning, Direction: Import, Modes: []string{"bios"}, Source: src, Message: msg}
}

// needsDrivers is a warning when the OS lacks drivers ("a|b" for either).
func needsDrivers(id, os, src, msg string, drivers ...string) Rule {
	return Rule{ID: id, Kind: KindDrivers, Severity: Warning, Direction: Import, OS: os, Drivers: drivers, Source: src, Message: msg}
}

const gcpVirtio = "Compute Engine attaches disks through virtio-SCSI and NICs through virtio-net"

// guest are the rules on the guest's configuration every profile has.
func guest(cloud string) []Rule {
	return []Rule{
		{ID: cloud + ".fstab-device", Kind: KindFstabDevice, Severity: Warning, Direction: Import, OS: "linux", Source: srcFstab,
			Message: "/etc/fstab should name filesystems by UUID or LABEL: kernel device names change with the hypervisor's disk bus"},
		{ID: cloud + ".bitlocker", Kind: KindBitLocker, Severity: Warning, Direction: Import, Source: srcBitLocker,
			Message: "a BitLocker volume asks for its recovery key when it starts on new hardware, and the cloud cannot adapt it"},
	}
}

// Huawei's import formats, as qemu names them.
var huaweiImportFormats = []string{"vmdk", "vpc", "qcow2", "raw", "vhdx", "qed", "vdi", "qcow", "zvhd2", "zvhd"}

var profiles = []*Profile{
	{
		Name: "huawei-ims", Title: "Huawei Cloud IMS", Source: srcHuawei,
		Import: []Path{
			{Name: "normal", MaxSize: 128 * GiB, Formats: huaweiImportFormats, Convert: "qcow2"},
			{Name: "fast", MaxSize: 1 * TiB, Formats: []string{"zvhd2"}, OnRequest: []string{"raw"}, Convert: "zvhd2"},
		},
		Export: []Path{
			{Name: "normal", MaxSize: 128 * GiB, Formats: []string{"vmdk", "vpc", "qcow2", "zvhd"}, Convert: "qcow2"},
			{Name: "fast", MaxSize: 1 * TiB, Formats: []string{"zvhd2"}, Convert: "zvhd2"},
		},
		Rules: slices.Concat([]Rule{
			{ID: "huawei-ims.import.format", Kind: KindFormat, Severity: Error, Direction: Import, Formats: huaweiImportFormats,
				Message: "IMS imports VMDK, VHD, QCOW2, RAW, VHDX, QED, VDI, QCOW, ZVHD2 and ZVHD files"},
			{ID: "huawei-ims.import.system-disk-size", Kind: KindVirtualRange, Severity: Error, Direction: Import, Disk: "system", Limit: 1 * TiB,
				Message: "a system disk image must be no larger than 1 TB"},
			{ID: "huawei-ims.import.data-disk-size", Kind: KindVirtualRange, Severity: Error, Direction: Import, Disk: "data", Limit: 2048 * GiB,
				Message: "a data disk image must fit a data disk of 40–2048 GB"},
			{ID: "huawei-ims.import.data-disk-min", Kind: KindVirtualRange, Severity: Info, Direction: Import, Disk: "data", Min: 40 * GiB,
				Message: "the data disk created from the image is 40–2048 GB and at least as big as the image"},
			{ID: "huawei-ims.encrypted", Kind: KindEncryptedNote, Severity: Info,
				Message: "an encrypted image cannot be shared, published in the Marketplace, replicated across regions or fast-exported, and its key cannot be changed"},
			{ID: "huawei-ims.arch", Kind: KindArch, Severity: Error,
				Message: "an x86 image cannot create Kunpeng (arm64) servers, nor the reverse"},
			{ID: "huawei-ims.32bit-memory", Kind: Kind32BitMemory, Severity: Info, Limit: 4 * GiB,
				Message: "a 32-bit OS cannot use more than 4 GB of memory"},
			{ID: "huawei-ims.quota.private-images", Kind: KindQuota, Severity: Info, Quota: "private-images", Limit: 50,
				Message: "at most 50 private images per region (a service ticket raises the quota)"},
			{ID: "huawei-ims.quota.creation-tasks", Kind: KindQuota, Severity: Info, Quota: "creation-tasks", Limit: 40,
				Message: "at most 40 concurrent image creation tasks, one image per task"},
			{ID: "huawei-ims.quota.shared-tenants", Kind: KindQuota, Severity: Info, Quota: "shared-tenants", Limit: 128,
				Message: "a system or data disk image can be shared with at most 128 tenants"},
			{ID: "huawei-ims.quota.tags", Kind: KindQuota, Severity: Info, Quota: "tags", Limit: 10,
				Message: "at most 10 tags per private image"},
			{ID: "huawei-ims.quota.replications", Kind: KindQuota, Severity: Info, Quota: "replications", Limit: 5,
				Message: "at most 5 concurrent replication tasks per tenant"},
			{ID: "huawei-ims.quota.replication-size", Kind: KindReplicationSize, Severity: Info, Quota: "replications", Limit: 128 * GiB,
				Message: "an image larger than 128 GB cannot be replicated (300 GB from some regions)"},
			{ID: "huawei-ims.quota.servers", Kind: KindQuota, Severity: Info, Quota: "servers", Limit: 100,
				Message: "at most 100 servers created concurrently from one system disk image (recommended)"},
			{ID: "huawei-ims.export.restrictions", Kind: KindNote, Severity: Info, Direction: Export,
				Message: "full-ECS images, ISO images, images made from Windows, SUSE, Red Hat, Ubuntu or Oracle Linux public images, and Marketplace images cannot be exported; export goes to a Standard bucket in the image's region"},
		}, systemDisk("huawei-ims", srcHuaweiLinux), guest("huawei-ims"), kvmGuide{
			cloud: "huawei-ims", bootSrc: srcHuaweiUEFI, linuxSrc: srcHuaweiLinux, windowsSrc: srcHuaweiWindows,
			boot:    "IMS starts an image with BIOS unless it is registered with boot mode UEFI",
			virtio:  "ECSs attach disks and NICs through virtio: install the native KVM drivers (Windows: the Guest OS drivers; without a virtio storage driver it stops with INACCESSIBLE_BOOT_DEVICE)",
			initMsg: "or passwords and user data cannot be injected into new ECSs",
			net:     "delete the network rule files, or the ECS's NIC is renamed and its network does not come up",
		}.rules()),
	},
	{
		Name: "rackspace", Title: "Rackspace Cloud Servers", Source: srcRackspace,
		Import: []Path{{Name: "normal", Formats: []string{"vpc"}, Convert: "vpc:dynamic"}},
		Rules: slices.Concat([]Rule{
			{ID: "rackspace.system-volume-40g", Kind: KindVirtualRange, Severity: Warning, Limit: 40 * GiB,
				Message: "General Purpose and I/O-optimized servers cannot be built from images with system volumes larger than 40 GB"},
			{ID: "rackspace.near-full", Kind: KindNearFull, Severity: Warning, Limit: 90,
				Message: "imaging can fail when the image is very close to the maximum disk size"},
			{ID: "rackspace.inodes", Kind: KindInodes, Severity: Warning, Limit: 5_000_000,
				Message: "imaging can fail when the image has an extremely large number of files"},
			{ID: "rackspace.virtual-slack", Kind: KindFSSlack, Severity: Info,
				Message: "the virtual disk includes space that tracked changes and deleted files once used"},
			{ID: "rackspace.windows-flavor-disk", Kind: KindWindowsFlavor, Severity: Error,
				Message: "a Windows server cannot be built from an image whose volume is larger than the flavor's disk"},
			{ID: "rackspace.windows-domain-controller", Kind: KindDomainController, Severity: Error,
				Message: "an image of a Windows domain controller cannot be restored: demote it before imaging"},
			{ID: "rackspace.database", Kind: KindNote, Severity: Info,
				Message: "images are not a reliable backup of a live database: stop the database (or dump it) before imaging"},
			{ID: "rackspace.block-volumes", Kind: KindNote, Severity: Info,
				Message: "images do not include attached Cloud Block Storage volumes, even a boot volume"},
			{ID: "rackspace.system-disk-only", Kind: KindNote, Severity: Info,
				Message: "I/O-optimized server images capture only the system disk, not attached data disks"},
			{ID: "rackspace.prepared", Kind: KindNote, Severity: Info, Direction: Import,
				Message: "an imported image boots only if it was prepared for the Rackspace open cloud"},
			{ID: "rackspace.boot-mode", Kind: KindBootMode, Severity: Error, Direction: Import, Modes: []string{"bios"}, Source: srcRackspaceBoot,
				Message: "Cloud Servers start images with BIOS"},
		}, systemDisk("rackspace", srcRackspace), guest("rackspace")),
	},
	{
		Name: "aws", Title: "AWS VM Import", Source: srcAWS,
		Import: []Path{{Name: "normal", Formats: []string{"vmdk:streamOptimized", "vpc", "vhdx", "raw"}, Convert: "vmdk:streamOptimized"}},
		Rules: []Rule{
			{ID: "aws.format", Kind: KindFormat, Severity: Error, Direction: Import, Formats: []string{"vmdk", "vpc", "vhdx", "raw"},
				Message: "VM Import takes OVA, streamOptimized VMDK, VHD, VHDX and raw files"},
			{ID: "aws.64-bit", Kind: KindBits64, Severity: Error, Message: "VM Import needs a 64-bit OS"},
			{ID: "aws.partition-table", Kind: KindPartitionTable, Severity: Error, Message: "VM Import needs an MBR or GPT partitioned disk"},
			{ID: "aws.encrypted", Kind: KindEncrypted, Severity: Error, Source: srcAWSLimits, Message: "VM Import does not take encrypted volumes"},
			{ID: "aws.self-contained", Kind: KindNoBacking, Severity: Error, Message: "the uploaded file must be self-contained"},
			{ID: "aws.system-disk.bootloader", Kind: KindBootLoader, Severity: Error, Direction: Import, Disk: "system", Source: srcAWSLimits,
				Message: "a system disk must have a boot loader on the disk holding the root partition"},
			{ID: "aws.system-disk.os", Kind: KindOS, Severity: Error, Direction: Import, Disk: "system", Source: srcAWSLimits,
				Message: "a system disk must hold an operating system"},
			{ID: "aws.boot-mode", Kind: KindBootModeStated, Severity: Warning, Direction: Import, Disk: "system", Source: srcAWSBootMode,
				Message: "VM Import boots the image with the boot mode the import names"},
			{ID: "aws.fstab-device", Kind: KindFstabDevice, Severity: Warning, Direction: Import, OS: "linux", Source: srcFstab,
				Message: "/etc/fstab should name filesystems by UUID or LABEL: EC2 instances see their disks as NVMe or xvd devices"},
		},
	},
	{
		Name: "azure", Title: "Azure managed disks", Source: srcAzure,
		Import: []Path{{Name: "normal", Formats: []string{"vpc:fixed"}, Convert: "vpc:fixed", RoundTo: MiB}},
		Rules: slices.Concat([]Rule{
			{ID: "azure.fixed-vhd", Kind: KindFixedVHD, Severity: Error, Direction: Import, Message: "Azure takes only fixed VHD files"},
			{ID: "azure.size-mib", Kind: KindVirtualMultiple, Severity: Error, Limit: MiB, Message: "the virtual size must be a whole number of MiB"},
			{ID: "azure.size-range", Kind: KindVirtualRange, Severity: Error, Min: 20 * MiB, Limit: 32 * TiB, Message: "the virtual size must be 20 MiB–32 TiB"},
			{ID: "azure.self-contained", Kind: KindNoBacking, Severity: Error, Message: "the uploaded file must be self-contained"},
			biosUnlessTold("azure", srcAzureGen2, "generation 1 VMs start with BIOS: a UEFI image needs a generation 2 disk and image (--hyper-v-generation V2)"),
			needsDrivers("azure.linux-hyperv", "linux", srcAzureLinux, "Azure attaches disks and NICs through Hyper-V: the kernel needs the hv_storvsc and hv_netvsc drivers",
				"hv_storvsc", "hv_netvsc"),
			{ID: "azure.cloud-init", Kind: KindCloudInit, Severity: Warning, Direction: Import, OS: "linux", Source: srcAzureLinux,
				Message: "cloud-init or the Azure Linux Agent must provision the VM"},
		}, systemDisk("azure", srcAzureLinux), guest("azure")),
	},
	{
		Name: "gcp", Title: "Google Compute Engine", Source: srcGCP,
		Import: []Path{{Name: "normal", Formats: []string{"raw"}, Convert: "raw", RoundTo: GiB, Package: "tar.gz"}},
		Rules: slices.Concat([]Rule{
			{ID: "gcp.format", Kind: KindFormat, Severity: Error, Direction: Import, Formats: []string{"raw"},
				Message: "Compute Engine imports a raw disk named disk.raw in a gzip'd tar"},
			{ID: "gcp.size-gib", Kind: KindVirtualMultiple, Severity: Error, Limit: GiB, Message: "the virtual size must be a whole number of GiB"},
			{ID: "gcp.self-contained", Kind: KindNoBacking, Severity: Error, Message: "the uploaded file must be self-contained"},
			biosUnlessTold("gcp", srcGCPGuestOS, "Compute Engine starts a UEFI image only when the image is created with --guest-os-features=UEFI_COMPATIBLE"),
			needsDrivers("gcp.linux-virtio", "linux", srcGCPCustomOS, gcpVirtio, "virtio_scsi", "virtio_net"),
			needsDrivers("gcp.windows-virtio", "windows", srcGCPCustomOS, gcpVirtio, "vioscsi", "netkvm"),
			{ID: "gcp.persistent-net", Kind: KindPersistentNet, Severity: Warning, Direction: Import, OS: "linux", Source: srcGCPImport,
				Message: "remove udev's persistent network rules, which pin interface names to the old machine's MAC addresses"},
		}, systemDisk("gcp", srcGCPImport), guest("gcp")),
	},
	{
		Name: "openstack", Title: "OpenStack Glance", Source: srcOpenStack,
		Import: []Path{{Name: "normal", Formats: glanceFormats, Convert: "qcow2"}},
		Rules: slices.Concat([]Rule{
			{ID: "openstack.format", Kind: KindFormat, Severity: Error, Direction: Import, Formats: glanceFormats,
				Message: "Glance takes raw, qcow2, vmdk, vhd (vpc), vhdx, vdi, qed and ploop disk formats"},
			{ID: "openstack.self-contained", Kind: KindNoBacking, Severity: Error,
				Message: "Glance refuses images with backing files or external data files"},
		}, systemDisk("openstack", srcOpenStackReq), guest("openstack"), kvmGuide{
			cloud: "openstack", bootSrc: srcOpenStackProp, linuxSrc: srcOpenStackReq, windowsSrc: srcOpenStackReq, driversSrc: srcOpenStackProp,
			boot:    "Nova starts an image with BIOS unless its hw_firmware_type property is uefi",
			virtio:  "KVM compute nodes attach disks and NICs through virtio unless hw_disk_bus and hw_vif_model say otherwise",
			initMsg: "to fetch the SSH key or password, user data and hostname from the metadata service",
			net:     "an image must not hard-code MAC addresses: remove udev's persistent network rules",
		}.rules()),
	},
}

var glanceFormats = []string{"raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi", "qed", "ploop"}

// Profiles returns every profile's name, sorted.
func Profiles() []string {
	var names []string
	for _, p := range profiles {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return names
}

// Lookup returns the named profile.
func Lookup(name string) (*Profile, error) {
	for _, p := range profiles {
		if p.Name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("unknown cloud %q (known: %s)", name, strings.Join(Profiles(), ", "))
}
