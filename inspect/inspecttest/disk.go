package inspecttest

import (
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// Fixed identifiers of the disks built here.
const (
	DiskGUID  = "5b6c2c2e-0d5e-4c6f-9a55-6a1d1f0e1001"
	DiskID    = "20212021" // MBR disk signature
	RootUUID  = "0b5c3a39-7f5e-4d6a-9a0e-3c2f6a1d2e4f"
	BootUUID  = "1c6d4b4a-8a6f-4e7b-8b1f-4d3a7b2e3f50"
	ESPSerial = "1234abcd" // the ESP's volume ID, 1234-ABCD
)

// PartGUID is the fixed GUID of GPT partition n.
func PartGUID(n int) string { return fmt.Sprintf("aaaaaaaa-0000-4000-8000-%012d", n) }

// LinuxDisk describes a Linux system disk.
type LinuxDisk struct {
	Table string // mbr or gpt
	// BIOS puts GRUB's boot code in the MBR and its core image after the
	// MBR (MBR disks) or in a BIOS boot partition (GPT).
	BIOS bool
	// UEFI adds an EFI System partition with \EFI\BOOT\BOOTX64.EFI and
	// \EFI\debian\grubx64.efi, mounted at /boot/efi.
	UEFI bool
	// ESPFiles are added to the EFI System partition (a systemd-boot
	// layout keeps the kernels there).
	ESPFiles map[string][]byte
	// SeparateBoot puts /boot on its own ext4 partition.
	SeparateBoot bool
	Linux        Linux
}

// part is one partition to lay out.
type part struct {
	name    string
	size    int64 // MiB
	gptType string
	mbrType string
	file    string // filesystem image placed in it; "" leaves it empty
}

// Build writes the disk to dir/name and returns its path. Partitions come
// in this order: BIOS boot (GPT with BIOS), EFI System, /boot, root.
func (d LinuxDisk) Build(t testing.TB, dir, name string) string {
	t.Helper()
	RequireTool(t, "mkfs.ext4", "e2fsprogs")
	l := d.Linux
	if l.Fstab == "" {
		l.Fstab = "# <file system> <mount point> <type> <options> <dump> <pass>\nUUID=" + RootUUID + " / ext4 errors=remount-ro 0 1\n"
		if d.SeparateBoot {
			l.Fstab += "UUID=" + BootUUID + " /boot ext4 defaults 0 2\n"
		}
		if d.UEFI {
			l.Fstab += "UUID=1234-ABCD /boot/efi vfat umask=0077 0 1\n"
		}
		l.Fstab += "proc /proc proc defaults 0 0\n"
	}
	work := filepath.Join(dir, name+".parts")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	root, boot := l.Tree(t, work)
	var parts []part
	if d.BIOS && d.Table == "gpt" {
		core := filepath.Join(work, "core.img")
		grubCore(t, core)
		parts = append(parts, part{name: "BIOS boot", size: 1, gptType: "ef02", file: core})
	}
	if d.UEFI {
		esp := filepath.Join(work, "esp.fs")
		files := map[string][]byte{
			`EFI/BOOT/BOOTX64.EFI`:   PE(MachineAMD64, PE32Plus, [4]uint16{}),
			`EFI/debian/grubx64.efi`: PE(MachineAMD64, PE32Plus, [4]uint16{}),
			`EFI/debian/grub.cfg`:    []byte("search.fs_uuid " + RootUUID + " root\n"),
		}
		for n, b := range d.ESPFiles {
			files[n] = b
		}
		ESP(t, esp, 16*MiB, files)
		parts = append(parts, part{name: "EFI System", size: 16, gptType: "ef00", mbrType: "ef", file: esp})
	}
	if d.SeparateBoot {
		bootTree := filepath.Join(work, "boot-tree")
		if err := os.Rename(boot, bootTree); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(boot, 0o755); err != nil {
			t.Fatal(err)
		}
		bfs := filepath.Join(work, "boot.fs")
		Ext4(t, bfs, 32*MiB, bootTree, "boot", BootUUID)
		parts = append(parts, part{name: "boot", size: 32, gptType: "8300", mbrType: "83", file: bfs})
	}
	rfs := filepath.Join(work, "root.fs")
	Ext4(t, rfs, 64*MiB, root, "root", RootUUID)
	parts = append(parts, part{name: "root", size: 64, gptType: "8300", mbrType: "83", file: rfs})
	disk := filepath.Join(dir, name)
	layout(t, disk, d.Table, parts)
	if d.BIOS {
		WriteAt(t, disk, GrubBootCode(t), 0)
		if d.Table == "mbr" {
			core := filepath.Join(work, "core.img")
			grubCore(t, core)
			Place(t, disk, core, 512)
		}
	}
	return disk
}

// layout partitions disk (created here, sized to fit) and places each
// partition's filesystem image. The first partition starts at 1 MiB; on
// MBR disks the last one is marked active.
func layout(t testing.TB, disk, table string, parts []part) {
	t.Helper()
	var total int64 = 2 // the first MiB, and room for the backup GPT
	for _, p := range parts {
		total += p.size
	}
	var tool, script string
	var args []string
	if table == "gpt" {
		RequireTool(t, "sgdisk", "gdisk")
		tool, args = "sgdisk", []string{"-U", DiskGUID}
		for i, p := range parts {
			n := i + 1
			args = append(args, "-n", fmt.Sprintf("%d:0:+%dM", n, p.size), "-t", fmt.Sprintf("%d:%s", n, p.gptType),
				"-c", fmt.Sprintf("%d:%s", n, p.name), "-u", fmt.Sprintf("%d:%s", n, PartGUID(n)))
		}
	} else {
		RequireTool(t, "sfdisk", "fdisk")
		tool, args = "sfdisk", []string{"--quiet"}
		script = "label: dos\nlabel-id: 0x" + DiskID + "\n"
		for i, p := range parts {
			script += fmt.Sprintf("size=%dMiB, type=%s", p.size, p.mbrType)
			if i == len(parts)-1 {
				script += ", bootable"
			}
			script += "\n"
		}
	}
	Partition(t, disk, total*MiB, script, tool, args...)
	off := int64(MiB)
	for _, p := range parts {
		if p.file != "" {
			Place(t, disk, p.file, off)
		}
		off += p.size * MiB
	}
}

// Ext4 makes an ext4 filesystem of size bytes at path from the tree.
func Ext4(t testing.TB, path string, size int64, tree, label, uuid string) {
	t.Helper()
	RequireTool(t, "mkfs.ext4", "e2fsprogs")
	SparseFile(t, path, size)
	Run(t, "mkfs.ext4", "-q", "-F", "-L", label, "-U", uuid, "-E", "hash_seed="+uuid+",root_owner=0:0", "-d", tree, path)
}

// ESP makes a FAT EFI System partition of size bytes at path holding
// files (paths with /).
func ESP(t testing.TB, path string, size int64, files map[string][]byte) {
	t.Helper()
	RequireTool(t, "mkfs.vfat", "dosfstools")
	SparseFile(t, path, size)
	Run(t, "mkfs.vfat", "-n", "ESP", "-i", ESPSerial, path)
	FATFiles(t, path, files)
}

// FATFiles writes files (paths with /) into the FAT filesystem at path
// with mtools, making their directories.
func FATFiles(t testing.TB, path string, files map[string][]byte) {
	t.Helper()
	RequireTool(t, "mcopy", "mtools")
	src := path + ".files"
	formattest.WriteFiles(t, src, files)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	made := map[string]bool{}
	for _, n := range names {
		parts := strings.Split(n, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/")
			if !made[d] {
				mtools(t, "mmd", "-i", path, "::/"+d)
				made[d] = true
			}
		}
		mtools(t, "mcopy", "-i", path, filepath.Join(src, filepath.FromSlash(n)), "::/"+n)
	}
}

func mtools(t testing.TB, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// grubDir holds GRUB's BIOS boot code and modules (Debian's grub-pc-bin).
const grubDir = "/usr/lib/grub/i386-pc"

// GrubBootCode returns the boot code of GRUB's boot.img: the first 440
// bytes, which grub-install writes over the MBR's.
func GrubBootCode(t testing.TB) []byte {
	t.Helper()
	RequireTool(t, "grub-mkimage", "grub-pc-bin")
	b, err := os.ReadFile(filepath.Join(grubDir, "boot.img"))
	if err != nil || len(b) < 440 {
		t.Fatalf("GRUB boot.img: %v", err)
	}
	return b[:440]
}

// grubCore writes GRUB's BIOS core image to path.
func grubCore(t testing.TB, path string) {
	t.Helper()
	RequireTool(t, "grub-mkimage", "grub-pc-bin")
	Run(t, "grub-mkimage", "-O", "i386-pc", "-d", grubDir, "-o", path, "-p", "/boot/grub", "biosdisk", "part_msdos", "part_gpt", "ext2")
}

// WindowsDisk describes a Windows system disk booting with BIOS from an
// MBR disk.
type WindowsDisk struct {
	Windows Windows
	// KernelVersion is ntoskrnl.exe's file version.
	KernelVersion [4]uint16
	// BitLocker encrypts the Windows volume: a System Reserved NTFS
	// partition boots it, and the OS cannot be read.
	BitLocker bool
}

// Build writes the disk to dir/name and returns its path. It needs
// ntfs-3g's FUSE mount to write files into NTFS, and skips t without it.
func (d WindowsDisk) Build(t testing.TB, dir, name string) string {
	t.Helper()
	work := filepath.Join(dir, name+".parts")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	sys := map[string][]byte{
		"Windows/System32/config/SOFTWARE": d.Windows.Software(),
		"Windows/System32/config/SYSTEM":   d.Windows.System(),
		"Windows/System32/kernel32.dll":    PE(MachineAMD64, PE32Plus, [4]uint16{}),
		"Windows/System32/ntoskrnl.exe":    PE(MachineAMD64, PE32Plus, d.KernelVersion),
		"bootmgr":                          []byte("not really bootmgr\n"),
	}
	var parts []part
	if d.BitLocker {
		reserved := filepath.Join(work, "reserved.fs")
		NTFS(t, reserved, 32*MiB, "System Reserved", map[string][]byte{"bootmgr": sys["bootmgr"], "Boot/BCD": []byte("regf")})
		bl := filepath.Join(work, "bitlocker.fs")
		BitLockerVolume(t, bl, 64*MiB)
		parts = []part{{name: "reserved", size: 32, mbrType: "7", file: reserved}, {name: "C", size: 64, mbrType: "7", file: bl}}
	} else {
		c := filepath.Join(work, "c.fs")
		NTFS(t, c, 64*MiB, "Windows", sys)
		parts = []part{{name: "C", size: 64, mbrType: "7", file: c}}
	}
	disk := filepath.Join(dir, name)
	layout(t, disk, "mbr", parts)
	WriteAt(t, disk, WindowsMBRCode(), 0)
	return disk
}

// NTFSSerial is the volume serial number of the NTFS volumes made here.
const NTFSSerial = "2121212121212121"

// NTFS makes an NTFS filesystem of size bytes at path holding files,
// written through an ntfs-3g FUSE mount (t is skipped where FUSE mounts
// are not possible); mkntfsArgs are added to mkntfs's.
func NTFS(t testing.TB, path string, size int64, label string, files map[string][]byte, mkntfsArgs ...string) {
	t.Helper()
	RequireTools(t, map[string]string{"mkntfs": "ntfs-3g", "ntfs-3g": "ntfs-3g"})
	SparseFile(t, path, size)
	Run(t, "mkntfs", append(append([]string{"-q", "-F", "-f", "-L", label}, mkntfsArgs...), path)...)
	Run(t, "ntfslabel", "--new-serial="+NTFSSerial, path)
	mnt := path + ".mnt"
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ntfs-3g", path, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount NTFS with FUSE here: %v %s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v %s", err, out)
		}
	}()
	formattest.WriteFiles(t, mnt, files)
}

