package inspect

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/inspect/inspecttest"
)

// Targets: inspect takes under 50 ms on the demo image and under 1 s on
// a 10 GiB image holding a full OS tree. Each iteration opens the image
// and inspects it as `diskimg inspect` does (allocated size included).

// BenchmarkInspectDemo inspects testdata/demo.qcow2.
func BenchmarkInspectDemo(b *testing.B) {
	benchInspect(b, filepath.Join("..", "testdata", "demo.qcow2"))
}

// BenchmarkInspectOSTree inspects a 10 GiB sparse GPT disk, with GRUB's
// BIOS boot code and core image, an EFI System partition and an ext4
// root made with mkfs.ext4 -d from the directory $DISKIMG_BENCH_ROOT (a
// full OS tree, such as a debootstrap of Debian with a kernel), as raw
// and as qcow2. Skipped when the variable is not set.
func BenchmarkInspectOSTree(b *testing.B) {
	tree := os.Getenv("DISKIMG_BENCH_ROOT")
	if tree == "" {
		b.Skip("DISKIMG_BENCH_ROOT names no OS tree (debootstrap one into a directory)")
	}
	dir := b.TempDir()
	const size = 10 << 30
	core := filepath.Join(dir, "core.img")
	inspecttest.Run(b, "grub-mkimage", "-O", "i386-pc", "-o", core, "-p", "/boot/grub", "biosdisk", "part_gpt", "ext2")
	esp := filepath.Join(dir, "esp.fs")
	pe := inspecttest.PE(inspecttest.MachineAMD64, inspecttest.PE32Plus, [4]uint16{})
	inspecttest.ESP(b, esp, 64*mib, map[string][]byte{"EFI/BOOT/BOOTX64.EFI": pe, "EFI/debian/grubx64.efi": pe})
	root := filepath.Join(dir, "root.fs")
	inspecttest.Ext4(b, root, size-67*mib, tree, "root", inspecttest.RootUUID)
	disk := filepath.Join(dir, "os.raw")
	sparseFile(b, disk, size)
	run(b, "sgdisk", "-n", "1:1M:+1M", "-t", "1:ef02", "-n", "2:0:+64M", "-t", "2:ef00", "-n", "3:0:0", "-t", "3:8300", disk)
	inspecttest.WriteAt(b, disk, inspecttest.GrubBootCode(b), 0)
	place(b, disk, core, mib)
	place(b, disk, esp, 2*mib)
	place(b, disk, root, 66*mib)
	b.Run("raw", func(b *testing.B) { benchInspect(b, disk) })
	qcow := filepath.Join(dir, "os.qcow2")
	formattest.Convert(b, disk, qcow, "qcow2")
	b.Run("qcow2", func(b *testing.B) { benchInspect(b, qcow) })
}

func benchInspect(b *testing.B, path string) {
	var r *Report
	for i := 0; i < b.N; i++ {
		img, err := format.Open(path, "", format.Policy{})
		if err != nil {
			b.Fatal(err)
		}
		if r, err = Inspect(img, Options{}); err != nil {
			b.Fatal(err)
		}
		img.Close()
	}
	if r.OS == nil || r.Boot == nil || len(r.Boot.Modes) == 0 {
		b.Fatalf("os %+v boot %+v findings %v", r.OS, r.Boot, r.Findings)
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/inspect")
}
