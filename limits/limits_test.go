package limits

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// The sizes the import path turns on.
var (
	size127G  = 127 * GiB
	size128G  = 128 * GiB
	size128G1 = 128*GiB + 1
	size1T    = 1 * TiB
	size1T1   = 1*TiB + 1
)

func huawei(t *testing.T) *Profile {
	p, err := Lookup("huawei-ims")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// dense is an image whose every byte holds data, so no conversion can
// shrink it: its upload size is what it is.
func dense(format string, n int64) Image {
	return Image{Filename: "disk." + ext(format), Format: format, VirtualSize: n, FileSize: n, AllocatedSize: n}
}

func TestHuaweiImportPath(t *testing.T) {
	p := huawei(t)
	for _, tc := range []struct {
		name   string
		img    Image
		want   string
		format string
		conv   bool
	}{
		{"raw 127G", dense("raw", size127G), "normal", "raw", false},
		// A mostly empty raw file is converted: the qcow2 is far smaller to upload.
		{"sparse raw 127G", Image{Format: "raw", VirtualSize: size127G, FileSize: size127G, AllocatedSize: GiB}, "normal", "qcow2", true},
		{"raw 128G", dense("raw", size128G), "normal", "raw", false},
		{"raw 128G+1 goes fast as zvhd2", dense("raw", size128G1), "fast", "zvhd2", true},
		{"raw 1T goes fast as zvhd2", dense("raw", size1T-2*MiB), "fast", "zvhd2", true},
		{"raw 1T+1", dense("raw", size1T1), Refused, "zvhd2", false},
		{"qcow2 127G", dense("qcow2", size127G), "normal", "qcow2", false},
		{"qcow2 128G+1 goes fast as zvhd2", dense("qcow2", size128G1), "fast", "zvhd2", true},
		{"vmdk 1T goes fast as zvhd2", dense("vmdk", size1T-2*MiB), "fast", "zvhd2", true},
		{"zvhd2 1T", dense("zvhd2", size1T), "fast", "zvhd2", false},
		{"zvhd2 1T+1", dense("zvhd2", size1T1), Refused, "zvhd2", false},
		// A sparse raw file whose data is small converts to qcow2 and takes the normal path.
		{"sparse raw 1T+1", Image{Format: "raw", VirtualSize: size1T1 - 1, FileSize: size1T1 - 1, AllocatedSize: 10 * GiB}, "normal", "qcow2", true},
		// An unknown format is converted.
		{"vdi-like unknown", Image{Format: "parallels", VirtualSize: 10 * GiB, FileSize: 5 * GiB, AllocatedSize: 5 * GiB}, "normal", "qcow2", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := plan(tc.img, p, Request{})
			if d.Path != tc.want || d.UploadFormat != tc.format || (len(d.Commands) > 0) != tc.conv {
				js, _ := json.MarshalIndent(d, "", "  ")
				t.Errorf("got path %q format %q commands %v; want %q %q conversion=%v\n%s", d.Path, d.UploadFormat, d.Commands, tc.want, tc.format, tc.conv, js)
			}
		})
	}
}

func TestHuaweiRawFastNeedsBitmap(t *testing.T) {
	d := plan(dense("raw", 200*GiB), huawei(t), Request{UploadFormat: "raw"})
	if d.Path != "fast" || d.UploadFormat != "raw" {
		t.Fatalf("got %s/%s", d.Path, d.UploadFormat)
	}
	if find(d.Findings, "huawei-ims.fast.raw-bitmap") == nil || !slices.Contains(d.Commands, "java -jar CreateMF.jar disk.raw disk.mf") {
		t.Errorf("raw fast import must name the bitmap step: %+v %v", d.Findings, d.Commands)
	}
}

func TestHuaweiExport(t *testing.T) {
	p := huawei(t)
	for _, tc := range []struct {
		size      int64
		encrypted bool
		want      string
	}{
		{size127G, false, "normal"}, {size128G, false, "normal"}, {size128G1, false, "fast"},
		{size1T, false, "fast"}, {size1T1, false, Refused},
		{size128G1, true, Refused}, {size127G, true, "normal"},
	} {
		img := dense("qcow2", tc.size)
		img.Encrypted = tc.encrypted
		d := plan(img, p, Request{Direction: Export})
		if d.Path != tc.want {
			t.Errorf("export %d bytes encrypted=%v: path %q, want %q (%+v)", tc.size, tc.encrypted, d.Path, tc.want, d.Findings)
		}
		if d.Path == "fast" && (d.UploadFormat != "zvhd2" || len(d.Commands) != 1) {
			t.Errorf("fast export must produce zvhd2 and the local convert command: %+v", d)
		}
	}
}

