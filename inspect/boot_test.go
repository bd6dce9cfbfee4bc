package inspect

import (
	"bytes"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/inspect/inspecttest"
)

// TestLinuxBoot builds Linux system disks booting each way and checks
// every boot fact; the first three reports are golden files.
func TestLinuxBoot(t *testing.T) {
	t.Parallel()
	builtinNet := inspecttest.Debian12(false)
	builtinNet.Version = "6.1.0-17-amd64"
	builtinNet.Builtin = append(builtinNet.Builtin, "kernel/drivers/net/virtio_net.ko", "kernel/drivers/block/virtio_blk.ko")
	oldKernel := inspecttest.Kernel{Version: "5.10.0-28-amd64", Modules: []string{"kernel/drivers/scsi/virtio_scsi.ko.xz"}}
	sdBoot := inspecttest.Debian12(true)
	sdBoot.Image = false // in the EFI System partition, mounted at /boot
	for _, tc := range []struct {
		name  string
		disk  inspecttest.LinuxDisk
		check func(t *testing.T, r *Report)
	}{
		{"linux-bios-mbr", inspecttest.LinuxDisk{Table: "mbr", BIOS: true, Linux: inspecttest.Linux{CloudInit: true, Grub: true, Hostname: "bios",
			Kernels: []inspecttest.Kernel{inspecttest.Debian12(true), oldKernel}}},
			func(t *testing.T, r *Report) {
				b, o := r.Boot, r.OS
				if !slices.Equal(b.Modes, []string{"bios"}) || b.BIOS.Loader != "grub" || b.BIOS.Partition != 0 || b.UEFI != nil || o.Boot != "bios" {
					t.Errorf("boot %+v os.Boot %q", b, o.Boot)
				}
				if len(o.Kernels) != 2 || o.Kernels[1] != (Kernel{"6.1.0-18-amd64", "/boot/vmlinuz-6.1.0-18-amd64", true}) ||
					o.Kernels[0] != (Kernel{"5.10.0-28-amd64", "", true}) {
					t.Errorf("kernels %+v", o.Kernels)
				}
				if !o.Virtio || !o.CloudInit || o.BootPartition != 1 || !slices.Equal(o.Bootloaders, []string{"grub"}) {
					t.Errorf("os %+v", o)
				}
				// The old kernel has no modules.dep: its .ko.xz file tells.
				if !slices.Contains(o.Drivers, Driver{"virtio_scsi", "virtio", "storage", "module", "5.10.0-28-amd64"}) ||
					!slices.Contains(o.Drivers, Driver{"hv_netvsc", "hyperv", "network", "module", "6.1.0-18-amd64"}) ||
					!slices.Contains(o.Drivers, Driver{"xen_blkfront", "xen", "storage", "module", "6.1.0-18-amd64"}) {
					t.Errorf("drivers %+v", o.Drivers)
				}
			}},
		{"linux-hybrid-gpt", inspecttest.LinuxDisk{Table: "gpt", BIOS: true, UEFI: true, SeparateBoot: true,
			Linux: inspecttest.Linux{UsrMerged: true, Grub: true, Kernels: []inspecttest.Kernel{builtinNet}}},
			func(t *testing.T, r *Report) {
				b, o := r.Boot, r.OS
				if !slices.Equal(b.Modes, []string{"bios", "uefi"}) || b.BIOS.Partition != 1 || b.UEFI.Partition != 2 ||
					b.UEFI.Fallback != `\EFI\BOOT\BOOTX64.EFI` || o.Boot != "bios+uefi" {
					t.Errorf("boot %+v", b)
				}
				// Kernels come from the /boot partition, modules from the
				// merged /usr.
				if o.Partition != 4 || o.BootPartition != 3 || len(o.Kernels) != 1 || o.Kernels[0].Image != "/boot/vmlinuz-6.1.0-17-amd64" || !o.Kernels[0].Modules {
					t.Errorf("os %+v", o)
				}
				if !o.Virtio || !slices.Contains(o.Drivers, Driver{"virtio_net", "virtio", "network", "builtin", "6.1.0-17-amd64"}) || o.CloudInit {
					t.Errorf("drivers %+v virtio %v cloud-init %v", o.Drivers, o.Virtio, o.CloudInit)
				}
			}},
		{"linux-uefi-sdboot", inspecttest.LinuxDisk{Table: "gpt", UEFI: true,
			ESPFiles: map[string][]byte{"EFI/systemd/systemd-bootx64.efi": inspecttest.PE(inspecttest.MachineAMD64, inspecttest.PE32Plus, [4]uint16{}),
				"loader/loader.conf": []byte("default debian\n"), "vmlinuz-6.1.0-18-amd64": []byte("kernel")},
			Linux: inspecttest.Linux{PersistentNet: true, Kernels: []inspecttest.Kernel{sdBoot},
				Fstab: "/dev/sda2 / ext4 defaults 0 1\nUUID=1234-ABCD /boot vfat defaults 0 1\nLABEL=data /srv ext4 defaults 0 2\n/dev/mapper/vg-home /home ext4 defaults 0 2\n"}},
			func(t *testing.T, r *Report) {
				b, o := r.Boot, r.OS
				if !slices.Equal(b.Modes, []string{"uefi"}) || b.BIOS != nil || len(b.UEFI.Loaders) != 3 {
					t.Errorf("boot %+v", b.UEFI)
				}
				// /boot is the FAT EFI System partition.
				if o.BootPartition != 1 || len(o.Kernels) != 1 || o.Kernels[0].Image != "/boot/vmlinuz-6.1.0-18-amd64" ||
					!slices.Equal(o.Bootloaders, []string{"grub", "systemd-boot"}) || !o.PersistentNetRules {
					t.Errorf("os %+v", o)
				}
				by := map[string]string{}
				for _, e := range o.Fstab {
					by[e.Mount] = e.By
				}
				if by["/"] != "device" || by["/boot"] != "uuid" || by["/srv"] != "label" || by["/home"] != "path" {
					t.Errorf("fstab %+v", o.Fstab)
				}
			}},
		{"no-virtio", inspecttest.LinuxDisk{Table: "mbr", BIOS: true, Linux: inspecttest.Linux{CloudInit: true, Kernels: []inspecttest.Kernel{inspecttest.Debian12(false)}}},
			func(t *testing.T, r *Report) {
				if r.OS.Virtio || slices.ContainsFunc(r.OS.Drivers, func(d Driver) bool { return d.Bus == "virtio" }) {
					t.Errorf("virtio found: %+v", r.OS.Drivers)
				}
			}},
		{"no-loader", inspecttest.LinuxDisk{Table: "mbr", Linux: inspecttest.Linux{Kernels: []inspecttest.Kernel{inspecttest.Debian12(true)}}},
			func(t *testing.T, r *Report) {
				if len(r.Boot.Modes) != 0 || r.OS.Boot != "none" {
					t.Errorf("boot %+v", r.Boot)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := tc.disk.Build(t, t.TempDir(), tc.name+".raw")
			r := inspectFile(t, disk)
			if r.OS == nil || r.OS.Type != "linux" || r.Boot == nil {
				t.Fatalf("os %+v boot %+v findings %v", r.OS, r.Boot, r.Findings)
			}
			tc.check(t, r)
			if strings.HasPrefix(tc.name, "linux-") {
				golden(t, tc.name, r)
			}
		})
	}
}

// TestESPListing compares the FAT directory reader with mtools' listing
// of EFI System partitions in FAT12, FAT16 and FAT32, with long names.
func TestESPListing(t *testing.T) {
	t.Parallel()
	inspecttest.RequireTool(t, "mdir", "mtools")
	files := map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI":                  bytes.Repeat([]byte("x"), 70000), // several clusters
		"EFI/Microsoft/Boot/bootmgfw.efi":       []byte("pe"),
		"EFI/systemd/systemd-bootx64.efi":       []byte("pe"),
		"EFI/Linux/debian-6.1.0-18-amd64.efi":   []byte("uki"),
		"loader/entries/a-long-entry-name.conf": []byte("title x\n"),
	}
	for i := 0; i < 40; i++ { // a directory longer than one cluster
		files["EFI/many/file-with-a-long-name-"+string(rune('a'+i%26))+string(rune('a'+i/26))+".efi"] = []byte("pe")
	}
	if *update {
		writeESPSeed(t)
	}
	for _, fat := range []string{"12", "16", "32"} {
		t.Run("FAT"+fat, func(t *testing.T) {
			fsPath := filepath.Join(t.TempDir(), "esp.fs")
			size, spc := map[string]int64{"12": 8 * mib, "16": 16 * mib, "32": 64 * mib}[fat], map[string]string{"12": "8", "16": "1", "32": "1"}[fat]
			sparseFile(t, fsPath, size)
			run(t, "mkfs.vfat", "-F", fat, "-s", spc, fsPath)
			inspecttest.FATFiles(t, fsPath, files)
			data := formattest.ReadFile(t, fsPath)
			d := memDev(data)
			v, fs, err := parseFATBoot(d, data[:512])
			if err != nil || fs.Version != "FAT"+fat {
				t.Fatalf("%+v %v", fs, err)
			}
			// Every file, walked from the root, and its content.
			var got []string
			var walk func(p string)
			walk = func(p string) {
				names, err := v.readDir(p, 1000)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				for _, n := range names {
					q := strings.TrimPrefix(path.Join(p, n), "/")
					if _, ok := files[q]; ok {
						got = append(got, q)
						b, err := v.readPath(q, 1<<20)
						if err != nil || !bytes.Equal(b, files[q]) {
							t.Errorf("%s: %d bytes, %v", q, len(b), err)
						}
						continue
					}
					walk("/" + q)
				}
			}
			walk("/")
			want := strings.Fields(inspecttest.Run(t, "mdir", "-i", fsPath, "-/", "-b", "::/"))
			for i := range want {
				want[i] = strings.TrimPrefix(want[i], "::/")
			}
			want = slices.DeleteFunc(want, func(s string) bool { _, ok := files[s]; return !ok })
			sort.Strings(got)
			sort.Strings(want)
			if !slices.Equal(got, want) || len(got) != len(files) {
				t.Errorf("files %v\nmdir %v", got, want)
			}
			r := &Report{}
			u, err := espLoaders(d, 1, r)
			if err != nil || u.Fallback != `\EFI\BOOT\BOOTX64.EFI` || !slices.Contains(u.Loaders, `\EFI\Microsoft\Boot\bootmgfw.efi`) ||
				!slices.Contains(u.Loaders, `\EFI\systemd\systemd-bootx64.efi`) || len(r.Findings) != 0 {
				t.Errorf("loaders %+v %v %v", u, err, r.Findings)
			}
		})
	}
}

