package limits

import (
	"fmt"
	"slices"
	"strings"
)

// Rule is one documented constraint, as data.
type Rule struct {
	ID       string
	Kind     Kind
	Severity Severity
	// Message states the rule; the finding adds what was measured.
	Message string
	// Source names the document the rule comes from; "" means the
	// profile's.
	Source string
	// Direction and Disk restrict the rule; "" applies it always.
	Direction Direction
	Disk      string
	// Min and Limit bound sizes (bytes) or counts, as the kind says.
	Min, Limit int64
	// Formats lists qemu format names, for the kinds that take them.
	Formats []string
	// Quota names the Request.Quotas entry a KindQuota rule reads.
	Quota string
	// OS restricts the rule to images of that OS type (linux, windows).
	OS string
	// Modes are the boot modes (bios, uefi) a KindBootMode rule's cloud
	// boots an image with unless told otherwise.
	Modes []string
	// Drivers a KindDrivers rule needs, each "a|b" naming alternatives.
	Drivers []string
}

// Kind is what a rule measures. Each kind is one small function, so a
// profile is data and the engine stays the same for every cloud.
type Kind int

const (
	KindFormat           Kind = iota // image format must be in Formats
	KindVirtualRange                 // Min ≤ virtual size ≤ Limit (0: unbounded)
	KindVirtualMultiple              // virtual size must be a multiple of Limit
	KindFixedVHD                     // must be a fixed VHD
	KindEncrypted                    // image must not be encrypted
	KindEncryptedNote                // an encrypted image loses some features
	KindNoBacking                    // image must be self-contained
	KindArch                         // image arch must match the requested server arch
	KindBits64                       // the OS must be 64-bit
	Kind32BitMemory                  // a 32-bit OS uses at most Limit bytes of memory
	KindPartitionTable               // partition table must be MBR or GPT
	KindInodes                       // inodes in use above Limit
	KindFSSlack                      // allocated bytes exceed filesystem use: sparsify would save
	KindNearFull                     // filesystems more than Limit percent full
	KindWindowsFlavor                // a Windows volume must fit the flavor's disk
	KindQuota                        // a count the request mentions against Limit
	KindReplicationSize              // when replication is mentioned, virtual size against Limit
	KindNote                         // always shown: a documented limit the file cannot show
	KindBootLoader                   // a partitioned disk must have a boot loader
	KindOS                           // a partitioned disk must hold an OS inspect can find
	KindBootMode                     // the image must boot in one of Modes
	KindBootModeStated               // the boot mode must be given at import
	KindDomainController             // a Windows domain controller (info when the role is unknown)
	KindBitLocker                    // BitLocker volumes boot only with their key
	KindDrivers                      // the OS must have Drivers
	KindCloudInit                    // cloud-init (Cloudbase-Init) should be installed
	KindFstabDevice                  // fstab should not name kernel devices
	KindPersistentNet                // udev's persistent net rules should be removed
)