// BitLocker volume header fields (libbde's BitLocker Drive Encryption
// format).
const (
	bdeGUID         = "\x3b\xd6\x67\x49\x29\x2e\xd8\x4a\x83\x99\xf6\xa3\x39\xe3\xd0\x01"
	bdeMetadataOff  = 1 * MiB
	BitLockerFVEVer = 2
)

// BitLockerVolume writes a BitLocker (Windows 7 and later) volume of
// size bytes: the -FVE-FS- boot sector, the first FVE metadata block at
// 1 MiB, and bytes that look encrypted where NTFS would start.
func BitLockerVolume(t testing.TB, path string, size int64) {
	t.Helper()
	SparseFile(t, path, size)
	bs := make([]byte, 512)
	copy(bs, "\xeb\x58\x90-FVE-FS-")
	binary.LittleEndian.PutUint16(bs[11:], 512) // bytes per sector
	bs[13] = 8                                  // sectors per cluster
	bs[21] = 0xf8                               // media descriptor
	binary.LittleEndian.PutUint64(bs[0x28:], uint64(size/512))
	copy(bs[71:], "NO NAME    FAT32   ")
	copy(bs[160:], bdeGUID)
	binary.LittleEndian.PutUint64(bs[176:], bdeMetadataOff)
	binary.LittleEndian.PutUint64(bs[184:], bdeMetadataOff+64<<10)
	binary.LittleEndian.PutUint64(bs[192:], bdeMetadataOff+128<<10)
	bs[510], bs[511] = 0x55, 0xaa
	WriteAt(t, path, bs, 0)
	meta := make([]byte, 64)
	copy(meta, "-FVE-FS-")
	binary.LittleEndian.PutUint16(meta[8:], 64)
	binary.LittleEndian.PutUint16(meta[10:], BitLockerFVEVer)
	WriteAt(t, path, meta, bdeMetadataOff)
	noise := make([]byte, 64<<10)
	rand.New(rand.NewSource(21)).Read(noise)
	WriteAt(t, path, noise, 4096)
}

