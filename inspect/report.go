// Package inspect reads what is inside a disk image of any format: the
// partition table, the filesystem on each partition and the operating
// system installed, straight from on-disk metadata, without mounting
// anything or starting a VM.
//
// Everything malformed inside the guest disk becomes a Finding in the
// Report; Inspect returns an error only when the image itself cannot be
// read.
package inspect

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Report is what Inspect found. Fields that are unknown are left zero.
type Report struct {
	Format         string          `json:"format"`
	VirtualSize    int64           `json:"virtual-size"`
	AllocatedSize  int64           `json:"allocated-size"`
	PartitionTable *PartitionTable `json:"partition-table"`
	// Filesystem is set when the whole disk holds one filesystem (no
	// partition table).
	Filesystem *Filesystem `json:"filesystem,omitempty"`
	// Boot is how the disk boots; nil when OS detection was skipped.
	Boot     *Boot     `json:"boot,omitempty"`
	OS       *OS       `json:"os,omitempty"`
	Findings []Finding `json:"findings"`
}

// PartitionTable describes an MBR or GPT table; Type is "none" when the
// disk has no table.
type PartitionTable struct {
	Type string `json:"type"` // mbr, gpt or none
	// UUID is the GPT disk GUID; for MBR the disk signature as 8 hex digits.
	UUID string `json:"uuid,omitempty"`
	// SectorSize is the logical block size of a GPT disk: 512, or 4096
	// for a 4Kn disk.
	SectorSize int64       `json:"sector-size,omitempty"`
	Partitions []Partition `json:"partitions"`
	// meta are the table's own sectors (and, for GPT, everything outside
	// the usable LBAs): no filesystem's free space may cover them.
	meta []span
}

// Partition is one entry of the table. Start and Size are in bytes.
type Partition struct {
	Number int    `json:"number"`
	Start  int64  `json:"start"`
	Size   int64  `json:"size"`
	Type   string `json:"type"` // GPT type GUID, or MBR type as "0x83"
	// TypeName is the human name of Type ("EFI System", "Linux filesystem").
	TypeName   string      `json:"type-name"`
	Name       string      `json:"name,omitempty"`
	UUID       string      `json:"uuid,omitempty"`
	Bootable   bool        `json:"bootable"`
	Filesystem *Filesystem `json:"filesystem,omitempty"`
}

// Filesystem is what a superblock says. Byte counts are 0 when the
// filesystem does not record them.
type Filesystem struct {
	// Type uses blkid's names: ext2, ext3, ext4, xfs, btrfs, ntfs, vfat,
	// exfat, swap, LVM2_member, crypto_LUKS, iso9660.
	Type string `json:"type"`
	// Version refines Type where it matters: FAT12/FAT16/FAT32, LUKS1/LUKS2.
	Version     string `json:"version,omitempty"`
	Label       string `json:"label,omitempty"`
	UUID        string `json:"uuid,omitempty"`
	Size        int64  `json:"size"`
	BlockSize   int64  `json:"block-size,omitempty"`
	Used        int64  `json:"used,omitempty"`
	Free        int64  `json:"free,omitempty"`
	InodesTotal int64  `json:"inodes-total,omitempty"`
	InodesUsed  int64  `json:"inodes-used,omitempty"`
	// Encrypted is set for LUKS containers, whose content is not read.
	Encrypted bool `json:"encrypted"`
	// Volumes are the logical volumes of an LVM2 physical volume, when its
	// metadata names them simply.
	Volumes []LogicalVolume `json:"logical-volumes,omitempty"`
}

