package limits

import "fmt"

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
}

// Kind is what a rule measures. Each kind is one small function, so a
// profile is data and the engine stays the same for every cloud.
type Kind int

const (
	KindFormat          Kind = iota // image format must be in Formats
	KindVirtualRange                // Min ≤ virtual size ≤ Limit (0: unbounded)
	KindVirtualMultiple             // virtual size must be a multiple of Limit
	KindFixedVHD                    // must be a fixed VHD
	KindEncrypted                   // image must not be encrypted
	KindEncryptedNote               // an encrypted image loses some features
	KindNoBacking                   // image must be self-contained
	KindArch                        // image arch must match the requested server arch
	KindBits64                      // the OS must be 64-bit
	Kind32BitMemory                 // a 32-bit OS uses at most Limit bytes of memory
	KindPartitionTable              // partition table must be MBR or GPT
	KindInodes                      // inodes in use above Limit
	KindFSSlack                     // allocated bytes exceed filesystem use: sparsify would save
	KindNearFull                    // filesystems more than Limit percent full
	KindWindowsFlavor               // a Windows volume must fit the flavor's disk
	KindQuota                       // a count the request mentions against Limit
	KindReplicationSize             // when replication is mentioned, virtual size against Limit
	KindWindowsNote                 // shown for Windows images
	KindNote                        // always shown: a documented limit the file cannot show
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
	case KindWindowsNote:
		if img.OSType == "windows" {
			return r.Message, "", true
		}
	case KindNote:
		return r.Message, "", true
	}
	return "", "", false
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
