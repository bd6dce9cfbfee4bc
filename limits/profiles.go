package limits

import (
	"fmt"
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
)

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
		Rules: []Rule{
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
		},
	},
	{
		Name: "rackspace", Title: "Rackspace Cloud Servers", Source: srcRackspace,
		Import: []Path{{Name: "normal", Formats: []string{"vpc"}, Convert: "vpc:dynamic"}},
		Rules: []Rule{
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
			{ID: "rackspace.windows-domain-controller", Kind: KindWindowsNote, Severity: Info,
				Message: "an image of a Windows domain controller cannot be restored: demote it before imaging"},
			{ID: "rackspace.database", Kind: KindNote, Severity: Info,
				Message: "images are not a reliable backup of a live database: stop the database (or dump it) before imaging"},
			{ID: "rackspace.block-volumes", Kind: KindNote, Severity: Info,
				Message: "images do not include attached Cloud Block Storage volumes, even a boot volume"},
			{ID: "rackspace.system-disk-only", Kind: KindNote, Severity: Info,
				Message: "I/O-optimized server images capture only the system disk, not attached data disks"},
			{ID: "rackspace.prepared", Kind: KindNote, Severity: Info, Direction: Import,
				Message: "an imported image boots only if it was prepared for the Rackspace open cloud"},
		},
	},
	{
		Name: "aws", Title: "AWS VM Import", Source: srcAWS,
		Import: []Path{{Name: "normal", Formats: []string{"vmdk:streamOptimized", "vpc", "vhdx", "raw"}, Convert: "vmdk:streamOptimized"}},
		Rules: []Rule{
			{ID: "aws.format", Kind: KindFormat, Severity: Error, Direction: Import, Formats: []string{"vmdk", "vpc", "vhdx", "raw"},
				Message: "VM Import takes OVA, streamOptimized VMDK, VHD, VHDX and raw files"},
			{ID: "aws.64-bit", Kind: KindBits64, Severity: Error, Message: "VM Import needs a 64-bit OS"},
			{ID: "aws.partition-table", Kind: KindPartitionTable, Severity: Error, Message: "VM Import needs an MBR or GPT partitioned disk"},
			{ID: "aws.encrypted", Kind: KindEncrypted, Severity: Error, Message: "VM Import does not take encrypted volumes"},
			{ID: "aws.self-contained", Kind: KindNoBacking, Severity: Error, Message: "the uploaded file must be self-contained"},
		},
	},
	{
		Name: "azure", Title: "Azure managed disks", Source: srcAzure,
		Import: []Path{{Name: "normal", Formats: []string{"vpc:fixed"}, Convert: "vpc:fixed", RoundTo: MiB}},
		Rules: []Rule{
			{ID: "azure.fixed-vhd", Kind: KindFixedVHD, Severity: Error, Direction: Import, Message: "Azure takes only fixed VHD files"},
			{ID: "azure.size-mib", Kind: KindVirtualMultiple, Severity: Error, Limit: MiB, Message: "the virtual size must be a whole number of MiB"},
			{ID: "azure.size-range", Kind: KindVirtualRange, Severity: Error, Min: 20 * MiB, Limit: 32 * TiB, Message: "the virtual size must be 20 MiB–32 TiB"},
			{ID: "azure.self-contained", Kind: KindNoBacking, Severity: Error, Message: "the uploaded file must be self-contained"},
		},
	},
	{
		Name: "gcp", Title: "Google Compute Engine", Source: srcGCP,
		Import: []Path{{Name: "normal", Formats: []string{"raw"}, Convert: "raw", RoundTo: GiB, Package: "tar.gz"}},
		Rules: []Rule{
			{ID: "gcp.format", Kind: KindFormat, Severity: Error, Direction: Import, Formats: []string{"raw"},
				Message: "Compute Engine imports a raw disk named disk.raw in a gzip'd tar"},
			{ID: "gcp.size-gib", Kind: KindVirtualMultiple, Severity: Error, Limit: GiB, Message: "the virtual size must be a whole number of GiB"},
			{ID: "gcp.self-contained", Kind: KindNoBacking, Severity: Error, Message: "the uploaded file must be self-contained"},
		},
	},
	{
		Name: "openstack", Title: "OpenStack Glance", Source: srcOpenStack,
		Import: []Path{{Name: "normal", Formats: glanceFormats, Convert: "qcow2"}},
		Rules: []Rule{
			{ID: "openstack.format", Kind: KindFormat, Severity: Error, Direction: Import, Formats: glanceFormats,
				Message: "Glance takes raw, qcow2, vmdk, vhd (vpc), vhdx, vdi, qed and ploop disk formats"},
			{ID: "openstack.self-contained", Kind: KindNoBacking, Severity: Error,
				Message: "Glance refuses images with backing files or external data files"},
		},
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