// eval returns the finding's message when the rule applies, and a
// severity when the measurement raises it above the rule's own.
func (k Kind) eval(r Rule, img Image, req Request) (string, Severity, bool) {
	msg := func(format string, a ...any) (string, Severity, bool) {
		return r.Message + ": " + fmt.Sprintf(format, a...), "", true
	}
	switch k {
	case KindFormat:
		if img.Format != "" && !contains(r.Formats, img.Format) {
			return msg("%s is not one of %s", displayFormat(img.Format), formatList(r.Formats))
		}
	case KindVirtualRange:
		v := img.VirtualSize
		if v > 0 && v < r.Min {
			return msg("virtual size %s is below %s", size(v), size(r.Min))
		}
		if r.Limit > 0 && v > r.Limit {
			return msg("virtual size %s exceeds %s", size(v), size(r.Limit))
		}
	case KindVirtualMultiple:
		if img.VirtualSize%r.Limit != 0 {
			up := (img.VirtualSize + r.Limit - 1) / r.Limit * r.Limit
			return msg("virtual size %d is not a multiple of %s; the converted image is rounded up to %d", img.VirtualSize, size(r.Limit), up)
		}
	case KindFixedVHD:
		if img.Format != "vpc" || img.Subformat != "fixed" {
			return msg("the image is %s; diskimg converts it to a fixed VHD", describe(img))
		}
	case KindEncrypted:
		if len(img.EncryptedVolumes) > 0 {
			return msg("%s encrypted", strings.Join(img.EncryptedVolumes, ", "))
		}
		if img.Encrypted {
			return r.Message, "", true
		}
	case KindEncryptedNote:
		if img.Encrypted {
			return r.Message, "", true
		}
	case KindNoBacking:
		if img.Backing || img.DataFile {
			return msg("the image refers to a backing or external data file; convert it to a self-contained image")
		}
	case KindArch:
		if img.Arch != "" && req.Arch != "" && normArch(img.Arch) != normArch(req.Arch) {
			return msg("the image is %s, the servers are %s", img.Arch, req.Arch)
		}
	case KindBits64:
		if img.Bits == 32 {
			return msg("the OS is 32-bit")
		}
	case Kind32BitMemory:
		if img.Bits == 32 {
			if req.MemoryGiB*GiB > r.Limit {
				m, _, _ := msg("the OS is 32-bit and the servers have %d GiB of memory", req.MemoryGiB)
				return m, Error, true
			}
			return msg("the OS is 32-bit")
		}
	case KindPartitionTable:
		if img.Inspected && img.PartitionTable != "mbr" && img.PartitionTable != "gpt" {
			return msg("the disk has no MBR or GPT partition table (%q)", img.PartitionTable)
		}
	case KindInodes:
		if img.InodesUsed > r.Limit {
			return msg("%d inodes in use (over %d)", img.InodesUsed, r.Limit)
		}
	case KindFSSlack:
		if img.Filesystems > 0 && img.AllocatedSize > img.FSUsed+img.FSUsed/10+64*MiB {
			return msg("%s allocated in the image, %s used by its filesystems: sparsifying would save about %s",
				size(img.AllocatedSize), size(img.FSUsed), size(img.AllocatedSize-img.FSUsed))
		}
	case KindNearFull:
		if img.FSSize > 0 && img.FSUsed*100 > img.FSSize*r.Limit {
			return msg("filesystems are %d%% full", img.FSUsed*100/img.FSSize)
		}
	case KindWindowsFlavor:
		if img.OSType == "windows" && req.FlavorDisk > 0 && img.VirtualSize > req.FlavorDisk {
			return msg("the Windows volume is %s, the flavor's disk %s", size(img.VirtualSize), size(req.FlavorDisk))
		}
	case KindQuota:
		n, ok := req.Quotas[r.Quota]
		if !ok {
			return "", "", false
		}
		if n > r.Limit {
			return msg("requested %d, limit %d", n, r.Limit)
		}
		return msg("requested %d, within the limit of %d", n, r.Limit)
	case KindReplicationSize:
		if _, ok := req.Quotas[r.Quota]; ok && img.VirtualSize > r.Limit {
			return msg("the image is %s", size(img.VirtualSize))
		}
	case KindNote:
		return r.Message, "", true
	case KindBootLoader:
		if partitioned(img) && len(img.BootModes) == 0 {
			if req.BootMode != "" {
				m, _, _ := msg("no boot loader found for any boot mode; you say it boots with %s", strings.ToUpper(req.BootMode))
				return m, Warning, true
			}
			return msg("no boot loader found: no boot code in the MBR and no loader on an EFI System partition")
		}
	case KindOS:
		if partitioned(img) && img.OSType == "" {
			if len(img.Unsearched) > 0 {
				m, _, _ := msg("no OS found; cannot tell, %s not searched", strings.Join(img.Unsearched, ", "))
				return m, Info, true
			}
			return msg("no operating system found on any partition")
		}
	case KindBootMode:
		modes := bootModes(img, req)
		if len(modes) > 0 && !slices.ContainsFunc(modes, func(m string) bool { return contains(r.Modes, m) }) {
			return msg("the image boots with %s only", modeList(modes))
		}
	case KindBootModeStated:
		switch modes := bootModes(img, req); {
		case len(modes) > 1:
			return msg("the image boots with both BIOS and UEFI: choose one (plan --boot-mode) and pass it to the import")
		case len(modes) == 1:
			m, _, _ := msg("import with --boot-mode %s", map[string]string{"bios": "legacy-bios", "uefi": "uefi"}[modes[0]])
			return m, Info, true
		}
	case KindDomainController:
		if img.OSType == "windows" {
			switch img.WindowsRole {
			case "domain controller":
				return msg("the image is of a domain controller")
			case "":
				m, _, _ := msg("the SYSTEM hive could not tell whether this server is one")
				return m, Info, true
			}
		}
	case KindBitLocker:
		if img.BitLocker {
			return msg("%s encrypted", strings.Join(img.EncryptedVolumes, ", "))
		}
	case KindDrivers:
		if img.OSType == "linux" && img.Kernels == 0 {
			return msg("no installed kernel found")
		}
		var missing []string
		for _, d := range r.Drivers {
			if !slices.ContainsFunc(strings.Split(d, "|"), func(n string) bool { return contains(img.Drivers, n) }) {
				missing = append(missing, strings.ReplaceAll(d, "|", " or "))
			}
		}
		if len(missing) > 0 {
			return msg("no %s driver installed", strings.Join(missing, " driver, no "))
		}
	case KindCloudInit:
		if img.OSType != "" && !img.CloudInit {
			return msg("not installed")
		}
	case KindFstabDevice:
		if len(img.FstabDevices) > 0 {
			return msg("/etc/fstab mounts %s", strings.Join(img.FstabDevices, ", "))
		}
	case KindPersistentNet:
		if img.PersistentNetRules {
			return msg("/etc/udev/rules.d/70-persistent-net.rules is present")
		}
	}
	return "", "", false
}

// partitioned reports an inspected disk with a partition table: the
// boot loader and OS rules speak only of those.
func partitioned(img Image) bool {
	return img.Inspected && (img.PartitionTable == "mbr" || img.PartitionTable == "gpt")
}

// bootModes are the modes the image boots with: the user's word, or
// what inspect found.
func bootModes(img Image, req Request) []string {
	if req.BootMode != "" {
		return []string{req.BootMode}
	}
	return img.BootModes
}

func modeList(modes []string) string {
	up := make([]string, len(modes))
	for i, m := range modes {
		up[i] = strings.ToUpper(m)
	}
	return strings.Join(up, " and ")
}

// describe names an image's format and subformat for messages.
func describe(img Image) string {
	if img.Subformat != "" {
		return img.Subformat + " " + displayFormat(img.Format)
	}
	return displayFormat(img.Format)
}

func normArch(a string) string {
	switch a {
	case "x86_64", "amd64", "x86", "x64":
		return "x86_64"
	case "aarch64", "arm64", "kunpeng":
		return "aarch64"
	}
	return a
}
