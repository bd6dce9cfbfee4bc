package inspect

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/inspect/inspecttest"
)

// TestWholeDisk inspects filesystems made directly on a disk (no
// partition table) and checks them against blkid and the making tools.
func TestWholeDisk(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, tool, pkg string
		size            int64
		mk              func(t *testing.T, path string)
		check           func(t *testing.T, path string, fs *Filesystem)
	}{
		{"ext2", "mkfs.ext2", "e2fsprogs", 16 * mib, func(t *testing.T, p string) {
			run(t, "mkfs.ext2", "-q", "-F", "-L", "e2", p)
		}, checkExt},
		{"ext3", "mkfs.ext3", "e2fsprogs", 16 * mib, func(t *testing.T, p string) {
			run(t, "mkfs.ext3", "-q", "-F", "-L", "e3", p)
		}, checkExt},
		{"ext4", "mkfs.ext4", "e2fsprogs", 24 * mib, func(t *testing.T, p string) {
			run(t, "mkfs.ext4", "-q", "-F", "-L", "e4", "-b", "4096", p)
		}, checkExt},
		{"xfs", "mkfs.xfs", "xfsprogs", 320 * mib, func(t *testing.T, p string) {
			run(t, "mkfs.xfs", "-q", "-f", "-L", "wholexfs", p)
		}, checkXFS},
		{"fat12", "mkfs.vfat", "dosfstools", 4 * mib, func(t *testing.T, p string) {
			run(t, "mkfs.vfat", "-F", "12", "-n", "SMALL", p)
		}, checkFAT("FAT12")},
		{"fat32", "mkfs.vfat", "dosfstools", 64 * mib, func(t *testing.T, p string) {
			run(t, "mkfs.vfat", "-F", "32", "-s", "1", "-n", "BIG32", p)
		}, checkFAT("FAT32")},
		{"iso9660", "genisoimage", "genisoimage", 0, func(t *testing.T, p string) {
			src := t.TempDir()
			formattest.WriteFile(t, filepath.Join(src, "readme.txt"), []byte(strings.Repeat("iso ", 5000)))
			run(t, "genisoimage", "-quiet", "-V", "CDLABEL", "-o", p, src)
		}, checkISO},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			requireTool(t, c.tool, c.pkg)
			path := filepath.Join(t.TempDir(), c.name+".img")
			if c.size > 0 {
				sparseFile(t, path, c.size)
			}
			c.mk(t, path)
			r := inspectFile(t, path)
			if r.PartitionTable == nil || r.PartitionTable.Type != "none" || len(r.PartitionTable.Partitions) != 0 {
				t.Errorf("partition table %+v", r.PartitionTable)
			}
			checkFS(t, c.name, r.Filesystem, blkid(t, path))
			if r.Filesystem != nil {
				c.check(t, path, r.Filesystem)
			}
			if len(r.Findings) != 0 {
				t.Errorf("findings: %v", r.Findings)
			}
		})
	}
}

func checkExt(t *testing.T, path string, fs *Filesystem) {
	d := dumpe2fs(t, path)
	bs := d["Block size"]
	if fs.BlockSize != bs || fs.Size != d["Block count"]*bs || fs.Free != d["Free blocks"]*bs ||
		fs.InodesTotal != d["Inode count"] || fs.InodesUsed != d["Inode count"]-d["Free inodes"] {
		t.Errorf("%+v, dumpe2fs %v", fs, d)
	}
}

