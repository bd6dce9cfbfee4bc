package zvhd2

import (
	"context"
	"encoding/binary"
	"strings"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// CheckFile checks the structure of the ZVHD2 file f with qemu-img
// check's verdicts (see vhdspec.Check for how findings are graded).
//
// A trailer Open refuses (cookie, checksum, a field that disagrees with
// the file size or the other fields) is an error: nothing can be located
// without it. Everything else is walked and reported:
//   - corruptions: a header whose checksum is wrong (Huawei's driver
//     opens files for writing by it); a bitmap or index Open would refuse,
//     with every bad entry listed; a record whose prefix, block number,
//     payload length, end marker or codec framing (the zstd frame and its
//     block lengths, or the zlib header and sync flush) is wrong; a
//     mid-footer without its cookie;
//   - leaks: space between the header and the mid-footer that no index
//     entry's record covers (the writers put records back to back);
//   - warnings: bytes no reader looks at that the writers write as
//     docs/ZVHD2.md says: a header (its checksum right) that is not the
//     trailer with the index and bitmap fields zero (§2.1), slot padding
//     and reserved descriptor bytes (§1.2), unused record header fields
//     (§1.4), unused index entries (§2.4), a mid-footer that is not the
//     header with non_zero_blk_num set (its checksum fresh or, as the C
//     writer leaves it, the header's, §2.1).
//
// Every record is read, not decompressed: --verify compares the contents.
func CheckFile(ctx context.Context, f format.File) (*format.CheckResult, error) {
	d, trailerOff, err := readDescriptors(f)
	if err != nil {
		return nil, err
	}
	c := vhdspec.NewCheck(Name, f, int64(d.MaxBlkNum))
	trailer, err := c.Slot(trailerOff, "trailer")
	if err != nil {
		return nil, err
	}
	c.Reserved(trailer, vhdspec.OffCompressMethod+1, trailerOff, "trailer")
	header, err := c.Slot(0, "header")
	if err != nil {
		return nil, err
	}
	want := expectedHeader(trailer)
	if got, sum := vhdspec.StoredChecksum(header), vhdspec.DescriptorChecksum(header); got != sum {
		c.Corrupt("header at offset 0: checksum %#08x, computed %#08x", got, sum)
	} else {
		for _, field := range vhdspec.DiffFields(header, want) {
			switch {
			case field == "checksum":
			case finalField(field):
				c.Warn("header at offset 0: %s is not zero (the header is written before the index and bitmap)", field)
			default:
				c.Warn("header at offset 0: %s differs from the trailer's", field)
			}
		}
	}
	bitmap, err := readBitmap(f, d)
	if err != nil {
		return nil, err
	}
	if err := checkBitmap(d, bitmap, trailerOff); err != nil {
		c.Corrupt("%s", c.Problem(err))
	}
	rules := newEntryRules(d, bitmap)
	if err := checkMidFooter(c, rules.recordsEnd, want, d.NonZeroBlkNum); err != nil {
		return nil, err
	}
	if err := checkIndex(ctx, c, d, rules); err != nil {
		return nil, err
	}
	if err := rules.complete(trailerOff); err != nil {
		c.Corrupt("%s", c.Problem(err))
	}
	return c.R, nil
}

// finalField reports whether a descriptor field is one only the trailer
// knows (index and bitmap, the count of stored blocks): zero in the
// header.
func finalField(name string) bool {
	return strings.HasPrefix(name, "index_") && name != "index_contains_zero_blk" ||
		strings.HasPrefix(name, "bitmap_") || name == "non_zero_blk_num"
}

// expectedHeader returns the header slot a writer wrote for the trailer
// slot t: the trailer with the final fields zero, its checksum fresh.
func expectedHeader(t []byte) []byte {
	h := append([]byte(nil), t[:vhdspec.DescriptorSize]...)
	clear(h[vhdspec.OffIndexLBA : vhdspec.OffNonZeroBlkNum+4])
	vhdspec.SetChecksum(h)
	return h
}

// checkMidFooter checks the mid-footer slot at off against want, the
// expected header (§2.1): its cookie, which readers look for, and the rest,
// which none reads.
func checkMidFooter(c *vhdspec.Check, off int64, want []byte, n uint32) error {
	mid, err := c.Slot(off, "mid-footer")
	if err != nil {
		return err
	}
	if string(mid[:vhdspec.CookieLen]) != vhdspec.CookieZVHD2 {
		c.Corrupt("mid-footer at offset %d: cookie %q, want %q", off, mid[:vhdspec.CookieLen], vhdspec.CookieZVHD2)
		return nil
	}
	exp := append([]byte(nil), want...)
	binary.LittleEndian.PutUint32(exp[vhdspec.OffNonZeroBlkNum:], n)
	stale := vhdspec.StoredChecksum(want)
	vhdspec.SetChecksum(exp)
	for _, field := range vhdspec.DiffFields(mid, exp) {
		if field != "checksum" || vhdspec.StoredChecksum(mid) != stale {
			c.Warn("mid-footer at offset %d: %s is not the header's with non_zero_blk_num %d", off, field, n)
		}
	}
	return nil
}

// indexChunk is how many index entries are read at a time.
const indexChunk = 64 << 10

// checkIndex walks the index with rules, checks the record of every
// entry accepted and the space between records, and the index's unused
// entries.
func checkIndex(ctx context.Context, c *vhdspec.Check, d *vhdspec.Descriptor, rules *entryRules) error {
	n := indexEntries(d)
	indexOff := int64(d.IndexLBA)
	codec := vhdspec.CodecZlib
	if d.CompressMethod == vhdspec.MethodZstd {
		codec = vhdspec.CodecZstd
	}
	raw := make([]byte, min(n, indexChunk)*vhdspec.EntrySize)
	for first := int64(0); first < n; first += indexChunk {
		m := min(n-first, indexChunk)
		if err := format.ReadFull(c.F, raw[:m*vhdspec.EntrySize], indexOff+first*vhdspec.EntrySize, Name, "index"); err != nil {
			return err
		}
		for i := range m {
			if err := ctx.Err(); err != nil {
				return err
			}
			k := first + i
			e := vhdspec.DecodeIndexEntry(raw[i*vhdspec.EntrySize:])
			end := rules.next
			stored, err := rules.check(k, e)
			switch {
			case err != nil:
				c.Corrupt("%s", c.Problem(err))
				continue
			case !stored:
				if e.Block != 0 {
					c.Warn("index entry at offset %d: block %d in the entry of an absent block", indexOff+k*vhdspec.EntrySize+8, e.Block)
				}
				continue
			}
			leak(c, end, int64(e.Offset))
			rec, err := c.Read(int64(e.Offset), int64(e.Length), "record")
			if err != nil {
				return err
			}
			if h, ok := c.Record(rec, int64(e.Offset), codec); ok && h.Block != e.Block {
				c.Corrupt("record at offset %d: holds block %d, index entry %d says %d", e.Offset, h.Block, k, e.Block)
			}
			c.R.AllocatedClusters++
			c.R.CompressedClusters++
		}
	}
	leak(c, rules.next, rules.recordsEnd)
	// The rest of the last index segment holds no entries: zeros (§2.4).
	unused, err := c.Read(indexOff+n*vhdspec.EntrySize, int64(d.IndexSize)-n*vhdspec.EntrySize, "index")
	if err != nil {
		return err
	}
	if !format.IsZero(unused) {
		c.Warn("index at offset %d: the unused entries after entry %d are not zero", indexOff, n)
	}
	return nil
}

// leak reports the space [from, to) between records as leaked.
func leak(c *vhdspec.Check, from, to int64) {
	if to > from {
		c.Leak((to-from)/vhdspec.RecordAlign, "%d bytes at offset %d between records: no index entry refers to them", to-from, from)
	}
}

// Check checks the image's structure as CheckFile does.
func (img *Image) Check(ctx context.Context) (*format.CheckResult, error) {
	return CheckFile(ctx, img.File)
}