// LogicalVolume is an LVM2 logical volume found in a PV's metadata.
type LogicalVolume struct {
	VG   string `json:"vg"`
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// OS is the operating system found on a readable filesystem.
type OS struct {
	Type    string `json:"type"` // linux or windows
	Distro  string `json:"distro,omitempty"`
	Version string `json:"version,omitempty"`
	// Build and DisplayVersion are Windows's CurrentBuild ("19045") and
	// DisplayVersion ("22H2").
	Build          string `json:"build,omitempty"`
	DisplayVersion string `json:"display-version,omitempty"`
	PrettyName     string `json:"pretty-name,omitempty"`
	// Edition and InstallationType are Windows's EditionID
	// ("ServerStandard") and InstallationType (Client, Server, Server Core).
	Edition          string `json:"edition,omitempty"`
	InstallationType string `json:"installation-type,omitempty"`
	// Role is a Windows machine's: workstation, server or domain
	// controller; "" when the SYSTEM hive does not say.
	Role     string `json:"role,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	Arch     string `json:"arch,omitempty"` // x86_64, aarch64, i386, …
	Bits     int    `json:"bits,omitempty"`
	// Boot is bios, uefi, bios+uefi (hybrid) or none: the modes of
	// Report.Boot.
	Boot string `json:"boot"`
	// CloudInit is cloud-init on Linux, Cloudbase-Init on Windows.
	CloudInit bool `json:"cloud-init"`
	// Virtio is set when virtio storage (virtio_blk or virtio_scsi;
	// viostor or vioscsi) and network (virtio_net; netkvm) drivers are
	// installed.
	Virtio bool `json:"virtio"`
	// Partition is the number of the partition holding the root
	// filesystem, 0 for a whole-disk filesystem.
	Partition int `json:"partition"`
	// BootPartition holds Linux's /boot: Partition, or a separate one.
	BootPartition int `json:"boot-partition,omitempty"`
	// Bootloaders found by Linux's files: grub, systemd-boot, syslinux.
	Bootloaders []string `json:"bootloaders,omitempty"`
	Kernels     []Kernel `json:"kernels,omitempty"`
	// Drivers are the paravirtual storage and network drivers installed.
	Drivers []Driver     `json:"drivers,omitempty"`
	Fstab   []FstabEntry `json:"fstab,omitempty"`
	// PersistentNetRules is set when /etc/udev/rules.d/70-persistent-net.rules
	// pins interface names to the old machine's MAC addresses.
	PersistentNetRules bool `json:"persistent-net-rules,omitempty"`
}

// Kernel is an installed Linux kernel.
type Kernel struct {
	Version string `json:"version"`
	// Image is the kernel's file under /boot, "" when only its modules
	// are installed.
	Image   string `json:"image,omitempty"`
	Modules bool   `json:"modules"`
}

// Driver is a paravirtual storage or network driver.
type Driver struct {
	Name  string `json:"name"`  // virtio_blk, viostor, hv_netvsc, …
	Bus   string `json:"bus"`   // virtio, xen or hyperv
	Class string `json:"class"` // storage or network
	// Load is how it loads: module or builtin on Linux; the service's
	// start type on Windows (boot, system, auto, demand, disabled).
	Load string `json:"load"`
	// Kernel is the Linux kernel version the driver belongs to.
	Kernel string `json:"kernel,omitempty"`
}

// FstabEntry is one line of /etc/fstab.
type FstabEntry struct {
	Spec  string `json:"spec"`
	Mount string `json:"mount"`
	Type  string `json:"type"`
	// By is how Spec names the filesystem: uuid, label, partuuid,
	// partlabel, device (a kernel name such as /dev/sda1, which changes
	// with the hypervisor's disk bus), path (another /dev path: LVM,
	// mapper, md) or none (proc, tmpfs, network and other filesystems).
	By string `json:"by"`
}

// Severity ranks findings.
type Severity string

const (
	Info    Severity = "info"
	Warning Severity = "warning"
	Error   Severity = "error"
)

// Finding is something wrong or notable in the guest disk.
type Finding struct {
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
}

func (r *Report) addf(s Severity, format string, args ...any) {
	r.Findings = append(r.Findings, Finding{Severity: s, Message: fmt.Sprintf(format, args...)})
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "    ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteText writes the report as aligned tables for people.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "format:          %s\n", r.Format)
	fmt.Fprintf(&b, "virtual size:    %s (%d bytes)\n", human(r.VirtualSize), r.VirtualSize)
	fmt.Fprintf(&b, "allocated size:  %s (%d bytes)\n", human(r.AllocatedSize), r.AllocatedSize)
	pt := r.PartitionTable
	if pt != nil {
		fmt.Fprintf(&b, "partition table: %s", pt.Type)
		if pt.UUID != "" {
			fmt.Fprintf(&b, " (%s)", pt.UUID)
		}
		b.WriteString("\n")
	}
	if pt != nil && len(pt.Partitions) > 0 {
		b.WriteString("\n")
		var table strings.Builder
		tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "#\tSTART\tSIZE\tTYPE\tNAME\tFS\tLABEL\tUUID\tUSED\tFREE\t")
		for _, p := range pt.Partitions {
			boot := ""
			if p.Bootable {
				boot = "*"
			}
			fsType, label, uuid, used, free := "-", "", "", "", ""
			if f := p.Filesystem; f != nil {
				fsType, label, uuid, used, free = fsLabel(f), f.Label, f.UUID, sizeOrDash(f.Used), sizeOrDash(f.Free)
			}
			fmt.Fprintf(tw, "%d%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", p.Number, boot, p.Start, human(p.Size),
				p.TypeName, p.Name, fsType, label, uuid, used, free)
		}
		tw.Flush()
		// Padding of the last columns would end the rows with spaces.
		for _, line := range strings.SplitAfter(table.String(), "\n") {
			b.WriteString(strings.TrimRight(line, " \n"))
			if strings.HasSuffix(line, "\n") {
				b.WriteString("\n")
			}
		}
	}
	if f := r.Filesystem; f != nil {
		fmt.Fprintf(&b, "\nfilesystem:      %s", fsLabel(f))
		if f.Label != "" {
			fmt.Fprintf(&b, " label %q", f.Label)
		}
		if f.UUID != "" {
			fmt.Fprintf(&b, " uuid %s", f.UUID)
		}
		fmt.Fprintf(&b, " size %s", human(f.Size))
		if f.Used != 0 || f.Free != 0 {
			fmt.Fprintf(&b, " used %s free %s", human(f.Used), human(f.Free))
		}
		b.WriteString("\n")
	}
	if o := r.OS; o != nil {
		b.WriteString("\n")
		writeOSText(&b, o, r.Boot)
	} else if r.Boot != nil {
		fmt.Fprintf(&b, "\nboot:            %s\n", bootText(r.Boot))
	}
	if len(r.Findings) > 0 {
		b.WriteString("\nfindings:\n")
		for _, f := range r.Findings {
			fmt.Fprintf(&b, "  %-7s  %s\n", f.Severity, f.Message)
		}
	}
	_, err := io.WriteString(w, printable(b.String()))
	return err
}

// printable replaces the control characters a guest's names may carry
// (an escape sequence in a hostname or file name) so the text report
// cannot drive the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || r >= ' ' && r != 0x7f && (r < 0x80 || r > 0x9f) {
			return r
		}
		return '?'
	}, s)
}

// writeOSText writes the OS lines of the text report.
func writeOSText(b *strings.Builder, o *OS, boot *Boot) {
	line := func(label, format string, args ...any) {
		fmt.Fprintf(b, "%-17s%s\n", label+":", fmt.Sprintf(format, args...))
	}
	name := o.PrettyName
	if name == "" {
		name = strings.TrimSpace(o.Distro + " " + o.Version)
	}
	line("os", "%s (%s)", o.Type, name)
	if o.Type == "windows" && (o.Version != "" || o.Build != "") {
		v := o.Version
		if o.Build != "" {
			v += " build " + o.Build
		}
		if o.DisplayVersion != "" {
			v += " (" + o.DisplayVersion + ")"
		}
		line("version", "%s", strings.TrimSpace(v))
	}
	if o.Edition != "" || o.InstallationType != "" {
		line("edition", "%s", strings.TrimSpace(o.Edition+" ("+o.InstallationType+")"))
	}
	if o.Role != "" {
		line("role", "%s", o.Role)
	}
	if o.Hostname != "" {
		line("hostname", "%s", o.Hostname)
	}
	if o.Arch != "" {
		line("arch", "%s, %d-bit", o.Arch, o.Bits)
	}
	if boot != nil {
		line("boot", "%s", bootText(boot))
	}
	if o.Type == "linux" {
		where := "partition %d"
		if o.BootPartition == o.Partition {
			where = "partition %d, on the root filesystem"
		}
		line("/boot", where, o.BootPartition)
		if len(o.Bootloaders) > 0 {
			line("bootloaders", "%s", strings.Join(o.Bootloaders, ", "))
		}
		var ks []string
		for _, k := range o.Kernels {
			s := k.Version
			switch {
			case k.Image == "":
				s += " (modules only)"
			case !k.Modules:
				s += " (no modules)"
			}
			ks = append(ks, s)
		}
		line("kernels", "%s", listOrNone(ks))
	}
	if o.Type == "linux" || o.Type == "windows" {
		line("drivers", "%s", listOrNone(driverText(o.Drivers)))
	}
	initName := "cloud-init"
	if o.Type == "windows" {
		initName = "cloudbase-init"
	}
	line(initName, "%s", yesNo(o.CloudInit))
	line("virtio drivers", "%s", yesNo(o.Virtio))
	if len(o.Fstab) > 0 {
		var fs []string
		for _, e := range o.Fstab {
			switch e.By {
			case "none":
			case "device", "path":
				fs = append(fs, fmt.Sprintf("%s (%s %s)", fstabMount(e), e.By, e.Spec))
			default:
				fs = append(fs, fmt.Sprintf("%s (%s)", fstabMount(e), e.By))
			}
		}
		line("fstab", "%s", listOrNone(fs))
	}
	if o.PersistentNetRules {
		line("persistent net", "/etc/udev/rules.d/70-persistent-net.rules")
	}
}

// fstabMount names an entry by its mount point, or type for swap.
func fstabMount(e FstabEntry) string {
	if e.Mount == "none" || e.Mount == "" {
		return e.Type
	}
	return e.Mount
}

// driverText lists drivers once each, with how they load (every way
// they load in some kernel).
func driverText(ds []Driver) []string {
	var names []string
	loads := map[string][]string{}
	for _, d := range ds {
		if loads[d.Name] == nil {
			names = append(names, d.Name)
		}
		if !slices.Contains(loads[d.Name], d.Load) {
			loads[d.Name] = append(loads[d.Name], d.Load)
		}
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = n + " (" + strings.Join(loads[n], ", ") + ")"
	}
	return out
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func fsLabel(f *Filesystem) string {
	s := f.Type
	if f.Version != "" {
		s += " (" + f.Version + ")"
	}
	if f.Encrypted {
		s += " [encrypted]"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func sizeOrDash(n int64) string {
	if n == 0 {
		return "-"
	}
	return human(n)
}

// human formats n bytes with a binary unit, as qemu-img does.
func human(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	i := -1
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v >= 999.5 {
		return fmt.Sprintf("%.0f %ciB", v, units[i]) // %.3g would say 1e+03
	}
	return fmt.Sprintf("%.3g %ciB", v, units[i])
}