// TestRules checks every rule of every profile fires on an image that
// breaks it, and stays quiet on one that does not.
func TestRules(t *testing.T) {
	ok := Image{Format: "qcow2", VirtualSize: 20 * GiB, FileSize: 5 * GiB, AllocatedSize: 5 * GiB, Inspected: true,
		PartitionTable: "gpt", OSType: "linux", Arch: "x86_64", Bits: 64, FSSize: 20 * GiB, FSUsed: 5 * GiB, InodesUsed: 1000, Filesystems: 1,
		BootModes: []string{"bios"}, Kernels: 1, CloudInit: true, Drivers: []string{"virtio_blk", "virtio_scsi", "virtio_net", "hv_storvsc", "hv_netvsc"}}
	uefi := func(i *Image) { i.BootModes = []string{"uefi"} }
	noLoader := func(i *Image) { i.BootModes = nil }
	noOS := func(i *Image) { i.OSType = "" }
	noTable := func(i *Image) { i.PartitionTable = "none" }
	fstabDev := func(i *Image) { i.FstabDevices = []string{"/ on /dev/sda1"} }
	bitlocker := func(i *Image) { i.BitLocker, i.EncryptedVolumes = true, []string{"partition 2 (BitLocker)"} }
	noCloudInit := func(i *Image) { i.CloudInit = false }
	persistentNet := func(i *Image) { i.PersistentNetRules = true }
	noVirtio := func(i *Image) { i.Drivers = []string{"hv_storvsc", "hv_netvsc"} }
	windows := func(drivers ...string) func(i *Image) {
		return func(i *Image) { i.OSType, i.Drivers, i.WindowsRole = "windows", drivers, "server" }
	}
	winNoInit := func(i *Image) { windows("viostor", "netkvm")(i); i.CloudInit = false }
	type ruleCase struct {
		cloud, rule string
		sev         Severity
		req         Request
		mod         func(*Image)
		good        func(*Image) // makes an image the rule accepts; nil: the good image as it is
	}
	cases := []ruleCase{
		{"huawei-ims", "huawei-ims.import.format", Error, Request{}, func(i *Image) { i.Format = "parallels" }, nil},
		{"huawei-ims", "huawei-ims.import.system-disk-size", Error, Request{}, func(i *Image) { i.VirtualSize = size1T1 }, nil},
		{"huawei-ims", "huawei-ims.import.data-disk-size", Error, Request{Disk: "data"}, func(i *Image) { i.VirtualSize = 2048*GiB + 1 }, nil},
		{"huawei-ims", "huawei-ims.import.data-disk-min", Info, Request{Disk: "data"}, func(i *Image) { i.VirtualSize = 39 * GiB }, func(i *Image) { i.VirtualSize = 40 * GiB }},
		{"huawei-ims", "huawei-ims.encrypted", Info, Request{}, func(i *Image) { i.Encrypted = true }, nil},
		{"huawei-ims", "huawei-ims.arch", Error, Request{Arch: "aarch64"}, func(i *Image) {}, func(i *Image) { i.Arch = "aarch64" }},
		{"huawei-ims", "huawei-ims.32bit-memory", Info, Request{}, func(i *Image) { i.Bits = 32 }, nil},
		{"huawei-ims", "huawei-ims.32bit-memory", Error, Request{MemoryGiB: 8}, func(i *Image) { i.Bits = 32 }, nil},
		{"huawei-ims", "huawei-ims.quota.private-images", Info, Request{Quotas: map[string]int64{"private-images": 51}}, func(i *Image) {}, nil},
		{"huawei-ims", "huawei-ims.quota.creation-tasks", Info, Request{Quotas: map[string]int64{"creation-tasks": 41}}, func(i *Image) {}, nil},
		{"huawei-ims", "huawei-ims.quota.shared-tenants", Info, Request{Quotas: map[string]int64{"shared-tenants": 129}}, func(i *Image) {}, nil},
		{"huawei-ims", "huawei-ims.quota.tags", Info, Request{Quotas: map[string]int64{"tags": 11}}, func(i *Image) {}, nil},
		{"huawei-ims", "huawei-ims.quota.replications", Info, Request{Quotas: map[string]int64{"replications": 6}}, func(i *Image) {}, nil},
		{"huawei-ims", "huawei-ims.quota.replication-size", Info, Request{Quotas: map[string]int64{"replications": 1}}, func(i *Image) { i.VirtualSize = size128G1 }, nil},
		{"huawei-ims", "huawei-ims.quota.servers", Info, Request{Quotas: map[string]int64{"servers": 101}}, func(i *Image) {}, nil},
		{"huawei-ims", "huawei-ims.export.restrictions", Info, Request{Direction: Export}, func(i *Image) {}, nil},
		{"rackspace", "rackspace.system-volume-40g", Warning, Request{}, func(i *Image) { i.VirtualSize = 40*GiB + 1 }, nil},
		{"rackspace", "rackspace.near-full", Warning, Request{}, func(i *Image) { i.FSUsed = 19 * GiB }, nil},
		{"rackspace", "rackspace.inodes", Warning, Request{}, func(i *Image) { i.InodesUsed = 6_000_000 }, nil},
		{"rackspace", "rackspace.virtual-slack", Info, Request{}, func(i *Image) { i.AllocatedSize = 15 * GiB }, nil},
		{"rackspace", "rackspace.windows-flavor-disk", Error, Request{FlavorDisk: 10 * GiB}, func(i *Image) { i.OSType = "windows" }, nil},
		{"rackspace", "rackspace.windows-domain-controller", Error, Request{}, func(i *Image) { windows()(i); i.WindowsRole = "domain controller" }, windows()},
		{"rackspace", "rackspace.windows-domain-controller", Info, Request{}, func(i *Image) { windows()(i); i.WindowsRole = "" }, windows()},
		{"aws", "aws.format", Error, Request{}, func(i *Image) {}, nil},
		{"aws", "aws.64-bit", Error, Request{}, func(i *Image) { i.Bits = 32 }, nil},
		{"aws", "aws.partition-table", Error, Request{}, func(i *Image) { i.PartitionTable = "none" }, nil},
		{"aws", "aws.encrypted", Error, Request{}, func(i *Image) { i.Encrypted = true }, nil},
		{"aws", "aws.self-contained", Error, Request{}, func(i *Image) { i.Backing = true }, nil},
		{"azure", "azure.fixed-vhd", Error, Request{}, func(i *Image) {}, nil},
		{"azure", "azure.size-mib", Error, Request{}, func(i *Image) { i.VirtualSize += 512 }, nil},
		{"azure", "azure.size-range", Error, Request{}, func(i *Image) { i.VirtualSize = 10 * MiB }, nil},
		{"gcp", "gcp.format", Error, Request{}, func(i *Image) {}, nil},
		{"gcp", "gcp.size-gib", Error, Request{}, func(i *Image) { i.VirtualSize += MiB }, nil},
		{"openstack", "openstack.format", Error, Request{}, func(i *Image) { i.Format = "zvhd2" }, nil},
		{"openstack", "openstack.self-contained", Error, Request{}, func(i *Image) { i.DataFile = true }, nil},
		{"azure", "azure.self-contained", Error, Request{}, func(i *Image) { i.Backing = true }, nil},
		{"gcp", "gcp.self-contained", Error, Request{}, func(i *Image) { i.Backing = true }, nil},
		{"rackspace", "rackspace.database", Info, Request{}, func(i *Image) {}, nil},
		{"rackspace", "rackspace.block-volumes", Info, Request{}, func(i *Image) {}, nil},
		{"rackspace", "rackspace.system-disk-only", Info, Request{}, func(i *Image) {}, nil},
		{"rackspace", "rackspace.prepared", Info, Request{}, func(i *Image) {}, nil},
		// Will it boot there? Rules particular to one cloud; the shared ones follow.
		{"huawei-ims", "huawei-ims.system-disk.bootloader", Warning, Request{BootMode: "bios"}, noLoader, nil},
		{"huawei-ims", "huawei-ims.system-disk.os", Info, Request{}, func(i *Image) { noOS(i); i.Unsearched = []string{"partition 2 (xfs)"} }, nil},
		{"huawei-ims", "huawei-ims.linux-virtio", Warning, Request{}, func(i *Image) { i.Kernels = 0 }, nil},
		{"rackspace", "rackspace.boot-mode", Error, Request{}, uefi, nil},
		{"aws", "aws.encrypted", Error, Request{}, bitlocker, nil},
		{"aws", "aws.boot-mode", Warning, Request{}, func(i *Image) { i.BootModes = []string{"bios", "uefi"} }, nil},
		{"aws", "aws.boot-mode", Info, Request{}, uefi, nil},
		{"aws", "aws.boot-mode", Info, Request{BootMode: "uefi"}, func(i *Image) { i.BootModes = []string{"bios", "uefi"} }, nil},
		{"azure", "azure.linux-hyperv", Warning, Request{}, func(i *Image) { i.Drivers = []string{"virtio_blk", "virtio_net"} }, nil},
		{"gcp", "gcp.linux-virtio", Warning, Request{}, func(i *Image) { i.Drivers = []string{"virtio_blk", "virtio_net"} }, nil},
		{"gcp", "gcp.windows-virtio", Warning, Request{}, windows("viostor", "netkvm"), windows("vioscsi", "netkvm")},
		{"openstack", "openstack.windows-virtio", Warning, Request{}, windows("viostor"), windows("vioscsi", "netkvm")},
	}
	// Rules several clouds share, by what breaks them.
	for _, g := range []struct {
		sev       Severity
		mod, good func(*Image)
		ids       []string
	}{
		{Error, noTable, nil, []string{"huawei-ims.system-disk.partition-table", "rackspace.system-disk.partition-table",
			"azure.system-disk.partition-table", "gcp.system-disk.partition-table", "openstack.system-disk.partition-table"}},
		{Error, noLoader, nil, []string{"huawei-ims.system-disk.bootloader", "rackspace.system-disk.bootloader", "aws.system-disk.bootloader",
			"azure.system-disk.bootloader", "gcp.system-disk.bootloader", "openstack.system-disk.bootloader"}},
		{Error, noOS, nil, []string{"huawei-ims.system-disk.os", "rackspace.system-disk.os", "aws.system-disk.os", "azure.system-disk.os",
			"gcp.system-disk.os", "openstack.system-disk.os"}},
		{Warning, fstabDev, nil, []string{"huawei-ims.fstab-device", "rackspace.fstab-device", "aws.fstab-device", "azure.fstab-device",
			"gcp.fstab-device", "openstack.fstab-device"}},
		{Warning, bitlocker, nil, []string{"huawei-ims.bitlocker", "rackspace.bitlocker", "azure.bitlocker", "gcp.bitlocker", "openstack.bitlocker"}},
		{Warning, uefi, nil, []string{"huawei-ims.boot-mode", "azure.boot-mode", "gcp.boot-mode", "openstack.boot-mode"}},
		{Warning, noVirtio, nil, []string{"huawei-ims.linux-virtio", "openstack.linux-virtio"}},
		{Warning, windows("storvsc", "netvsc"), windows("viostor", "netkvm"), []string{"huawei-ims.windows-virtio", "openstack.windows-virtio"}},
		{Warning, noCloudInit, nil, []string{"huawei-ims.cloud-init", "azure.cloud-init", "openstack.cloud-init"}},
		{Warning, winNoInit, windows("viostor", "netkvm"), []string{"huawei-ims.cloudbase-init", "openstack.cloudbase-init"}},
		{Warning, persistentNet, nil, []string{"huawei-ims.persistent-net", "gcp.persistent-net", "openstack.persistent-net"}},
	} {
		for _, id := range g.ids {
			cases = append(cases, ruleCase{strings.SplitN(id, ".", 2)[0], id, g.sev, Request{}, g.mod, g.good})
		}
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			p, err := Lookup(tc.cloud)
			if err != nil {
				t.Fatal(err)
			}
			bad := ok
			tc.mod(&bad)
			f := find(Check(bad, p, tc.req), tc.rule)
			if f == nil || f.Severity != tc.sev || f.Source == "" || f.Message == "" {
				t.Errorf("rule %s on the breaking image: %+v, want severity %s", tc.rule, f, tc.sev)
			}
			// Quota rules speak whenever the request mentions them.
			if r := ruleOf(p, tc.rule); r.Kind != KindNote && r.Kind != KindQuota && r.Kind != KindFormat && r.Kind != KindFixedVHD && r.Kind != Kind32BitMemory && r.Kind != KindBootModeStated {
				good := ok
				if tc.good != nil {
					tc.good(&good)
				}
				if f := find(Check(good, p, tc.req), tc.rule); f != nil {
					t.Errorf("rule %s fires on a good image: %+v", tc.rule, f)
				}
			}
		})
	}
}

