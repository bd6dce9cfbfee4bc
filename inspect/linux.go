package inspect

import (
	"bufio"
	"bytes"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// What decides whether a Linux root boots on another hypervisor: its
// kernels and their paravirtual drivers, /boot and the boot loader,
// cloud-init, how /etc/fstab names filesystems, and udev's pinned
// interface names.

// fileTree is a filesystem OS detection reads files from: ext2/3/4 for
// roots and /boot, FAT for a /boot that is the EFI System partition.
type fileTree interface {
	readDir(p string, max int) ([]string, error)
	exists(p string) bool
	readPath(p string, max int64) ([]byte, error)
}

// Bounds on what one root's facts read.
const (
	maxKernels      = 64
	maxBootEntries  = 1024
	maxFstab        = 64 << 10
	maxFstabEntries = 256
	maxModulesList  = 16 << 20 // modules.dep of a distribution kernel is under 1 MiB
	maxModuleDir    = 4096
)

// pvDrivers are the paravirtual drivers looked for: Linux modules and
// Windows services.
var pvDrivers = []struct{ os, name, bus, class string }{
	{"linux", "virtio_blk", "virtio", "storage"}, {"linux", "virtio_scsi", "virtio", "storage"}, {"linux", "virtio_net", "virtio", "network"},
	{"linux", "xen_blkfront", "xen", "storage"}, {"linux", "xen_netfront", "xen", "network"},
	{"linux", "hv_storvsc", "hyperv", "storage"}, {"linux", "hv_netvsc", "hyperv", "network"},
	{"windows", "viostor", "virtio", "storage"}, {"windows", "vioscsi", "virtio", "storage"}, {"windows", "netkvm", "virtio", "network"},
	{"windows", "xenvbd", "xen", "storage"}, {"windows", "xennet", "xen", "network"},
	{"windows", "storvsc", "hyperv", "storage"}, {"windows", "netvsc", "hyperv", "network"},
}

// moduleDirs are where those drivers' .ko files live, relative to a
// kernel's module directory, for kernels without modules.dep.
var moduleDirs = []string{"kernel/drivers/block", "kernel/drivers/scsi", "kernel/drivers/net", "kernel/drivers/net/hyperv", "kernel/drivers/virtio", "kernel/drivers/hv"}

var kernelImagePrefixes = []string{"vmlinuz-", "vmlinux-", "kernel-"}

// linuxFacts fills o, the OS found on root (partition o.Partition of
// disk), with what decides whether it boots elsewhere.
func linuxFacts(disk dev, root *extFS, o *OS, r *Report) error {
	o.Fstab = parseFstab(root)
	o.CloudInit = root.exists("/etc/cloud/cloud.cfg") || root.exists("/usr/bin/cloud-init")
	o.PersistentNetRules = root.exists("/etc/udev/rules.d/70-persistent-net.rules")
	if b, err := root.readPath("/etc/hostname", 256); err == nil {
		o.Hostname, _, _ = strings.Cut(strings.TrimSpace(string(b)), "\n")
	}

	// /boot: a directory of the root, or the filesystem fstab mounts there.
	var boot fileTree = root
	bootDir := "/boot"
	o.BootPartition = o.Partition
	for _, e := range o.Fstab {
		if e.Mount != "/boot" {
			continue
		}
		num := partitionOf(e.Spec, r.PartitionTable)
		if num == 0 {
			r.addf(Info, "/etc/fstab mounts /boot from %s, which is not a partition of this disk", e.Spec)
			break
		}
		t, err := openTree(disk, r.PartitionTable, num)
		if err != nil {
			return err
		}
		if t == nil {
			r.addf(Info, "/etc/fstab mounts /boot from partition %d, whose filesystem is not read", num)
			break
		}
		boot, bootDir, o.BootPartition = t, "/", num
		break
	}

	kernels := map[string]*Kernel{}
	get := func(v string) *Kernel {
		if kernels[v] == nil && len(kernels) < maxKernels {
			kernels[v] = &Kernel{Version: v}
		}
		return kernels[v]
	}
	names, _ := boot.readDir(bootDir, maxBootEntries)
	sort.Strings(names)
	for _, n := range names {
		for _, p := range kernelImagePrefixes {
			if v, ok := strings.CutPrefix(n, p); ok && v != "" {
				if k := get(v); k != nil && k.Image == "" {
					k.Image = "/boot/" + n
				}
			}
		}
	}
	seen := map[string]bool{}
	for _, base := range []string{"/lib/modules", "/usr/lib/modules"} {
		vers, err := root.readDir(base, maxKernels)
		if err != nil {
			continue
		}
		sort.Strings(vers)
		for _, v := range vers {
			if seen[v] {
				continue // /lib is /usr/lib on merged-/usr systems
			}
			k := get(v)
			if k == nil {
				break
			}
			seen[v], k.Modules = true, true
			o.Drivers = append(o.Drivers, kernelDrivers(root, base+"/"+v, v)...)
		}
	}
	for _, v := range sortedKeys(kernels) {
		o.Kernels = append(o.Kernels, *kernels[v])
	}
	o.Virtio = hasDrivers(o.Drivers, "virtio_blk", "virtio_scsi") && hasDrivers(o.Drivers, "virtio_net")

	// Boot loaders: their configuration under /boot, or their files on
	// the EFI System partition and in the MBR.
	has := func(p string) bool { return boot.exists(path.Join(bootDir, p)) }
	var efi []string
	bios := ""
	if r.Boot != nil {
		if r.Boot.UEFI != nil {
			efi = r.Boot.UEFI.Loaders
		}
		if r.Boot.BIOS != nil {
			bios = r.Boot.BIOS.Loader
		}
	}
	efiHas := func(s string) bool {
		for _, l := range efi {
			if strings.Contains(strings.ToLower(l), s) {
				return true
			}
		}
		return false
	}
	if has("grub/grub.cfg") || has("grub2/grub.cfg") || bios == "grub" || efiHas("grub") {
		o.Bootloaders = append(o.Bootloaders, "grub")
	}
	if has("loader/loader.conf") || has("loader/entries") || efiHas("systemd-boot") {
		o.Bootloaders = append(o.Bootloaders, "systemd-boot")
	}
	if has("extlinux/extlinux.conf") || has("syslinux/syslinux.cfg") {
		o.Bootloaders = append(o.Bootloaders, "syslinux")
	}
	return nil
}

// openTree opens the filesystem of partition num for reading files; nil
// when it is not one this package reads files from.
func openTree(disk dev, pt *PartitionTable, num int) (fileTree, error) {
	for _, p := range pt.Partitions {
		if p.Number != num || p.Filesystem == nil {
			continue
		}
		d := disk.sub(p.Start, p.Size)
		switch p.Filesystem.Type {
		case "ext2", "ext3", "ext4":
			fs, err := newExtFS(d)
			if isImageErr(err) {
				return nil, err
			}
			if err == nil {
				return fs, nil
			}
		case "vfat":
			bs, err := d.read(0, sectorSize)
			if err != nil {
				return nil, err
			}
			if v, _, err := parseFATBoot(d, bs); err == nil && v != nil {
				return v, nil
			}
		}
	}
	return nil, nil
}

// kernelDrivers finds the paravirtual drivers of the kernel whose
// modules are in dir: built in (modules.builtin), or modules listed in
// modules.dep or, without it, present as .ko files.
func kernelDrivers(root *extFS, dir, version string) []Driver {
	load := map[string]string{}
	if b, err := root.readPath(dir+"/modules.builtin", maxModulesList); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			load[moduleName(l)] = "builtin"
		}
	}
	if b, err := root.readPath(dir+"/modules.dep", maxModulesList); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f, _, ok := strings.Cut(l, ":"); ok && load[moduleName(f)] == "" {
				load[moduleName(f)] = "module"
			}
		}
	} else {
		for _, sub := range moduleDirs {
			names, _ := root.readDir(dir+"/"+sub, maxModuleDir)
			for _, n := range names {
				if m := moduleName(n); load[m] == "" {
					load[m] = "module"
				}
			}
		}
	}
	var out []Driver
	for _, d := range pvDrivers {
		if l := load[d.name]; l != "" && d.os == "linux" {
			out = append(out, Driver{Name: d.name, Bus: d.bus, Class: d.class, Load: l, Kernel: version})
		}
	}
	return out
}

