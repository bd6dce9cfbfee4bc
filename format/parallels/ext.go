package parallels

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"math/bits"

	"github.com/diskimg/diskimg/format"
)

// The format extension: one cluster holding a magic, the MD5 of the rest
// of the cluster, then features (a header and data padded to 8 bytes),
// ended by a feature with a zero magic. Little-endian.
const (
	extMagic        = 0xab234cef23dcea87
	extHeaderLen    = 24 // magic (8), checksum (16)
	featHeaderLen   = 24 // magic (8), flags (8), data_size (4), unused (4)
	featEnd         = 0
	featDirtyBitmap = 0x20385fae252cb34a

	// The dirty bitmap feature: size in sectors (8), id (16), granularity
	// in sectors (4), l1_size (4), then l1_size 64-bit entries: 0 (all
	// bits clear), 1 (all set) or the sector of a cluster of bits.
	bitmapFeatLen  = 32
	maxGranularity = 1 << 22 // sectors: qemu keeps the bytes in 32 bits
)

// checkExtension validates the format extension as qemu-img does before
// it reads an image that has one: magic, checksum, features it knows,
// bitmaps that fit the disk. The bitmaps' clusters must lie in the file.
func (img *Image) checkExtension() error {
	off := img.extOff * sectorSize
	if err := format.CheckTable(Name, "ext_off (format extension)", off, img.clusterSize, img.File.Size()); err != nil {
		return err
	}
	c := make([]byte, img.clusterSize)
	if err := format.ReadFull(img.File, c, off, Name, "format extension"); err != nil {
		return err
	}
	le := binary.LittleEndian
	if len(c) < extHeaderLen || le.Uint64(c) != extMagic {
		return errorf("format extension magic", off, "not %#x", uint64(extMagic))
	}
	if sum := md5.Sum(c[extHeaderLen:]); !bytes.Equal(sum[:], c[8:extHeaderLen]) {
		return errorf("format extension checksum", off+8, "the MD5 of the cluster does not match")
	}
	ids := map[[16]byte]bool{}
	for pos := int64(extHeaderLen); ; {
		at := off + pos
		if pos > int64(len(c))-featHeaderLen {
			return errorf("format extension", at, "no end-of-features marker in the cluster")
		}
		magic, flags, size := le.Uint64(c[pos:]), le.Uint64(c[pos+8:]), int64(le.Uint32(c[pos+16:]))
		pos += featHeaderLen
		switch {
		case flags != 0:
			return errorf("format extension feature", at, "feature %#x has flags %#x, which qemu does not support", magic, flags)
		case size > int64(len(c))-pos:
			return errorf("format extension feature", at, "%d bytes of data overrun the cluster", size)
		}
		data := c[pos : pos+size]
		switch magic {
		case featEnd:
			return nil
		case featDirtyBitmap:
			if err := img.checkBitmap(data, at, ids); err != nil {
				return err
			}
		default:
			return errorf("format extension feature", at, "unknown feature %#x", magic)
		}
		pos = (pos + size + 7) &^ 7
	}
}

// checkBitmap validates a dirty bitmap feature found at file offset at.
func (img *Image) checkBitmap(d []byte, at int64, ids map[[16]byte]bool) error {
	le := binary.LittleEndian
	if len(d) < bitmapFeatLen {
		return errorf("dirty bitmap feature", at, "%d bytes, want at least %d", len(d), bitmapFeatLen)
	}
	sectors, gran, l1Size := le.Uint64(d), int64(le.Uint32(d[24:])), int64(le.Uint32(d[28:]))
	id := [16]byte(d[8:24])
	disk := img.Size() / sectorSize
	switch {
	case sectors != uint64(disk):
		return errorf("dirty bitmap feature", at, "bitmap of %d sectors on a disk of %d", sectors, disk)
	case gran == 0 || gran&(gran-1) != 0 || gran > maxGranularity:
		return errorf("dirty bitmap feature", at, "granularity of %d sectors is not a power of 2 up to %d", gran, maxGranularity)
	case l1Size > int64(len(d)-bitmapFeatLen)/8:
		return errorf("dirty bitmap feature", at, "l1_size %d overruns the feature's %d bytes", l1Size, len(d))
	case ids[id]:
		return errorf("dirty bitmap feature", at, "bitmap id %x appears twice", id)
	}
	ids[id] = true
	// qemu serialises the bitmap in 64-bit words, one bit per granule.
	var words int64
	if bytes := disk * sectorSize; bytes > 0 {
		shift := bits.TrailingZeros64(uint64(gran*sectorSize)) + 6
		words = (bytes-1)>>shift + 1
	}
	if want := (words*8 + img.clusterSize - 1) / img.clusterSize; l1Size != want {
		return errorf("dirty bitmap feature", at, "l1_size %d, the bitmap needs %d clusters", l1Size, want)
	}
	for i := range l1Size {
		e := le.Uint64(d[bitmapFeatLen+8*i:])
		if e <= 1 {
			continue
		}
		if e > uint64(img.File.Size()/sectorSize) || int64(e)*sectorSize > img.File.Size()-img.clusterSize {
			return errorf("dirty bitmap feature", at, "l1 entry %d: cluster at sector %d extends past the end of the file (%d bytes)", i, e, img.File.Size())
		}
	}
	return nil
}