// find returns the finding of rule id, nil when there is none.
func find(fs []Finding, id string) *Finding {
	for i := range fs {
		if fs[i].Rule == id {
			return &fs[i]
		}
	}
	return nil
}

func ruleOf(p *Profile, id string) Rule {
	for _, r := range p.Rules {
		if r.ID == id {
			return r
		}
	}
	return Rule{}
}

// Every rule of every profile is covered by TestRules.
func TestEveryRuleTested(t *testing.T) {
	data, err := os.ReadFile("limits_test.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range profiles {
		for _, r := range p.Rules {
			if !strings.Contains(string(data), `"`+r.ID+`"`) {
				t.Errorf("rule %s has no test", r.ID)
			}
		}
	}
}

func TestPlanGolden(t *testing.T) {
	img := Image{Filename: "vm.vmdk", Format: "vmdk", Subformat: "monolithicSparse", VirtualSize: 20*GiB + 3*MiB + 512,
		FileSize: 3 * GiB, AllocatedSize: 3 * GiB, Inspected: true, PartitionTable: "gpt", OSType: "linux",
		Arch: "x86_64", Bits: 64, FSSize: 20 * GiB, FSUsed: 2 * GiB, InodesUsed: 80000, InodesTotal: 1310720, Filesystems: 2,
		BootModes: []string{"bios"}, Kernels: 1, CloudInit: true, Drivers: []string{"virtio_blk", "virtio_scsi", "virtio_net", "hv_storvsc", "hv_netvsc"}}
	for _, name := range Profiles() {
		p, _ := Lookup(name)
		d := plan(img, p, Request{})
		got, _ := json.MarshalIndent(d, "", "    ")
		path := filepath.Join("testdata", "plan-"+name+".json")
		if *update {
			os.MkdirAll("testdata", 0o755)
			os.WriteFile(path, append(got, '\n'), 0o644)
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (go test -update writes it)", err)
		}
		if string(want) != string(got)+"\n" {
			t.Errorf("%s differs (go test -update rewrites it):\n%s", path, got)
		}
	}
}

