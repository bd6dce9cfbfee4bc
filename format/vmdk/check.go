package vmdk

import (
	"context"

	"github.com/diskimg/diskimg/format"
)

// maxProblems bounds the problem lines a check keeps; the counts go on.
const maxProblems = 1000

var _ format.Checker = (*Image)(nil)

// Check verifies every extent's grain directory and grain tables.
//
// qemu's vmdk_co_check asks, for every grain, whether the grain it maps
// starts inside the extent file, and stops at the first that does not
// (exiting 1 with "points after EOF" on stderr). diskimg reports each such
// grain as a corruption instead, and goes further where qemu silently
// reads zeros: a grain table that lies past the end of the file, and an
// uncompressed grain that starts inside the file but ends past it, are
// corruptions too. qemu does not look for grains used twice, and neither
// does this check, so a clean verdict means what it means to qemu.
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	r := &format.CheckResult{Format: Name, Filename: img.f.Name()}
	for _, x := range img.extents {
		if err := x.check(ctx, r); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (x *extent) check(ctx context.Context, r *format.CheckResult) error {
	if x.size == 0 {
		return nil
	}
	if x.flat {
		// Open refuses a flat extent past the end of its file; the file
		// may have shrunk since.
		if size := x.f.Size(); x.flatOffset >= size {
			corrupt(r, "flat extent %s: data at offset %d starts past the end of the file (%d bytes)", x.name, x.flatOffset, size)
		}
		return nil
	}
	gtBytes := x.gtes * 4
	raw := make([]byte, gtBytes)
	// A hostile directory can name one grain table many times; reading
	// it once bounds the work by the file's size.
	seen := map[uint32]bool{}
	for gdi, sec := range x.gd {
		if gdi%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if sec == 0 || seen[sec] {
			continue
		}
		seen[sec] = true
		gdAt := x.gdOffset + int64(gdi)*4
		off := int64(sec) * sectorSize
		if off > x.fileSize || gtBytes > x.fileSize-off {
			corrupt(r, "%s: grain directory entry %d at offset %d: grain table at sector %d extends past the end of the file (%d bytes)",
				x.name, gdi, gdAt, sec, x.fileSize)
			continue
		}
		if err := format.ReadFull(x.f, raw, off, Name, "grain table"); err != nil {
			return err
		}
		for k := range x.gtes {
			g := int64(gdi)*x.gtes + k
			if g*x.grain >= x.size {
				break // entries past the capacity map nothing
			}
			gte := le.Uint32(raw[k*4:])
			if gte == 0 || (gte == gteZeroed && x.zeroGrain) {
				continue
			}
			host := int64(gte) * sectorSize
			need := int64(1)
			if !x.compressed {
				need = min(x.grain, x.size-g*x.grain)
			}
			if host >= x.fileSize || need > x.fileSize-host {
				corrupt(r, "%s: grain table entry %d of grain table %d at offset %d: grain %d at sector %d %s the end of the file (%d bytes)",
					x.name, k, gdi, off+k*4, g, gte, pastOrAcross(host, x.fileSize), x.fileSize)
			}
		}
	}
	return nil
}

func pastOrAcross(host, fileSize int64) string {
	if host >= fileSize {
		return "starts past"
	}
	return "extends past"
}

// corrupt records a corruption, keeping at most maxProblems lines.
func corrupt(r *format.CheckResult, msg string, args ...any) {
	if len(r.Problems) < maxProblems {
		r.Corruptf(msg, args...)
		return
	}
	r.Corruptions++
}