// tables holds the first and last MiB of the disks partitioned here, by
// the partitioning command and disk size: sgdisk sleeps 1 s and sfdisk
// 250 ms after writing, and tests ask for the same tables many times,
// often at once.
var (
	tablesMu sync.Mutex
	tables   = map[string]*partitionTable{}
)

type partitionTable struct {
	once sync.Once
	ends [2][]byte // the first and last MiB; nil when the tool failed
}

// Partition makes disk, a sparse file of size bytes, and partitions it
// with `tool args... disk` (stdin its input), or copies what the same
// command wrote before.
func Partition(t testing.TB, disk string, size int64, stdin, tool string, args ...string) {
	t.Helper()
	SparseFile(t, disk, size)
	key := fmt.Sprint(size, stdin, tool, args)
	tablesMu.Lock()
	pt := tables[key]
	if pt == nil {
		pt = &partitionTable{}
		tables[key] = pt
	}
	tablesMu.Unlock()
	ran := false
	pt.once.Do(func() {
		ran = true
		RunStdin(t, stdin, tool, append(args, disk)...)
		f, err := os.Open(disk)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var ends [2][]byte
		for i, off := range []int64{0, size - MiB} {
			ends[i] = make([]byte, MiB)
			if _, err := f.ReadAt(ends[i], off); err != nil {
				t.Fatal(err)
			}
		}
		pt.ends = ends
	})
	if ran {
		return
	}
	if pt.ends[0] == nil {
		t.Fatalf("%s %v failed in another test", tool, args)
	}
	for i, off := range []int64{0, size - MiB} {
		writeNonZero(t, disk, pt.ends[i], off, 4096)
	}
}
