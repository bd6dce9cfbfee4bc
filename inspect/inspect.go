package inspect

import (
	"fmt"

	"github.com/diskimg/diskimg/format"
)

// Options tune Inspect.
type Options struct {
	// NoOS skips operating system detection (no files are read).
	NoOS bool
	// NoAllocated skips walking the extent map for allocated-size.
	NoAllocated bool
}

// Inspect reads img's partition table, filesystems and operating system.
// The error is non-nil only when the image itself cannot be read;
// anything malformed inside the guest disk is a Finding.
func Inspect(img format.Image, opts Options) (*Report, error) {
	r := &Report{Format: img.Info().Format, VirtualSize: img.Size(), Findings: []Finding{}}
	if !opts.NoAllocated {
		n, err := format.AllocatedBytes(img)
		if err != nil {
			return nil, err
		}
		r.AllocatedSize = n
	}
	budget := int64(maxReadBudget)
	disk := dev{r: newBlockCache(img, img.Size()), size: img.Size(), budget: &budget}
	err := inspectDisk(disk, r, opts)
	if err != nil {
		return nil, err
	}
	return r, nil
}

func inspectDisk(disk dev, r *Report, opts Options) error {
	if disk.size < sectorSize {
		r.PartitionTable = &PartitionTable{Type: "none", Partitions: []Partition{}}
		r.addf(Info, "disk is smaller than one sector")
		return nil
	}
	pt, ok, err := readGPT(disk, r)
	if err != nil {
		return err
	}
	if !ok {
		s0, err := disk.read(0, sectorSize)
		if err != nil {
			return err
		}
		fs, err := detect(disk, "disk", r)
		if err != nil {
			return err
		}
		switch {
		case fs != nil:
			r.PartitionTable = &PartitionTable{Type: "none", Partitions: []Partition{}}
			r.Filesystem = fs
		case mbrLooksValid(s0):
			if pt, err = readMBR(disk, s0, r); err != nil {
				return err
			}
			for _, p := range pt.Partitions {
				if p.Type == fmt.Sprintf("0x%02x", mbrTypeGPT) {
					r.addf(Warning, "protective MBR found but no valid GPT")
				}
			}
		default:
			r.PartitionTable = &PartitionTable{Type: "none", Partitions: []Partition{}}
			r.addf(Info, "no partition table or filesystem found")
		}
	}
	if pt != nil {
		r.PartitionTable = pt
		for i := range pt.Partitions {
			p := &pt.Partitions[i]
			if isExtended(mbrTypeByte(p.Type)) && pt.Type == "mbr" && p.Number <= mbrMaxEntries {
				continue
			}
			fs, err := detect(disk.sub(p.Start, p.Size), fmt.Sprintf("partition %d", p.Number), r)
			if err != nil {
				return err
			}
			p.Filesystem = fs
		}
	}
	if opts.NoOS {
		return nil
	}
	if err := detectBoot(disk, r); err != nil {
		return err
	}
	return detectOS(disk, r)
}

func mbrTypeByte(s string) byte {
	var b byte
	fmt.Sscanf(s, "0x%02x", &b)
	return b
}

// detectOS looks for an OS root on every readable filesystem; the first
// found wins.
func detectOS(disk dev, r *Report) error {
	type cand struct {
		num int
		d   dev
		fs  *Filesystem
	}
	var cands []cand
	if r.Filesystem != nil {
		cands = append(cands, cand{0, disk, r.Filesystem})
	}
	if pt := r.PartitionTable; pt != nil {
		for _, p := range pt.Partitions {
			if p.Filesystem != nil {
				cands = append(cands, cand{p.Number, disk.sub(p.Start, p.Size), p.Filesystem})
			}
		}
	}
	for _, c := range cands {
		var o *OS
		switch c.fs.Type {
		case "ext2", "ext3", "ext4":
			efs, err := newExtFS(c.d)
			if err != nil {
				if isImageErr(err) {
					return err
				}
				continue
			}
			if o = linuxOS(efs); o != nil {
				o.Partition = c.num
				if err := linuxFacts(disk, efs, o, r); err != nil {
					return err
				}
			}
		case "ntfs":
			var err error
			if o, err = windowsOS(c.d, partWhere(c.num), r); err != nil {
				return err
			}
			if o != nil {
				o.Partition = c.num
			}
		}
		if o != nil {
			o.Boot = bootModes(r.Boot)
			r.OS = o
			return nil
		}
	}
	return nil
}

// partWhere names partition num (0: the whole disk) in findings.
func partWhere(num int) string {
	if num == 0 {
		return "disk"
	}
	return fmt.Sprintf("partition %d", num)
}