// moduleName turns a module's path (kernel/drivers/block/virtio_blk.ko.xz)
// into its name (virtio_blk), as modprobe does.
func moduleName(p string) string {
	n := path.Base(strings.TrimSpace(p))
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		n = strings.TrimSuffix(n, ext)
	}
	n, ok := strings.CutSuffix(n, ".ko")
	if !ok {
		return ""
	}
	return strings.ReplaceAll(n, "-", "_")
}

// hasDrivers reports whether any of names is installed and not disabled.
func hasDrivers(ds []Driver, names ...string) bool {
	for _, d := range ds {
		for _, n := range names {
			if strings.EqualFold(d.Name, n) && d.Load != "disabled" {
				return true
			}
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// parseFstab reads the root's /etc/fstab.
func parseFstab(root fileTree) []FstabEntry {
	b, err := root.readPath("/etc/fstab", maxFstab)
	if err != nil {
		return nil
	}
	return fstabEntries(b)
}

// fstabEntries parses fstab text: spec, mount point and type per line.
func fstabEntries(b []byte) []FstabEntry {
	var out []FstabEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxFstab)
	for sc.Scan() && len(out) < maxFstabEntries {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		e := FstabEntry{Spec: fstabUnescape(f[0]), Mount: fstabUnescape(f[1]), Type: f[2]}
		e.By = fstabBy(e)
		out = append(out, e)
	}
	return out
}

// fstabUnescape undoes fstab's octal escapes (\040 for a space); control
// characters become '?', as plan prints these names.
func fstabUnescape(s string) string {
	if !strings.Contains(s, `\`) {
		return printable(s)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return printable(strings.ToValidUTF8(b.String(), "?"))
}

// kernelDevice matches kernel block device names, whose letters and
// numbers follow the hypervisor's disk bus and probe order.
var kernelDevice = regexp.MustCompile(`^/dev/((sd|hd|vd|xvd)[a-z]+|nvme[0-9]+n[0-9]+|mmcblk[0-9]+)(p?[0-9]+)?$`)

func fstabBy(e FstabEntry) string {
	for _, tag := range []string{"UUID", "LABEL", "PARTUUID", "PARTLABEL"} {
		if strings.HasPrefix(strings.ToUpper(e.Spec), tag+"=") || strings.HasPrefix(e.Spec, "/dev/disk/by-"+strings.ToLower(tag)+"/") {
			return strings.ToLower(tag)
		}
	}
	switch {
	case kernelDevice.MatchString(e.Spec):
		return "device"
	case strings.HasPrefix(e.Spec, "/dev/"):
		return "path"
	}
	return "none"
}

// partitionOf finds the partition an fstab spec names: by filesystem
// UUID or label, partition UUID or name, or kernel device number. 0 when
// none matches.
func partitionOf(spec string, pt *PartitionTable) int {
	if pt == nil {
		return 0
	}
	tag, val, ok := strings.Cut(spec, "=")
	if !ok {
		for _, t := range []string{"uuid", "label", "partuuid", "partlabel"} {
			if v, found := strings.CutPrefix(spec, "/dev/disk/by-"+t+"/"); found {
				tag, val, ok = t, fstabUnescape(v), true
			}
		}
	}
	val = strings.Trim(val, `"`)
	for _, p := range pt.Partitions {
		fs := p.Filesystem
		switch {
		case !ok:
			if m := kernelDevice.FindStringSubmatch(spec); m != nil && m[3] != "" {
				if n, _ := strconv.Atoi(strings.TrimPrefix(m[3], "p")); n == p.Number {
					return n
				}
			}
		case strings.EqualFold(tag, "uuid") && fs != nil && strings.EqualFold(fs.UUID, val),
			strings.EqualFold(tag, "label") && fs != nil && fs.Label == val,
			strings.EqualFold(tag, "partuuid") && partUUID(pt, p) != "" && strings.EqualFold(partUUID(pt, p), val),
			strings.EqualFold(tag, "partlabel") && p.Name != "" && p.Name == val:
			return p.Number
		}
	}
	return 0
}

// partUUID is what Linux calls a partition's PARTUUID: the GPT entry's
// GUID, or the MBR disk signature and the partition number.
func partUUID(pt *PartitionTable, p Partition) string {
	if pt.Type == "mbr" {
		return fmt.Sprintf("%s-%02x", pt.UUID, p.Number)
	}
	return p.UUID
}