func checkXFS(t *testing.T, path string, fs *Filesystem) {
	x := map[string]int64{}
	for _, l := range strings.Split(run(t, "xfs_db", "-r", "-c", "sb 0", "-c", "print blocksize dblocks fdblocks icount ifree", path), "\n") {
		if k, v, ok := strings.Cut(l, " = "); ok {
			x[k], _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if fs.BlockSize != x["blocksize"] || fs.Size != x["dblocks"]*x["blocksize"] || fs.Free != x["fdblocks"]*x["blocksize"] ||
		fs.InodesUsed != x["icount"]-x["ifree"] {
		t.Errorf("%+v, xfs_db %v", fs, x)
	}
}

func checkFAT(version string) func(t *testing.T, path string, fs *Filesystem) {
	return func(t *testing.T, path string, fs *Filesystem) {
		requireTool(t, "fsck.fat", "dosfstools")
		m := regexp.MustCompile(`(\d+)/(\d+) clusters`).FindStringSubmatch(run(t, "fsck.fat", "-n", path))
		if m == nil {
			t.Fatal("fsck.fat printed no cluster counts")
		}
		used, _ := strconv.ParseInt(m[1], 10, 64)
		total, _ := strconv.ParseInt(m[2], 10, 64)
		if fs.Version != version || fs.Used != used*fs.BlockSize || fs.Used+fs.Free != total*fs.BlockSize {
			t.Errorf("%+v, fsck.fat %d/%d clusters", fs, used, total)
		}
	}
}

func checkISO(t *testing.T, path string, fs *Filesystem) {
	requireTool(t, "isoinfo", "genisoimage")
	out := run(t, "isoinfo", "-d", "-i", path)
	bs := regexp.MustCompile(`Logical block size is: (\d+)`).FindStringSubmatch(out)
	vs := regexp.MustCompile(`Volume size is: (\d+)`).FindStringSubmatch(out)
	if bs == nil || vs == nil {
		t.Fatalf("isoinfo: %s", out)
	}
	b, _ := strconv.ParseInt(bs[1], 10, 64)
	v, _ := strconv.ParseInt(vs[1], 10, 64)
	if fs.BlockSize != b || fs.Size != v*b {
		t.Errorf("%+v, isoinfo %d blocks of %d", fs, v, b)
	}
}

// Test4Kn inspects a GPT disk with 4096-byte logical sectors, made by
// fdisk -b 4096, holding an EFI System partition and an ext4 root.
func Test4Kn(t *testing.T) {
	t.Parallel()
	requireTools(t, map[string]string{"fdisk": "fdisk", "mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools"})
	dir := t.TempDir()
	disk := filepath.Join(dir, "4kn.raw")
	sparseFile(t, disk, 64*mib)
	execWithStdin(t, "g\nn\n1\n256\n+8M\nt\n1\nn\n2\n\n\nx\nn\n2\nroot\nr\nw\n", "fdisk", "-b", "4096", disk)
	out := run(t, "fdisk", "-b", "4096", "-l", "-o", "Start,Sectors,Type-UUID,UUID,Name", disk)
	id := regexp.MustCompile(`Disk identifier: (\S+)`).FindStringSubmatch(out)
	rows := regexp.MustCompile(`(?m)^\s*(\d+)\s+(\d+)\s+(\S+)\s+(\S+) ?(.*)$`).FindAllStringSubmatch(out, -1)
	if id == nil || len(rows) != 2 {
		t.Fatalf("fdisk -l: %s", out)
	}
	files := map[int]string{}
	for i, row := range rows {
		start, _ := strconv.ParseInt(row[1], 10, 64)
		n, _ := strconv.ParseInt(row[2], 10, 64)
		p := filepath.Join(dir, "p"+strconv.Itoa(i+1)+".fs")
		sparseFile(t, p, n*4096)
		if i == 0 {
			run(t, "mkfs.vfat", "-S", "4096", "-n", "ESP4K", p)
			inspecttest.FATFiles(t, p, espFiles)
		} else {
			run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root4k", "-d", linuxTree(t), p)
		}
		place(t, disk, p, start*4096)
		files[i+1] = p
	}
	if *update {
		b := formattest.ReadFile(t, disk)
		os.WriteFile(filepath.Join("..", "testdata", "inspect", "gpt4k.seed"), b[:6*4096], 0o644)
	}
	r := inspectFile(t, disk)
	pt := r.PartitionTable
	if pt.Type != "gpt" || pt.SectorSize != 4096 || !strings.EqualFold(pt.UUID, id[1]) || len(pt.Partitions) != 2 {
		t.Fatalf("table %+v findings %v", pt, r.Findings)
	}
	for i, row := range rows {
		p := pt.Partitions[i]
		start, _ := strconv.ParseInt(row[1], 10, 64)
		n, _ := strconv.ParseInt(row[2], 10, 64)
		if p.Number != i+1 || p.Start != start*4096 || p.Size != n*4096 || !strings.EqualFold(p.Type, row[3]) ||
			!strings.EqualFold(p.UUID, row[4]) || p.Name != strings.TrimSpace(row[5]) {
			t.Errorf("partition %+v, fdisk %q", p, row[1:])
		}
		checkFS(t, "partition "+strconv.Itoa(i+1), p.Filesystem, blkid(t, files[i+1]))
	}
	if o := r.OS; o == nil || o.Distro != "debian" || o.Boot != "uefi" || o.Partition != 2 {
		t.Errorf("os %+v", r.OS)
	}
	if len(r.Findings) != 0 {
		t.Errorf("findings: %v", r.Findings)
	}
}
