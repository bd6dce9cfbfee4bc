package zvhd2

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"

	"github.com/diskimg/diskimg/format/internal/vhdspec"
)

// spec builds a ZVHD2 file in memory for tests, laid out as the driver
// writes it (§2.1 of docs/ZVHD2.md): a test-only writer, so that images the
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
	maxBlk := uint32(vhdspec.CeilDiv(uint64(s.origSize), vhdspec.BlockSize))
	d := &vhdspec.Descriptor{
		Features: vhdspec.Features, FormatVersion: vhdspec.FormatVersion, DataOffset: ^uint64(0),
		Timestamp: 820000000, CreatorVersion: vhdspec.CreatorVersion,
		OrigSize: uint64(s.origSize), CurrSize: vhdspec.CeilDiv(uint64(s.origSize), vhdspec.CurrSizeAlign) * vhdspec.CurrSizeAlign,
		Geometry: vhdspec.PackedGeometry(uint64(s.origSize)), DiskType: vhdspec.DiskType,
		UUID:    [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		Version: vhdspec.VersionIndexed, BlockSize: vhdspec.BlockSize, MaxBlkNum: maxBlk,
		CompressMethod: s.method,
	}
	copy(d.Cookie[:], vhdspec.CookieZVHD2)
	copy(d.CreatorApp[:], vhdspec.CreatorApp)
	if s.dense {
		d.IndexDense = 1
	}
	slot := func(d *vhdspec.Descriptor) []byte {
		b := make([]byte, vhdspec.SlotSize)
		d.Encode(b)
		vhdspec.SetChecksum(b)
		return b
	}
	var out bytes.Buffer
	out.Write(slot(d)) // the header: index and bitmap fields zero
	header := *d
	d.IndexSegSize, d.BitmapSegSize = vhdspec.IndexSegSize, vhdspec.BitmapSegSize
	d.BitmapSegNum = uint32(vhdspec.CeilDiv(uint64(maxBlk), vhdspec.BitmapBlocks))
	d.BitmapSize = d.BitmapSegNum * vhdspec.BitmapSegSize
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	defer enc.Close()
	var entries []vhdspec.IndexEntry
	bitmap := make([]byte, d.BitmapSize)
	for b := range maxBlk {
		payload, ok := s.payloads[b]
		if !ok {
			data, ok := s.blocks[b]
			if !ok {
				continue
			}
			block := make([]byte, vhdspec.BlockSize)
			copy(block, data)
			if s.method == vhdspec.MethodZstd {
				payload = enc.EncodeAll(block, nil)
			} else {
				payload = deflate(t, block)
			}
		}
		rec := make([]byte, vhdspec.RecordLen(int64(len(payload))))
		vhdspec.EncodeRecordHeader(rec, vhdspec.RecordHeader{PayloadLen: uint32(len(payload)), Block: b})
		copy(rec[vhdspec.RecordHeaderLen:], payload)
		copy(rec[len(rec)-vhdspec.RecordEndLen:], vhdspec.RecordEnd)
		entries = append(entries, vhdspec.IndexEntry{Offset: uint64(out.Len()), Block: b, Length: uint32(len(rec))})
		out.Write(rec)
		bitmap[b/8] |= 1 << (b % 8)
	}
	d.NonZeroBlkNum = uint32(len(entries))
	header.NonZeroBlkNum = d.NonZeroBlkNum
	out.Write(slot(&header)) // mid-footer (with a fresh checksum)
	n := uint64(len(entries))
	if s.dense {
		n = uint64(maxBlk)
	}
	d.IndexSegNum = uint32(vhdspec.CeilDiv(n, vhdspec.SegBlocks))
	d.IndexSize = d.IndexSegNum * vhdspec.IndexSegSize
	d.IndexLBA = uint64(out.Len())
	index := make([]byte, d.IndexSize)
	for i, e := range entries {
		k := uint64(i)
		if s.dense {
			k = uint64(e.Block)
		}
		e.Encode(index[k*vhdspec.EntrySize:])
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
