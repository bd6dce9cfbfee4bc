package inspect

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	_ "github.com/diskimg/diskimg/format/all"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/inspect/inspecttest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/inspect")

const (
	mib        = 1 << 20
	diskGUID   = "11111111-2222-3333-4444-555555555555"
	espGUID    = "aaaaaaaa-0000-4000-8000-000000000001"
	rootGUID   = "aaaaaaaa-0000-4000-8000-000000000002"
	swapGUID   = "aaaaaaaa-0000-4000-8000-000000000003"
	rootUUID   = "0b5c3a39-7f5e-4d6a-9a0e-3c2f6a1d2e4f"
	swapFSUUID = "5d0c1e0e-52a6-4a3b-8b1e-6c3f2a7d9e10"
)

// linuxTree builds a small merged-/usr Linux root: os-release, a real
// ELF /bin/sh, cloud-init, a kernel whose virtio modules are compressed
// .ko files (no modules.dep), and an fstab naming two filesystems by
// device.
func linuxTree(t testing.TB) string {
	root, _ := inspecttest.Linux{UsrMerged: true, CloudInit: true, Hostname: "gpt-linux", Grub: true,
		Kernels: []inspecttest.Kernel{{Version: "6.1.0-test", Image: true,
			Modules: []string{"kernel/drivers/block/virtio_blk.ko.xz", "kernel/drivers/net/virtio_net.ko.zst", "kernel/fs/ext4/ext4.ko"}}},
		Fstab: "UUID=" + rootUUID + " / ext4 defaults 0 1\n/dev/sda1 /boot/efi vfat defaults 0 2\n/dev/sda3 none swap sw 0 0\ntmpfs /tmp tmpfs defaults 0 0\n",
	}.Tree(t, t.TempDir())
	return root
}

// espFiles are the loaders of an EFI System partition Debian installs.
var espFiles = map[string][]byte{
	"EFI/BOOT/BOOTX64.EFI":   inspecttest.PE(inspecttest.MachineAMD64, inspecttest.PE32Plus, [4]uint16{}),
	"EFI/debian/grubx64.efi": inspecttest.PE(inspecttest.MachineAMD64, inspecttest.PE32Plus, [4]uint16{}),
	"EFI/debian/shimx64.efi": inspecttest.PE(inspecttest.MachineAMD64, inspecttest.PE32Plus, [4]uint16{}),
}

// gptLinuxDisk makes a 192 MiB GPT disk: an EFI System partition (FAT),
// an ext4 root holding linuxTree, and swap. All identifiers are fixed.
func gptLinuxDisk(t testing.TB, dir string) string {
	t.Helper()
	requireTools(t, map[string]string{"sgdisk": "gdisk", "mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools", "mkswap": "util-linux"})
	disk := filepath.Join(dir, "gpt.raw")
	inspecttest.Partition(t, disk, 192*mib, "", "sgdisk", "-U", diskGUID,
		"-n", "1:1M:+32M", "-t", "1:ef00", "-c", "1:EFI", "-u", "1:"+espGUID,
		"-n", "2:0:+128M", "-t", "2:8300", "-c", "2:root", "-u", "2:"+rootGUID,
		"-n", "3:0:0", "-t", "3:8200", "-c", "3:swap", "-u", "3:"+swapGUID)
	esp := filepath.Join(dir, "esp.fs")
	sparseFile(t, esp, 32*mib)
	run(t, "mkfs.vfat", "-F", "16", "-n", "EFI", "-i", "1234abcd", esp)
	inspecttest.FATFiles(t, esp, espFiles)
	root := filepath.Join(dir, "root.fs")
	sparseFile(t, root, 128*mib)
	run(t, "mkfs.ext4", "-q", "-F", "-L", "root", "-U", rootUUID, "-E", "hash_seed="+rootUUID+",root_owner=0:0",
		"-d", linuxTree(t), root)
	swap := filepath.Join(dir, "swap.fs")
	swapSize := int64(192-1-32-128)*mib - 34*512 // what sgdisk leaves before the backup GPT
	sparseFile(t, swap, swapSize&^4095)
	run(t, "mkswap", "-L", "swp", "-U", swapFSUUID, swap)
	place(t, disk, esp, 1*mib)
	place(t, disk, root, 33*mib)
	place(t, disk, swap, 161*mib)
	return disk
}