// TestBootModeOverride: --boot-mode says how the image boots when the
// user knows better than inspect, or must choose for a hybrid image.
func TestBootModeOverride(t *testing.T) {
	p, _ := Lookup("rackspace")
	img := Image{Inspected: true, PartitionTable: "gpt", OSType: "linux", BootModes: []string{"bios", "uefi"}}
	for _, tc := range []struct {
		modes []string
		mode  string
		fires bool
	}{{[]string{"bios", "uefi"}, "", false}, {[]string{"bios", "uefi"}, "uefi", true}, {[]string{"uefi"}, "", true}, {[]string{"uefi"}, "bios", false}, {nil, "uefi", true}} {
		img.BootModes = tc.modes
		if f := find(Check(img, p, Request{BootMode: tc.mode}), "rackspace.boot-mode"); (f != nil) != tc.fires {
			t.Errorf("modes %v --boot-mode %q: %+v", tc.modes, tc.mode, f)
		}
	}
}

func TestLookupUnknown(t *testing.T) {
	_, err := Lookup("nope")
	if err == nil || err.Error() != `unknown cloud "nope" (known: aws, azure, gcp, huawei-ims, openstack, rackspace)` {
		t.Errorf("Lookup(nope) = %v", err)
	}
}

// plan is Plan with a stand-in for the writers' Measure, which the caller
// supplies (limits imports no format package): their sizes to within a
// few clusters, so the plans do not depend on the writers' details.
func plan(img Image, p *Profile, req Request) Decision {
	if img.Measure == nil {
		full, free := img.AllocatedSize, img.SparsifyFree
		img.Measure = func(f string, opts []string, virtual int64, sparsify bool) (int64, error) {
			alloc := full
			if sparsify {
				alloc = max(0, full-free)
			}
			const cluster = 64 << 10
			switch f {
			case "vpc":
				if len(opts) > 0 && opts[0] == "subformat=fixed" {
					return virtual + 512, nil
				}
				data := min(virtual, (alloc+2*MiB-1)/(2*MiB)*(2*MiB)*2)
				return data + data/(2*MiB)*512 + (virtual+2*MiB-1)/(2*MiB)*4 + 3*512 + MiB, nil
			case "qcow2":
				return alloc + virtual/cluster*8 + alloc/cluster*2 + 4*cluster + virtual/(cluster*cluster/8)*8, nil
			case "vmdk":
				return alloc + virtual/cluster*4 + alloc/cluster*512 + 128<<10, nil
			case "vhdx":
				return min(virtual, (alloc+32*MiB-1)/(32*MiB)*(32*MiB)*2) + virtual/(32*MiB)*8 + 4*MiB, nil
			case "zvhd2", "zvhd":
				return alloc + virtual/(2*MiB)*64 + MiB, nil
			}
			return virtual, nil
		}
	}
	return Plan(img, p, req)
}