// writeESPSeed writes testdata/inspect/esp.seed: a small EFI System
// partition with loaders under long names, for the FAT fuzz test.
func writeESPSeed(t *testing.T) {
	p := filepath.Join(t.TempDir(), "esp.fs")
	sparseFile(t, p, 2*mib)
	run(t, "mkfs.vfat", "-i", inspecttest.ESPSerial, p)
	pe := inspecttest.PE(inspecttest.MachineAMD64, inspecttest.PE32Plus, [4]uint16{})
	inspecttest.FATFiles(t, p, map[string][]byte{"EFI/BOOT/BOOTX64.EFI": pe, "EFI/Microsoft/Boot/bootmgfw.efi": pe,
		"EFI/systemd/systemd-bootx64.efi": pe, "vmlinuz": []byte("kernel")})
	data := formattest.ReadFile(t, p)
	formattest.WriteFile(t, filepath.Join("..", "testdata", "inspect", "esp.seed"), sparseEncode(data))
}

// TestBitLocker checks a BitLocker volume header against blkid: the
// -FVE-FS- boot sector is an encrypted volume, never NTFS.
func TestBitLocker(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "bl.fs")
	inspecttest.BitLockerVolume(t, path, 16*mib)
	ref := blkid(t, path)
	data := formattest.ReadFile(t, path)
	r := inspectBytes(t, data)
	fs := r.Filesystem
	if fs == nil || fs.Type != ref["TYPE"] || fs.Version != ref["VERSION"] || !fs.Encrypted || fs.Type != "BitLocker" {
		t.Fatalf("fs %+v, blkid %v", fs, ref)
	}
	// Without its metadata block a -FVE-FS- header is still BitLocker,
	// with a finding; a FAT volume formatted by Windows (MSWIN4.1) is not.
	bad := bytes.Clone(data)
	clear(bad[1<<20 : 1<<20+8])
	if r := inspectBytes(t, bad); r.Filesystem == nil || r.Filesystem.Type != "BitLocker" || !hasFinding(r, "no FVE metadata block") {
		t.Errorf("no metadata: %+v %v", r.Filesystem, r.Findings)
	}
	togo := bytes.Clone(bad)
	copy(togo[3:], "MSWIN4.1")
	if r := inspectBytes(t, togo); r.Filesystem != nil && r.Filesystem.Type == "BitLocker" {
		t.Errorf("MSWIN4.1 without metadata is BitLocker: %+v", r.Filesystem)
	}
}