// dumpe2fs returns `dumpe2fs -h` fields of a file the test made.
func dumpe2fs(t testing.TB, path string) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	for _, l := range strings.Split(run(t, "dumpe2fs", "-h", path), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				m[k] = n
			}
		}
	}
	return m
}

func checkFS(t *testing.T, what string, got *Filesystem, ref map[string]string) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: no filesystem detected, blkid says %v", what, ref)
	}
	typ := ref["TYPE"]
	if got.Type != typ {
		t.Errorf("%s: type %q, blkid %q", what, got.Type, typ)
	}
	if got.Label != ref["LABEL"] {
		t.Errorf("%s: label %q, blkid %q", what, got.Label, ref["LABEL"])
	}
	if !strings.EqualFold(got.UUID, ref["UUID"]) {
		t.Errorf("%s: uuid %q, blkid %q", what, got.UUID, ref["UUID"])
	}
}

func TestGPTLinux(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	disk := gptLinuxDisk(t, dir)
	r := inspectFile(t, disk)
	pt := r.PartitionTable
	if pt.Type != "gpt" || pt.UUID != diskGUID || len(pt.Partitions) != 3 {
		t.Fatalf("partition table %+v", pt)
	}
	checkTable(t, disk, r)
	if pt.Partitions[0].TypeName != "EFI System" || pt.Partitions[1].TypeName != "Linux filesystem" || pt.Partitions[2].TypeName != "Linux swap" {
		t.Errorf("type names %+v", pt.Partitions)
	}
	checkFS(t, "esp", pt.Partitions[0].Filesystem, blkid(t, filepath.Join(dir, "esp.fs")))
	checkFS(t, "root", pt.Partitions[1].Filesystem, blkid(t, filepath.Join(dir, "root.fs")))
	checkFS(t, "swap", pt.Partitions[2].Filesystem, blkid(t, filepath.Join(dir, "swap.fs")))

	// ext4 numbers from dumpe2fs.
	d := dumpe2fs(t, filepath.Join(dir, "root.fs"))
	fs := pt.Partitions[1].Filesystem
	bs := d["Block size"]
	if fs.BlockSize != bs || fs.Size != d["Block count"]*bs || fs.Free != d["Free blocks"]*bs ||
		fs.Used != (d["Block count"]-d["Free blocks"])*bs || fs.InodesTotal != d["Inode count"] ||
		fs.InodesUsed != d["Inode count"]-d["Free inodes"] {
		t.Errorf("ext4 %+v, dumpe2fs %v", fs, d)
	}
	// FAT numbers from fsck.fat: "N files, used/total clusters".
	requireTool(t, "fsck.fat", "dosfstools")
	m := regexp.MustCompile(`(\d+)/(\d+) clusters`).FindStringSubmatch(run(t, "fsck.fat", "-n", filepath.Join(dir, "esp.fs")))
	used, _ := strconv.ParseInt(m[1], 10, 64)
	total, _ := strconv.ParseInt(m[2], 10, 64)
	esp := pt.Partitions[0].Filesystem
	if esp.Version != "FAT16" || esp.Used != used*esp.BlockSize || esp.Used+esp.Free != total*esp.BlockSize {
		t.Errorf("fat %+v, fsck.fat %d/%d clusters", esp, used, total)
	}
	if sw := pt.Partitions[2].Filesystem; sw.Size != (pt.Partitions[2].Size&^4095) || sw.BlockSize != 4096 {
		t.Errorf("swap %+v", sw)
	}

	o := r.OS
	if o == nil {
		t.Fatalf("no OS found; findings %v", r.Findings)
	}
	arch, bits := hostArch(t)
	if o.Type != "linux" || o.Distro != "debian" || o.Version != "12" || o.PrettyName != "Debian GNU/Linux 12 (bookworm)" ||
		o.Arch != arch || o.Bits != bits || o.Boot != "uefi" || !o.CloudInit || !o.Virtio || o.Partition != 2 || o.BootPartition != 2 ||
		o.Hostname != "gpt-linux" || !slices.Equal(o.Bootloaders, []string{"grub"}) || len(o.Kernels) != 1 || len(o.Drivers) != 2 {
		t.Errorf("os %+v, want arch %s/%d", o, arch, bits)
	}
	if len(r.Findings) != 0 {
		t.Errorf("findings on a clean disk: %v", r.Findings)
	}
	golden(t, "gpt-linux", r)
}

