package parallels

import (
	"context"
	"fmt"

	"github.com/diskimg/diskimg/format"
)

// Check checks the catalog as qemu-img check does.
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	return CheckFile(ctx, img.File)
}

// CheckFile checks the Parallels file f as qemu-img 7.2's check does, also
// when Open refuses it (a cluster past the end of the file): an image left
// open read-write (in-use flag) and a cluster starting past the end of the
// file are corruptions; file space after the last cluster is leaked,
// counted in clusters; allocated and fragmented clusters are counted.
// A format extension qemu cannot load fails the check, as it fails
// qemu-img check's open. A cluster that starts inside the file but ends
// past it is no corruption to qemu: a warning says that reading it fails.
func CheckFile(ctx context.Context, f format.File) (*format.CheckResult, error) {
	h, err := parse(f)
	if err != nil {
		return nil, err
	}
	img := h.img
	if img.extOff != 0 {
		if err := img.checkExtension(); err != nil {
			return nil, err
		}
	}
	r := &format.CheckResult{Format: Name, Filename: f.Name(), TotalClusters: int64(len(img.bat))}
	size := f.Size()
	if img.Meta.Dirty {
		r.BoundedCorruptf("image was not closed correctly")
	}
	var high, prev int64
	for i := range img.bat {
		if i%(1<<20) == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		off := img.sector(i) * sectorSize
		if off == 0 {
			prev = 0
			continue
		}
		if off > size {
			r.BoundedCorruptf("cluster %d is outside image", i)
		} else if off > size-img.clusterSize && int64(i)*img.clusterSize < img.Size() {
			r.Warnf(format.MaxProblems, "cluster %d at offset %d extends past the end of the file (%d bytes): reading it fails", i, off, size)
		}
		r.AllocatedClusters++
		high = max(high, off)
		if prev != 0 && prev+img.clusterSize != off {
			r.FragmentedClusters++
		}
		prev = off
	}
	r.ImageEndOffset = high + img.clusterSize
	if size > r.ImageEndOffset {
		leaked := size - r.ImageEndOffset
		r.Leaks += (leaked + img.clusterSize - 1) / img.clusterSize
		r.Problems = append(r.Problems, fmt.Sprintf("ERROR space leaked at the end of the image %d", leaked))
	}
	return r, nil
}