func TestPlanSuggestsSparsify(t *testing.T) {
	p := huawei(t)
	for _, tc := range []struct {
		name     string
		img      Image
		req      Request
		path     string // without --sparsify
		suggest  string // the path with it, "" when not suggested
		uploadGB int64
	}{
		// 150 GiB of data goes fast; without its 60 GiB of free space, normal.
		{"fast to normal", Image{Filename: "vm.raw", Format: "raw", VirtualSize: 200 * GiB, FileSize: 200 * GiB, AllocatedSize: 150 * GiB, SparsifyFree: 60 * GiB},
			Request{}, "fast", "normal", 90},
		// 1.2 TiB of data fits no path; 0.9 TiB goes fast.
		{"refused to fast", Image{Filename: "data.qcow2", Format: "qcow2", VirtualSize: 2000 * GiB, FileSize: 1300 * GiB, AllocatedSize: 1300 * GiB, SparsifyFree: 400 * GiB},
			Request{Disk: "data"}, Refused, "fast", 900},
		// Already normal: nothing to suggest.
		{"no change", Image{Filename: "vm.raw", Format: "raw", VirtualSize: 200 * GiB, FileSize: 200 * GiB, AllocatedSize: 20 * GiB, SparsifyFree: 10 * GiB},
			Request{}, "normal", "", 0},
		// Still fast after sparsifying: nothing to suggest.
		{"still fast", Image{Filename: "vm.raw", Format: "raw", VirtualSize: 400 * GiB, FileSize: 400 * GiB, AllocatedSize: 300 * GiB, SparsifyFree: 10 * GiB},
			Request{}, "fast", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := plan(tc.img, p, tc.req)
			if d.Path != tc.path {
				t.Fatalf("path %s, want %s (%+v)", d.Path, tc.path, d.Findings)
			}
			f := find(d.Findings, "huawei-ims.sparsify")
			if tc.suggest == "" {
				if f != nil || d.SparsifyCommands != nil {
					t.Fatalf("unexpected suggestion %+v %v", f, d.SparsifyCommands)
				}
				return
			}
			if f == nil || len(d.SparsifyCommands) != 1 || !strings.Contains(d.SparsifyCommands[0], "diskimg convert --sparsify -f "+tc.img.Format) ||
				!strings.Contains(f.Message, "("+tc.suggest+" import)") || !strings.Contains(f.Message, d.SparsifyCommands[0]) {
				t.Fatalf("suggestion %+v %v", f, d.SparsifyCommands)
			}
			// With --sparsify the plan takes that path and converts.
			req := tc.req
			req.Sparsify = true
			s := plan(tc.img, p, req)
			if s.Path != tc.suggest || s.Conversion == nil || !s.Conversion.Sparsify || s.UploadSize > tc.uploadGB*GiB+GiB || s.UploadSize < tc.uploadGB*GiB {
				t.Fatalf("with --sparsify: %s %+v, upload %d", s.Path, s.Conversion, s.UploadSize)
			}
		})
	}
}

// TestPlanSparsifyConverts: an image that could go as it is is converted
// when the request sparsifies it.
func TestPlanSparsifyConverts(t *testing.T) {
	img := Image{Filename: "vm.qcow2", Format: "qcow2", VirtualSize: 20 * GiB, FileSize: 8 * GiB, AllocatedSize: 8 * GiB, SparsifyFree: 5 * GiB}
	if d := plan(img, huawei(t), Request{}); d.Conversion != nil {
		t.Fatalf("converted without --sparsify: %+v", d.Conversion)
	}
	d := plan(img, huawei(t), Request{Sparsify: true})
	if d.Conversion == nil || !d.Conversion.Sparsify || d.UploadFormat != "qcow2" || d.Commands[0] != "diskimg convert --sparsify -f qcow2 -O qcow2 vm.qcow2 vm-sparse.qcow2" {
		t.Fatalf("%+v %v", d.Conversion, d.Commands)
	}
}