// hostArch reads the architecture of /bin/true, which linuxTree copies.
func hostArch(t testing.TB) (string, int) {
	b, err := os.ReadFile("/bin/true")
	if err != nil || len(b) < elfHeaderRead {
		t.Fatal("cannot read /bin/true")
	}
	return elfArch(b[:elfHeaderRead])
}

// golden compares r's JSON and text output with testdata/inspect/name.*;
// -update rewrites them. allocated-size depends on the host filesystem
// and is blanked.
func golden(t *testing.T, name string, r *Report) {
	t.Helper()
	c := *r
	c.AllocatedSize = 0
	var js, txt bytes.Buffer
	if err := c.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	for ext, got := range map[string][]byte{".json": js.Bytes(), ".txt": txt.Bytes()} {
		path := filepath.Join("..", "testdata", "inspect", name+ext)
		if *update {
			formattest.WriteFile(t, path, got)
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run with -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from golden file:\n%s", path, got)
		}
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
}

// TestFormats inspects the GPT disk converted to every registered format:
// the report must be the same as for the raw disk.
func TestFormats(t *testing.T) {
	t.Parallel()
	dir := formattest.QemuDir(t)
	disk := gptLinuxDisk(t, dir)
	want := inspectFile(t, disk)
	want.Format, want.AllocatedSize = "", 0
	// Formats qemu-img cannot write (our own extensions) are skipped.
	var qemuFormats []string
	for _, l := range strings.Split(string(formattest.Qemu(t, "--help")), "\n") {
		if rest, ok := strings.CutPrefix(l, "Supported formats:"); ok {
			qemuFormats = strings.Fields(rest)
		}
	}
	for _, f := range format.Formats() {
		t.Run(f.Name, func(t *testing.T) {
			if !slices.Contains(qemuFormats, f.Name) {
				t.Skipf("qemu-img cannot write %s", f.Name)
			}
			path := disk
			if f.Name != "raw" {
				path = filepath.Join(dir, "disk."+f.Name)
				var extra []string
				if f.Name == "vpc" {
					extra = []string{"-o", "force_size=on"}
				}
				formattest.Convert(t, disk, path, f.Name, extra...)
			}
			got := inspectFile(t, path)
			if got.Format != f.Name {
				t.Errorf("format %q", got.Format)
			}
			got.Format, got.AllocatedSize = "", 0
			a, _ := json.Marshal(got)
			b, _ := json.Marshal(want)
			if !bytes.Equal(a, b) {
				t.Errorf("%s report differs from raw:\n%s\n%s", f.Name, a, b)
			}
		})
	}
}

// checkTable compares r's partitions with `sfdisk --json` of disk.
func checkTable(t *testing.T, disk string, r *Report) {
	t.Helper()
	requireTool(t, "sfdisk", "fdisk")
	var sf struct {
		PartitionTable struct {
			Label      string `json:"label"`
			ID         string `json:"id"`
			Partitions []struct {
				Node     string `json:"node"`
				Start    int64  `json:"start"`
				Size     int64  `json:"size"`
				Type     string `json:"type"`
				UUID     string `json:"uuid"`
				Name     string `json:"name"`
				Bootable bool   `json:"bootable"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal([]byte(run(t, "sfdisk", "--json", disk)), &sf); err != nil {
		t.Fatal(err)
	}
	pt := r.PartitionTable
	if pt.Type != map[string]string{"dos": "mbr", "gpt": "gpt"}[sf.PartitionTable.Label] {
		t.Errorf("table type %q, sfdisk %q", pt.Type, sf.PartitionTable.Label)
	}
	if id := strings.TrimPrefix(sf.PartitionTable.ID, "0x"); !strings.EqualFold(id, pt.UUID) {
		t.Errorf("disk id %q, sfdisk %q", pt.UUID, id)
	}
	if len(pt.Partitions) != len(sf.PartitionTable.Partitions) {
		t.Fatalf("%d partitions, sfdisk %d", len(pt.Partitions), len(sf.PartitionTable.Partitions))
	}
	for i, s := range sf.PartitionTable.Partitions {
		p := pt.Partitions[i]
		num, _ := strconv.Atoi(s.Node[len(disk):])
		typ := p.Type
		if pt.Type == "mbr" {
			typ = strings.TrimPrefix(typ, "0x")
			typ = strings.TrimPrefix(typ, "0")
		}
		if p.Number != num || p.Start != s.Start*512 || p.Size != s.Size*512 || !strings.EqualFold(typ, s.Type) ||
			!strings.EqualFold(p.UUID, s.UUID) || p.Name != s.Name || p.Bootable != s.Bootable {
			t.Errorf("partition %+v, sfdisk %+v", p, s)
		}
	}
}

const (
	xfsUUIDFixed   = "6e4a2b1c-3d5f-4a7b-9c8d-0e1f2a3b4c5d"
	btrfsUUIDFixed = "7f5b3c2d-4e6a-4b8c-8d9e-1f2a3b4c5d6e"
	luksUUIDFixed  = "8a6c4d3e-5f7b-4c9d-9eaf-2a3b4c5d6e7f"
)

// mbrMiscDisk makes a 600 MiB MBR disk with xfs, ntfs (bootable), btrfs
// and an extended partition holding exfat and LUKS2 logical partitions.
// It returns the disk and the filesystem files, by partition number.
func mbrMiscDisk(t testing.TB, dir string) (string, map[int]string) {
	t.Helper()
	requireTools(t, map[string]string{"sfdisk": "fdisk", "mkfs.xfs": "xfsprogs", "mkfs.ntfs": "ntfs-3g",
		"mkfs.btrfs": "btrfs-progs", "mkfs.exfat": "exfatprogs", "cryptsetup": "cryptsetup-bin"})
	disk := filepath.Join(dir, "mbr.raw")
	sparseFile(t, disk, 600*mib)
	script := "label: dos\nlabel-id: 0x12345678\n" +
		"start=2048, size=614400, type=83\n" +
		"start=616448, size=131072, type=7, bootable\n" +
		"start=747520, size=262144, type=83\n" +
		"start=1009664, type=5\n" +
		"size=32768, type=7\n" +
		"size=65536, type=83\n"
	cmd := []string{"--quiet", disk}
	c := execWithStdin(t, script, "sfdisk", cmd...)
	_ = c
	var sf struct {
		PartitionTable struct {
			Partitions []struct {
				Start, Size int64
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal([]byte(run(t, "sfdisk", "--json", disk)), &sf); err != nil {
		t.Fatal(err)
	}
	files := map[int]string{}
	mk := func(num int, args func(path string)) {
		p := sf.PartitionTable.Partitions[num-1]
		path := filepath.Join(dir, "p"+strconv.Itoa(num)+".fs")
		sparseFile(t, path, p.Size*512)
		args(path)
		place(t, disk, path, p.Start*512)
		files[num] = path
	}
	mk(1, func(p string) { run(t, "mkfs.xfs", "-q", "-f", "-L", "xlab", "-m", "uuid="+xfsUUIDFixed, p) })
	mk(2, func(p string) { run(t, "mkfs.ntfs", "-q", "-F", "-f", "-L", "nlab", p) })
	mk(3, func(p string) { run(t, "mkfs.btrfs", "-q", "-f", "-L", "blab", "-U", btrfsUUIDFixed, p) })
	mk(5, func(p string) { run(t, "mkfs.exfat", "-L", "elab", p) })
	mk(6, func(p string) {
		key := filepath.Join(dir, "key")
		os.WriteFile(key, []byte("secret"), 0o600)
		run(t, "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
			"--uuid", luksUUIDFixed, "--label", "llab", "--key-file", key, p)
	})
	return disk, files
}

func TestMBRMisc(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	disk, files := mbrMiscDisk(t, dir)
	r := inspectFile(t, disk)
	checkTable(t, disk, r)
	byNum := map[int]*Partition{}
	for i := range r.PartitionTable.Partitions {
		byNum[r.PartitionTable.Partitions[i].Number] = &r.PartitionTable.Partitions[i]
	}
	for num, path := range files {
		checkFS(t, "partition "+strconv.Itoa(num), byNum[num].Filesystem, blkid(t, path))
	}
	if byNum[4].Filesystem != nil {
		t.Errorf("extended partition has a filesystem: %+v", byNum[4].Filesystem)
	}
	// xfs counters from xfs_db.
	x := map[string]int64{}
	for _, l := range strings.Split(run(t, "xfs_db", "-r", "-c", "sb 0", "-c", "print blocksize dblocks fdblocks icount ifree", files[1]), "\n") {
		if k, v, ok := strings.Cut(l, " = "); ok {
			x[k], _ = strconv.ParseInt(v, 10, 64)
		}
	}
	xfs := byNum[1].Filesystem
	if xfs.BlockSize != x["blocksize"] || xfs.Size != x["dblocks"]*x["blocksize"] || xfs.Free != x["fdblocks"]*x["blocksize"] ||
		xfs.InodesUsed != x["icount"]-x["ifree"] || xfs.InodesTotal < x["icount"] {
		t.Errorf("xfs %+v, xfs_db %v", xfs, x)
	}
	// ntfs clusters from ntfsinfo.
	ni := run(t, "ntfsinfo", "-m", files[2])
	freeC := regexp.MustCompile(`Free Clusters: (\d+)`).FindStringSubmatch(ni)
	totC := regexp.MustCompile(`Volume Size in Clusters: (\d+)`).FindStringSubmatch(ni)
	nt := byNum[2].Filesystem
	if fc, _ := strconv.ParseInt(freeC[1], 10, 64); nt.Free != fc*nt.BlockSize {
		t.Errorf("ntfs free %d, ntfsinfo %s clusters of %d", nt.Free, freeC[1], nt.BlockSize)
	}
	if tc, _ := strconv.ParseInt(totC[1], 10, 64); nt.Used+nt.Free != tc*nt.BlockSize {
		t.Errorf("ntfs size %d+%d, ntfsinfo %s clusters", nt.Used, nt.Free, totC[1])
	}
	// btrfs from dump-super.
	ds := run(t, "btrfs", "inspect-internal", "dump-super", files[3])
	tb := regexp.MustCompile(`(?m)^total_bytes\s+(\d+)`).FindStringSubmatch(ds)
	bu := regexp.MustCompile(`(?m)^bytes_used\s+(\d+)`).FindStringSubmatch(ds)
	bt := byNum[3].Filesystem
	if strconv.FormatInt(bt.Size, 10) != tb[1] || strconv.FormatInt(bt.Used, 10) != bu[1] {
		t.Errorf("btrfs %+v, dump-super total %s used %s", bt, tb[1], bu[1])
	}
	// exfat from dump.exfat.
	de := run(t, "dump.exfat", files[5])
	ef := regexp.MustCompile(`Free Clusters:\s+(\d+)`).FindStringSubmatch(de)
	ex := byNum[5].Filesystem
	if fc, _ := strconv.ParseInt(ef[1], 10, 64); ex.Free != fc*ex.BlockSize {
		t.Errorf("exfat free %d, dump.exfat %s clusters", ex.Free, ef[1])
	}
	if l := byNum[6].Filesystem; !l.Encrypted || l.Version != "LUKS2" || l.UUID != luksUUIDFixed {
		t.Errorf("luks %+v", l)
	}
	if !byNum[2].Bootable {
		t.Errorf("partition 2 not bootable")
	}
	if r.OS != nil {
		t.Errorf("OS found on a disk without one: %+v", r.OS)
	}
	if len(r.Findings) != 0 {
		t.Errorf("findings on a clean disk: %v", r.Findings)
	}
}

func execWithStdin(t testing.TB, stdin, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
	return string(out)
}
