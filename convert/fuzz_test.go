package convert_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// memImage is an image in memory with a given extent map; ranges the map
// calls Zero or Unallocated hold zeros.
type memImage struct {
	data    []byte
	extents []format.Extent
}

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	n, err := format.ClipRead(p, off, int64(len(m.data)))
	copy(p[:n], m.data[off:])
	return n, err
}
func (m *memImage) Close() error       { return nil }
func (m *memImage) Size() int64        { return int64(len(m.data)) }
func (m *memImage) Info() *format.Info { return &format.Info{Format: "mem", VirtualSize: m.Size()} }
func (m *memImage) Extent(off int64) (format.Extent, error) {
	for _, e := range m.extents {
		if off >= e.Start && off < e.End() {
			e.Length = e.End() - off
			e.Start = off
			return e, nil
		}
	}
	return format.Extent{}, errors.New("offset out of range")
}

// imageFromFuzz builds a memImage from fuzz bytes: a size, then runs of
// (length, status, fill byte). It also returns a sparse size and a block
// size for the fake writer.
func imageFromFuzz(in []byte) (img *memImage, sparse, bs int64) {
	if len(in) < 4 {
		return nil, 0, 0
	}
	size := int64(binary.LittleEndian.Uint16(in)) + 1
	sparse = []int64{0, 512, 1024, 4096, convert.NoSparse}[int(in[2])%5]
	bs = []int64{1, 512, 4096, 3 * 512, 65536}[int(in[3])%5]
	in = in[4:]
	img = &memImage{data: make([]byte, size)}
	for off := int64(0); off < size; {
		n, st, fill := size-off, format.Data, byte(0xaa)
		if len(in) >= 3 {
			n = min(int64(in[0])*int64(in[1]&0x3f+1)+1, size-off)
			st = format.Status(in[1] >> 6 % 3)
			fill = in[2]
			in = in[3:]
		}
		if st == format.Data {
			for i := off; i < off+n; i++ {
				// Mostly the fill byte, with zero runs when fill is small.
				if fill > 16 || (i/512)%2 == 0 {
					img.data[i] = fill ^ byte(i)
				}
			}
		}
		img.extents = append(img.extents, format.Extent{Start: off, Length: n, Status: st, Offset: -1})
		off += n
	}
	return img, sparse, bs
}

func FuzzConvert(f *testing.F) {
	formattest.AddSeeds(f, "../testdata/convert")
	f.Add([]byte{0xff, 0x7f, 1, 2, 10, 0x45, 0, 200, 0x81, 7, 3, 0x02, 200})
	f.Fuzz(func(t *testing.T, in []byte) {
		img, sparse, bs := imageFromFuzz(in)
		if img == nil {
			return
		}
		// Raw to a stream: every byte must come out.
		var out bytes.Buffer
		res, err := convert.Convert(context.Background(), img, rawWriter(t), &out,
			convert.Options{SparseSize: sparse, Workers: 3, ChunkSize: 2048, Checksum: true})
		if err != nil {
			t.Fatal(err)
		}
		want := img.data
		if pad := (512 - len(want)%512) % 512; pad > 0 {
			want = append(append([]byte(nil), want...), make([]byte, pad)...)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("raw stream output differs (%d vs %d bytes)", out.Len(), len(want))
		}
		if res.DataBytes+res.ZeroBytes+res.SkippedBytes != img.Size() {
			t.Fatalf("result %+v does not add up to %d", res, img.Size())
		}
		// A writer with its own block size sees ordered, aligned blocks.
		fw := &fakeWriter{t: t, src: img.data, bs: bs, chunk: 1 << 62, buffers: map[uintptr]bool{}, inFlight: map[uintptr]int{}}
		wf := &format.WriterFormat{Name: "fake", New: func(format.Target, format.WriteOptions) (format.Writer, error) { return fw, nil }}
		if _, err := convert.Convert(context.Background(), img, wf, io.Discard, convert.Options{SparseSize: sparse, Workers: 2}); err != nil {
			t.Fatal(err)
		}
		if same, off, err := convert.Compare(context.Background(), img, &memImage{data: want, extents: []format.Extent{{Length: int64(len(want)), Status: format.Data}}}); err != nil || !same {
			t.Fatalf("Compare = %v, %d, %v", same, off, err)
		}
	})
}

// TestWriteSeeds regenerates testdata/convert when DISKIMG_WRITE_SEEDS is set.
func TestWriteSeeds(t *testing.T) {
	if os.Getenv("DISKIMG_WRITE_SEEDS") == "" {
		t.Skip("set DISKIMG_WRITE_SEEDS=1 to regenerate testdata/convert")
	}
	formattest.WriteFiles(t, "../testdata/convert", map[string][]byte{
		"mixed":   {0x00, 0x40, 1, 1, 40, 0x07, 0x31, 30, 0x45, 0, 90, 0x83, 5, 255, 0x3f, 0x99},
		"sparse":  {0xff, 0xff, 3, 4, 255, 0x7f, 0, 255, 0xbf, 0, 2, 0x00, 0x20},
		"tiny":    {0x10, 0x00, 2, 0},
		"zeroish": {0x00, 0x30, 4, 2, 100, 0x0f, 3, 100, 0x0f, 200},
	})
}