func TestPrintable(t *testing.T) {
	t.Parallel()
	r := &Report{Format: "raw", PartitionTable: &PartitionTable{Type: "none"}, OS: &OS{Type: "linux", PrettyName: "evil\x1b]0;title\x07\u009b31m", Hostname: "a\rb"}}
	var b strings.Builder
	r.WriteText(&b)
	if strings.ContainsAny(b.String(), "\x1b\x07\r\u009b") || !strings.Contains(b.String(), "evil?]0;title??31m") {
		t.Errorf("text report carries control characters:\n%q", b.String())
	}
}

func TestFstab(t *testing.T) {
	t.Parallel()
	got := fstabEntries([]byte("# comment\n\nUUID=abc / ext4 defaults 0 1\nLABEL=My\\040Disk /mnt/my\\040disk ext4 defaults\n" +
		"PARTUUID=12345678-02 /boot ext2 defaults\n/dev/disk/by-uuid/x /x xfs defaults\n/dev/xvda1 /a ext4\n/dev/nvme0n1p3 /b ext4\n" +
		"/dev/vg0/lv /c ext4\nserver:/export /d nfs\n/swapfile none swap sw\nbroken-line\n"))
	want := []FstabEntry{{"UUID=abc", "/", "ext4", "uuid"}, {"LABEL=My Disk", "/mnt/my disk", "ext4", "label"},
		{"PARTUUID=12345678-02", "/boot", "ext2", "partuuid"}, {"/dev/disk/by-uuid/x", "/x", "xfs", "uuid"},
		{"/dev/xvda1", "/a", "ext4", "device"}, {"/dev/nvme0n1p3", "/b", "ext4", "device"}, {"/dev/vg0/lv", "/c", "ext4", "path"},
		{"server:/export", "/d", "nfs", "none"}, {"/swapfile", "none", "swap", "none"}}
	if !slices.Equal(got, want) {
		t.Errorf("fstab\n%+v\nwant\n%+v", got, want)
	}
	pt := &PartitionTable{Type: "mbr", UUID: "12345678", Partitions: []Partition{
		{Number: 1, Filesystem: &Filesystem{UUID: "AAAA-BBBB", Label: "EFI"}},
		{Number: 2, Name: "", Filesystem: &Filesystem{UUID: "abc", Label: "root"}},
	}}
	for spec, want := range map[string]int{"UUID=aaaa-bbbb": 1, "LABEL=root": 2, "PARTUUID=12345678-02": 2, "/dev/sda1": 1,
		"/dev/nvme0n1p2": 2, "/dev/disk/by-label/EFI": 1, "UUID=missing": 0, "/dev/sda7": 0, "/dev/mapper/x": 0} {
		if got := partitionOf(spec, pt); got != want {
			t.Errorf("partitionOf(%q) = %d, want %d", spec, got, want)
		}
	}
	for in, want := range map[string]string{"kernel/drivers/block/virtio_blk.ko": "virtio_blk", "xen-blkfront.ko.xz": "xen_blkfront",
		"kernel/net/x.ko.zst\n": "x", "modules.order": "", "a.ko.gz": "a"} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}
