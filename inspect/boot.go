package inspect

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/diskimg/diskimg/format"
)

// Boot is how the disk can start: the boot modes a loader was found for.
type Boot struct {
	// Modes lists bios and uefi when a loader for them is present; a
	// hybrid image has both, a disk that cannot boot neither.
	Modes []string  `json:"modes"`
	BIOS  *BIOSBoot `json:"bios,omitempty"`
	UEFI  *UEFIBoot `json:"uefi,omitempty"`
}

// BIOSBoot is the boot code in the MBR and, on a GPT disk, where it
// finds its next stage.
type BIOSBoot struct {
	// Loader names the MBR boot code: grub, windows, lilo or unknown.
	Loader string `json:"loader"`
	// Partition is the GPT BIOS boot partition holding GRUB's core image
	// (0 on MBR disks, whose loaders use the sectors after the MBR).
	Partition int `json:"partition,omitempty"`
}

// UEFIBoot is an EFI System partition and the loaders on it.
type UEFIBoot struct {
	Partition int `json:"partition"`
	// Fallback is the removable-media loader (\EFI\BOOT\BOOTX64.EFI and
	// its kin) firmware starts when it has no boot entry for the disk,
	// as on a newly imported server; "" when there is none.
	Fallback string `json:"fallback,omitempty"`
	// Loaders are the .efi files in \EFI's subdirectories and theirs.
	Loaders []string `json:"loaders"`
}

const (
	mbrBootCode     = 440 // bytes of boot code before the disk signature
	gptTypeBIOSBoot = "21686148-6449-6e6f-744e-656564454649"
	espMaxDirs      = 32 // subdirectories followed per directory
	espMaxFiles     = 64 // loaders listed
)

// efiFallbacks are the removable-media loader names, one per
// architecture (UEFI spec 3.5.1.1).
var efiFallbacks = []string{"BOOTX64.EFI", "BOOTAA64.EFI", "BOOTIA32.EFI", "BOOTARM.EFI", "BOOTRISCV64.EFI", "BOOTLOONGARCH64.EFI"}

// mbrLoaders name MBR boot code by a string it carries.
var mbrLoaders = []struct{ mark, name string }{
	{"GRUB", "grub"},
	{"Invalid partition table", "windows"},
	{"LILO", "lilo"},
}

// detectBoot fills r.Boot from the MBR boot code and the EFI System
// partitions of the table already read.
func detectBoot(disk dev, r *Report) error {
	b := &Boot{Modes: []string{}}
	r.Boot = b
	pt := r.PartitionTable
	if pt == nil || pt.Type == "none" {
		return nil
	}
	s0, err := disk.read(0, sectorSize)
	if err != nil {
		return err
	}
	if !format.IsZero(s0[:mbrBootCode]) {
		bios := &BIOSBoot{Loader: "unknown"}
		for _, l := range mbrLoaders {
			if bytes.Contains(s0[:mbrBootCode], []byte(l.mark)) {
				bios.Loader = l.name
				break
			}
		}
		ok := pt.Type == "mbr"
		for _, p := range pt.Partitions {
			if pt.Type == "gpt" && p.Type == gptTypeBIOSBoot {
				s, err := disk.sub(p.Start, p.Size).read(0, sectorSize)
				if isImageErr(err) {
					return err
				}
				if err == nil && !format.IsZero(s) {
					bios.Partition, ok = p.Number, true
					break
				}
			}
			// A legacy-BIOS-bootable GPT partition is what SYSLINUX's
			// GPT boot code starts.
			ok = ok || pt.Type == "gpt" && p.Bootable
		}
		if ok {
			b.BIOS = bios
			b.Modes = append(b.Modes, "bios")
		}
	}
	for _, p := range pt.Partitions {
		if !isESP(p) || p.Filesystem == nil || p.Filesystem.Type != "vfat" {
			continue
		}
		u, err := espLoaders(disk.sub(p.Start, p.Size), p.Number, r)
		if err != nil {
			return err
		}
		if u != nil && len(u.Loaders) > 0 {
			b.UEFI = u
			b.Modes = append(b.Modes, "uefi")
			if u.Fallback == "" {
				r.addf(Warning, "partition %d: no removable-media loader (\\EFI\\BOOT\\BOOTX64.EFI): firmware starts %s only through a boot entry, which a newly imported server lacks",
					p.Number, u.Loaders[0])
			}
			break
		}
		r.addf(Warning, "partition %d: the EFI System partition holds no loader under \\EFI", p.Number)
	}
	return nil
}

// espLoaders lists the .efi files one level under \EFI of the FAT volume
// on d; nil when the volume cannot be read (a finding says why).
func espLoaders(d dev, num int, r *Report) (*UEFIBoot, error) {
	bs, err := d.read(0, sectorSize)
	if err != nil {
		return nil, err
	}
	v, _, err := parseFATBoot(d, bs)
	if v == nil {
		return nil, nil // the probe already reported it
	}
	u := &UEFIBoot{Partition: num, Loaders: []string{}}
	efi, err := v.open(`\EFI`)
	if err == nil {
		err = u.scan(v, efi, `\EFI`, 2)
	}
	if err != nil && err != errNotFound {
		if isImageErr(err) {
			return nil, err
		}
		r.addf(Warning, "partition %d: reading \\EFI: %v", num, err)
	}
	return u, nil
}

// scan adds the .efi files in the subdirectories of dir, depth levels
// down (Windows keeps its loader in \EFI\Microsoft\Boot).
func (u *UEFIBoot) scan(v *fatVol, dir fatEntry, name string, depth int) error {
	list, err := v.entries(dir)
	if err != nil {
		return err
	}
	dirs := 0
	for i, e := range list {
		p := name + `\` + e.name
		switch {
		case i == espMaxFiles*espMaxDirs:
			return nil
		case e.dir && depth > 0 && dirs < espMaxDirs:
			dirs++
			if err := u.scan(v, e, p, depth-1); err != nil {
				return err
			}
		case !e.dir && name != `\EFI` && strings.HasSuffix(strings.ToLower(e.name), ".efi") && len(u.Loaders) < espMaxFiles:
			u.Loaders = append(u.Loaders, p)
			if u.Fallback == "" && strings.EqualFold(name, `\EFI\BOOT`) && containsFold(efiFallbacks, e.name) {
				u.Fallback = p
			}
		}
	}
	return nil
}

func containsFold(list []string, s string) bool {
	for _, l := range list {
		if strings.EqualFold(l, s) {
			return true
		}
	}
	return false
}

// bootModes names r's boot modes for OS.Boot: bios, uefi, bios+uefi or
// none.
func bootModes(b *Boot) string {
	if b == nil || len(b.Modes) == 0 {
		return "none"
	}
	return strings.Join(b.Modes, "+")
}

// bootText describes b in one line for the text report.
func bootText(b *Boot) string {
	var parts []string
	if x := b.BIOS; x != nil {
		s := "bios: " + x.Loader + " in the MBR"
		if x.Partition > 0 {
			s += fmt.Sprintf(", BIOS boot partition %d", x.Partition)
		}
		parts = append(parts, s)
	}
	if u := b.UEFI; u != nil {
		parts = append(parts, fmt.Sprintf("uefi: partition %d, %s", u.Partition, strings.Join(u.Loaders, " ")))
	}
	if len(parts) == 0 {
		return "none found"
	}
	return strings.Join(parts, "; ")
}
