// Package zvhd reads ZVHD images, the older Huawei Cloud IMS format that
// ZVHD2 replaced (docs/ZVHD2.md, §3).
//
// A ZVHD file is a descriptor slot, one record per non-zero 2 MiB block in
// ascending order, and a copy of the descriptor slot. Unlike ZVHD2, the
// record payloads are consecutive slices of ONE zlib stream over the whole
// file, so a block can only be decoded after every block before it. The
// reader therefore keeps the inflater and its position: forward reads are
// linear, a read that goes backwards restarts decoding from the first
// record. The last decoded block is cached, so sequential reads decode
// each block once. Memory stays at one block plus the inflater.
//
// The record headers give a cheap map, read once at open: stored blocks
// are compressed Data, the gaps between them Zero (the writer drops
// all-zero blocks; there is no separate "unallocated" state).
package zvhd

import (
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zlib"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// Name is the format's name; qemu has none (only Huawei's qemu-img-hw).
const Name = "zvhd"

// Priority orders probing: right after ZVHD2, whose cookie differs.
const Priority = 51

// MaxPayload is the C driver's buffer limit for one ZVHD payload.
const MaxPayload = 4 << 20

func init() { vhdspec.Register(Name, Priority, vhdspec.CookieZVHD, Open, CheckFile) }

// Image is an open ZVHD image.
type Image struct {
	format.Base // Meta holds the size; Info is built on demand
	vhdspec.Reader
	d       *vhdspec.Descriptor
	records []record
	blocks  vhdspec.Blocks // the stored blocks; its lock guards the inflater

	zr   io.ReadCloser // the inflater; nil before the first read or after an error
	src  *payloads     // zr's input
	next int           // the record whose block zr yields next
}

// record is one stored block: where its payload is.
type record struct {
	off        int64 // record offset in the file
	payloadLen int64
	block      int64
}

// Specific is the "format-specific" part of `info`.
type Specific struct {
	// Sequential says that the data is one compressed stream: reading
	// backwards restarts decoding from the start of the file.
	Sequential bool `json:"sequential"`
	// CurrentSize is curr_size, orig_size rounded up to 1 GiB: what
	// Huawei's qemu-img-hw reports and converts out.
	CurrentSize  int64  `json:"current-size"`
	BlockSize    int64  `json:"block-size"`
	Compression  string `json:"compression"`
	StoredBlocks int64  `json:"stored-blocks"`
	vhdspec.Identity
}

// Open opens f as a ZVHD image and reads its record headers.
func Open(f format.File) (*Image, error) {
	d, trailerOff, err := readDescriptors(f)
	if err != nil {
		return nil, err
	}
	img := &Image{Base: format.Base{File: f, Meta: format.Info{VirtualSize: int64(d.OrigSize)}}, d: d}
	if err := img.scan(trailerOff); err != nil {
		return nil, err
	}
	img.Reader = vhdspec.NewReader(Name, img.Size(), &img.blocks, img.decode)
	return img, nil
}

// readDescriptors reads the descriptor of f, checks it and its copy in the
// last slot, and returns it with the copy's offset.
func readDescriptors(f format.File) (*vhdspec.Descriptor, int64, error) {
	if !vhdspec.HasCookie(f, vhdspec.CookieZVHD) {
		return nil, 0, fmt.Errorf("%s: no %q cookie: %w", Name, vhdspec.CookieZVHD, format.ErrWrongType)
	}
	hb := make([]byte, vhdspec.DescriptorSize)
	if err := format.ReadFull(f, hb, 0, Name, "descriptor"); err != nil {
		return nil, 0, err
	}
	if got, want := vhdspec.StoredChecksum(hb), vhdspec.DescriptorChecksum(hb); got != want {
		return nil, 0, format.Errorf(Name, "checksum", 64, "%#08x, computed %#08x", got, want)
	}
	fileSize := f.Size()
	if fileSize%vhdspec.SlotSize != 0 || fileSize < 2*vhdspec.SlotSize {
		return nil, 0, format.Errorf(Name, "file size", -1, "%d bytes is not a whole number of 4096-byte slots holding header and trailer", fileSize)
	}
	d := vhdspec.DecodeDescriptor(hb)
	if err := vhdspec.CheckSizes(Name, d, 0); err != nil {
		return nil, 0, err
	}
	trailerOff := fileSize - vhdspec.SlotSize
	tb := make([]byte, vhdspec.DescriptorSize)
	if err := format.ReadFull(f, tb, trailerOff, Name, "trailer"); err != nil {
		return nil, 0, err
	}
	if string(tb) != string(hb) {
		return nil, 0, format.Errorf(Name, "trailer", trailerOff, "the last slot is not a copy of the header descriptor")
	}
	return d, trailerOff, nil
}

// scan reads every record header between the header and trailer slots.
func (img *Image) scan(end int64) error {
	maxBlk := int64(vhdspec.CeilDiv(img.d.OrigSize, vhdspec.BlockSize))
	prev := int64(-1)
	for off := int64(vhdspec.SlotSize); off < end; {
		r, l, err := nextRecord(img.File, off, end, maxBlk, prev)
		if err != nil {
			return err
		}
		img.records = append(img.records, r)
		img.blocks.Add(r.block)
		off, prev = off+l, r.block
	}
	return nil
}

// nextRecord reads the record at off, which must end by end, hold a block
// below maxBlk and after block prev (-1 for none), and returns it with its
// length.
func nextRecord(f format.File, off, end, maxBlk, prev int64) (record, int64, error) {
	var hdr [vhdspec.RecordHeaderLen]byte
	var tail [vhdspec.RecordEndLen]byte
	if err := format.ReadFull(f, hdr[:], off, Name, "record"); err != nil {
		return record{}, 0, err
	}
	h, ok := vhdspec.DecodeRecordHeader(hdr[:])
	p, b := int64(h.PayloadLen), int64(h.Block)
	l := vhdspec.RecordLen(p)
	switch {
	case !ok:
		return record{}, 0, format.Errorf(Name, "record magic", off, "%q, want %q", hdr[:len(vhdspec.RecordMagic)], vhdspec.RecordMagic)
	case p == 0 || p > MaxPayload || l > end-off:
		return record{}, 0, format.Errorf(Name, "record payload length", off+12, "%d bytes: empty, over %d or past the trailer at %d", p, MaxPayload, end)
	case b >= maxBlk:
		return record{}, 0, format.Errorf(Name, "record block", off+16, "block %d past the %d blocks of the disk", b, maxBlk)
	case b <= prev:
		return record{}, 0, format.Errorf(Name, "record block", off+16, "block %d after block %d: records must ascend", b, prev)
	}
	if err := format.ReadFull(f, tail[:], off+l-vhdspec.RecordEndLen, Name, "record end marker"); err != nil {
		return record{}, 0, err
	}
	if string(tail[:]) != vhdspec.RecordEnd {
		return record{}, 0, format.Errorf(Name, "record end marker", off+l-vhdspec.RecordEndLen, "%q, want %q", tail[:], vhdspec.RecordEnd)
	}
	return record{off: off, payloadLen: p, block: b}, l, nil
}

// Info describes the image.
func (img *Image) Info() *format.Info {
	d := img.d
	return vhdspec.Info(Name, img.Size(), &Specific{
		Sequential:   true,
		CurrentSize:  int64(d.CurrSize),
		BlockSize:    vhdspec.BlockSize,
		Compression:  "zlib",
		StoredBlocks: int64(len(img.records)),
		Identity:     d.Identity(),
	})
}

// decode fills block with the block of record k, inflating forward from
// the current position or, for an earlier record, from the start.
func (img *Image) decode(k int, block []byte) error {
	if img.zr == nil || k < img.next {
		if img.zr != nil {
			img.zr.Close()
			img.zr = nil
		}
		src := &payloads{img: img}
		zr, err := zlib.NewReader(src)
		if err != nil {
			return img.payloadErr(0, err)
		}
		img.zr, img.src, img.next = zr, src, 0
	}
	for ; img.next <= k; img.next++ {
		// Exactly one block per record: the inflater is never asked for
		// more, whatever the stream would produce.
		_, err := io.ReadFull(img.zr, block)
		if err == nil && img.src.rec != img.next {
			// Each record holds the compressed form of exactly its own
			// block: the block must end inside its record's payload.
			err = fmt.Errorf("the block ends in the payload of record %d (block %d)", img.src.rec, img.records[img.src.rec].block)
		}
		if err != nil {
			j := img.next
			img.zr.Close()
			img.zr = nil
			return img.payloadErr(j, err)
		}
	}
	return nil
}

func (img *Image) payloadErr(k int, err error) error {
	var fe *format.FormatError
	if errors.As(err, &fe) {
		return fe
	}
	r := img.records[k]
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return &format.FormatError{Format: Name, Field: "record payload", Offset: r.off + vhdspec.RecordHeaderLen,
		Reason: fmt.Sprintf("block %d does not inflate to %d bytes", r.block, vhdspec.BlockSize), Err: err}
}

// payloads reads the record payloads one after another: the single zlib
// stream the writer cut into records. It implements io.ByteReader so the
// inflater reads no further ahead than it needs, and its buffer never
// spans two records, so rec tells which record the inflater is in.
type payloads struct {
	img   *Image
	rec   int    // record whose payload is being read
	pos   int64  // bytes of that payload loaded so far
	buf   []byte // loaded bytes not yet consumed
	store []byte
}

// payloadChunk is how much of a payload is read from the file at a time.
const payloadChunk = 64 << 10

func (s *payloads) fill() error {
	recs := s.img.records
	for len(s.buf) == 0 {
		if s.rec >= len(recs) {
			return io.EOF
		}
		r := recs[s.rec]
		if s.pos == r.payloadLen {
			if s.rec+1 >= len(recs) {
				return io.EOF
			}
			s.rec, s.pos = s.rec+1, 0
			continue
		}
		if s.store == nil {
			s.store = make([]byte, payloadChunk)
		}
		n := min(payloadChunk, r.payloadLen-s.pos)
		off := r.off + vhdspec.RecordHeaderLen + s.pos
		if err := format.ReadFull(s.img.File, s.store[:n], off, Name, "record payload"); err != nil {
			return err
		}
		s.buf, s.pos = s.store[:n], s.pos+n
	}
	return nil
}

func (s *payloads) Read(p []byte) (int, error) {
	if err := s.fill(); err != nil {
		return 0, err
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

func (s *payloads) ReadByte() (byte, error) {
	if err := s.fill(); err != nil {
		return 0, err
	}
	c := s.buf[0]
	s.buf = s.buf[1:]
	return c, nil
}
