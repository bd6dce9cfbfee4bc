package zvhd2

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
)

// spec builds a ZVHD2 file in memory for tests, laid out as the driver
// writes it (§2.1 of the spec): a test-only writer, so that images the
// reference vectors do not cover (1 TiB empty, dense zlib, payloads that
// inflate too far) can be made.
type spec struct {
	origSize int64
	method   uint8
	dense    bool
	blocks   map[uint32][]byte // block number → plaintext (≤ 2 MiB; zero-padded)
	payloads map[uint32][]byte // block number → raw payload, overriding blocks
}

func (s spec) build(t testing.TB) []byte {
	t.Helper()
	maxBlk := uint32(CeilDiv(uint64(s.origSize), BlockSize))
	d := &Descriptor{
		Features: Features, FormatVersion: FormatVersion, DataOffset: ^uint64(0),
		Timestamp: 820000000, CreatorVersion: CreatorVersion,
		OrigSize: uint64(s.origSize), CurrSize: CeilDiv(uint64(s.origSize), CurrSizeAlign) * CurrSizeAlign,
		Geometry: Geometry(uint64(s.origSize)), DiskType: DiskType,
		UUID:    [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		Version: VersionIndexed, BlockSize: BlockSize, MaxBlkNum: maxBlk,
		IndexSegSize: IndexSegSize, BitmapSegSize: BitmapSegSize,
		BitmapSegNum:   uint32(CeilDiv(uint64(maxBlk), BitmapBlocks)),
		CompressMethod: s.method,
	}
	copy(d.Cookie[:], CookieZVHD2)
	copy(d.CreatorApp[:], CreatorApp)
	if s.dense {
		d.IndexDense = 1
	}
	d.BitmapSize = d.BitmapSegNum * BitmapSegSize
	slot := func(d *Descriptor) []byte {
		b := make([]byte, SlotSize)
		d.Encode(b)
		SetChecksum(b)
		return b
	}
	var out bytes.Buffer
	out.Write(slot(d))
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	defer enc.Close()
	var entries []IndexEntry
	bitmap := make([]byte, d.BitmapSize)
	for b := range maxBlk {
		payload, ok := s.payloads[b]
		if !ok {
			data, ok := s.blocks[b]
			if !ok {
				continue
			}
			block := make([]byte, BlockSize)
			copy(block, data)
			if s.method == MethodZstd {
				payload = enc.EncodeAll(block, nil)
			} else {
				payload = deflate(t, block)
			}
		}
		rec := make([]byte, RecordLen(int64(len(payload))))
		EncodeRecordHeader(rec, RecordHeader{PayloadLen: uint32(len(payload)), Block: b})
		copy(rec[RecordHeaderLen:], payload)
		copy(rec[len(rec)-RecordEndLen:], RecordEnd)
		entries = append(entries, IndexEntry{Offset: uint64(out.Len()), Block: b, Length: uint32(len(rec))})
		out.Write(rec)
		bitmap[b/8] |= 1 << (b % 8)
	}
	d.NonZeroBlkNum = uint32(len(entries))
	out.Write(slot(d)) // mid-footer (with a fresh checksum)
	n := uint64(len(entries))
	if s.dense {
		n = uint64(maxBlk)
	}
	d.IndexSegNum = uint32(CeilDiv(n, SegBlocks))
	d.IndexSize = d.IndexSegNum * IndexSegSize
	d.IndexLBA = uint64(out.Len())
	index := make([]byte, d.IndexSize)
	for i, e := range entries {
		k := uint64(i)
		if s.dense {
			k = uint64(e.Block)
		}
		e.Encode(index[k*EntrySize:])
	}
	out.Write(index)
	d.BitmapLBA = uint64(out.Len())
	out.Write(bitmap)
	out.Write(slot(d))
	return out.Bytes()
}

// deflate compresses block the way the driver does: one zlib stream,
// sync-flushed and never finished.
func deflate(t testing.TB, block []byte) []byte {
	var buf bytes.Buffer
	zw, err := zlib.NewWriterLevel(&buf, 1)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(block)
	zw.Flush()
	return buf.Bytes()
}
