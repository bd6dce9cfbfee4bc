package convert

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/diskimg/diskimg/format"
)

// fileOut is the Target of an output file opened with a cache mode other
// than the default, or written in place (-n). With O_DIRECT, the aligned
// middle of each write goes through the direct descriptor and the
// unaligned edges through the page cache; the kernel keeps the two
// coherent. In place, the ranges a front-to-back writer skips (seeks
// over, or leaves past its last write) are made to read as zeros, unless
// the target is known to be zero already.
type fileOut struct {
	f      *os.File // opened normally (O_DSYNC with Cache.Sync)
	direct *os.File // O_DIRECT, nil when not used or refused
	bounce []byte   // aligned copy of unaligned data for direct writes
	pos    int64    // offset of the next Write

	inPlace  bool
	zeroGaps bool  // in place, without --target-is-zero
	block    bool  // a block device
	size     int64 // the target's size, in place
	end      int64 // in place: everything before it is written or zeroed
}

func (o *fileOut) Name() string                            { return o.f.Name() }
func (o *fileOut) Fd() uintptr                             { return o.f.Fd() }
func (o *fileOut) ReadAt(p []byte, off int64) (int, error) { return o.f.ReadAt(p, off) }

func (o *fileOut) Write(p []byte) (int, error) {
	n, err := o.WriteAt(p, o.pos)
	o.pos += int64(n)
	return n, err
}

func (o *fileOut) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += o.pos
	case io.SeekEnd:
		end, err := o.f.Seek(0, io.SeekEnd)
		if err != nil {
			return o.pos, err
		}
		off += end
	}
	if off < 0 {
		return o.pos, fmt.Errorf("seek to negative offset %d", off)
	}
	o.pos = off
	return off, nil
}

// Truncate sets the length of a new file. In place the target keeps its
// size; the range between the last write and size is zeroed instead.
func (o *fileOut) Truncate(size int64) error {
	if !o.inPlace {
		return o.f.Truncate(size)
	}
	return o.fill(min(size, o.size))
}

func (o *fileOut) WriteAt(p []byte, off int64) (int, error) {
	if err := o.fill(off); err != nil {
		return 0, err
	}
	n, err := o.writeAt(p, off)
	o.end = max(o.end, off+int64(n))
	return n, err
}

// fill zeroes the gap from the end of what was written up to off, in
// place.
func (o *fileOut) fill(off int64) error {
	if !o.inPlace || off <= o.end {
		return nil
	}
	start := o.end
	o.end = off
	if !o.zeroGaps {
		return nil
	}
	return o.zeroRange(start, off-start)
}

// zeroRange makes [off, off+n) read as zeros: a punched hole in a file,
// BLKZEROOUT on a block device (which the kernel does with the device's
// zeroing command where it has one), else written zeros.
func (o *fileOut) zeroRange(off, n int64) error {
	fd := int(o.f.Fd())
	if !o.block {
		err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil || !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		return o.writeZeros(off, n)
	}
	// BLKZEROOUT takes whole 512-byte sectors.
	head, tail := (off+511)/512*512, (off+n)/512*512
	if head >= tail {
		return o.writeZeros(off, n)
	}
	if err := o.writeZeros(off, head-off); err != nil {
		return err
	}
	r := [2]uint64{uint64(head), uint64(tail - head)}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r))); errno != 0 {
		if err := o.writeZeros(head, tail-head); err != nil {
			return err
		}
	}
	return o.writeZeros(tail, off+n-tail)
}

func (o *fileOut) writeZeros(off, n int64) error {
	for n > 0 {
		z := format.Zeros(min(n, format.ZerosLen))
		m, err := o.writeAt(z, off)
		if err != nil {
			return err
		}
		off, n = off+int64(m), n-int64(m)
	}
	return nil
}

// writeAt writes p at off: through O_DIRECT where aligned, else through
// the page cache.
func (o *fileOut) writeAt(p []byte, off int64) (int, error) {
	if o.direct == nil {
		return o.f.WriteAt(p, off)
	}
	done := 0
	if head := int(min(int64(len(p)), alignUp(off)-off)); head > 0 {
		n, err := o.f.WriteAt(p[:head], off)
		if done += n; err != nil {
			return done, err
		}
	}
	for len(p)-done >= directAlign {
		n := min((len(p)-done)/directAlign*directAlign, directChunk)
		buf := p[done : done+n]
		if !isAligned(buf) {
			if o.bounce == nil {
				o.bounce = alignedBuf(directChunk)
			}
			buf = o.bounce[:copy(o.bounce, buf)]
		}
		m, err := o.direct.WriteAt(buf, off+int64(done))
		if refusedDirect(err) && m == 0 {
			// The filesystem takes no O_DIRECT writes after all.
			o.direct.Close()
			o.direct = nil
			m, err := o.f.WriteAt(p[done:], off+int64(done))
			return done + m, err
		}
		if done += m; err != nil {
			return done, err
		}
	}
	if done < len(p) {
		n, err := o.f.WriteAt(p[done:], off+int64(done))
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func (o *fileOut) close() error {
	if o.direct != nil {
		o.direct.Close()
		o.direct = nil
	}
	return o.f.Close()
}
