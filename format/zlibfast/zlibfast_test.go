package zlibfast

import (
	"bytes"
	"compress/zlib"
	"hash/adler32"
	"io"
	"math/rand/v2"
	"testing"

	kzlib "github.com/klauspost/compress/zlib"
)

func TestChecksum(t *testing.T) {
	const block = 8 * blockWords // bytes between reductions
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 3*block+37)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	// All 0xff is the worst case for overflow between reductions.
	ones := bytes.Repeat([]byte{0xff}, 5*block+15)
	for _, data := range [][]byte{random, ones, make([]byte, 100000)} {
		for _, n := range []int{0, 1, 15, 16, 17, 31, 32, block - 1, block, block + 1, 2*block + 16, len(data)} {
			p := data[:min(n, len(data))]
			if got, want := Checksum(p), adler32.Checksum(p); got != want {
				t.Errorf("Checksum of %d bytes = %#08x, hash/adler32 says %#08x", len(p), got, want)
			}
			// In two pieces, split off the 16-byte grid.
			k := len(p) / 3
			if got, want := Update(Checksum(p[:k]), p[k:]), adler32.Checksum(p); got != want {
				t.Errorf("Update over %d+%d bytes = %#08x, hash/adler32 says %#08x", k, len(p)-k, got, want)
			}
		}
	}
}

// The stream is what the zlib package of the deflate library writes, byte
// for byte, and decodes with Go's own zlib.
func TestWriter(t *testing.T) {
	text := bytes.Repeat([]byte("a grain of a streamOptimized disk "), 4000)
	rng := rand.New(rand.NewPCG(3, 4))
	random := make([]byte, 70000)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for _, level := range []int{1, 5, 6, 9, -1} {
		var got bytes.Buffer
		z, err := NewWriter(io.Discard, level)
		if err != nil {
			t.Fatal(err)
		}
		for _, data := range [][]byte{text, random, nil} {
			got.Reset()
			z.Reset(&got) // a reused writer, as the stream writers do
			if _, err := z.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := z.Close(); err != nil {
				t.Fatal(err)
			}
			var want bytes.Buffer
			kw, _ := kzlib.NewWriterLevel(&want, level)
			kw.Write(data)
			kw.Close()
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Errorf("level %d, %d bytes: stream differs from the zlib package's", level, len(data))
			}
			r, err := zlib.NewReader(bytes.NewReader(got.Bytes()))
			if err != nil {
				t.Fatalf("level %d: %v", level, err)
			}
			back, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(back, data) {
				t.Errorf("level %d, %d bytes: decoded %d bytes, err %v", level, len(data), len(back), err)
			}
		}
	}
}

func benchData() []byte {
	rng := rand.New(rand.NewPCG(5, 6))
	p := make([]byte, 64<<10) // a VMDK grain
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

func BenchmarkChecksum(b *testing.B) {
	p := benchData()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		Checksum(p)
	}
}

func BenchmarkChecksumStdlib(b *testing.B) {
	p := benchData()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		adler32.Checksum(p)
	}
}

// serial is Adler-32 by its definition, one byte at a time, from any
// running sum.
func serial(adler uint32, p []byte) uint32 {
	s1, s2 := adler&0xffff, adler>>16
	for _, c := range p {
		s1 = (s1 + uint32(c)) % mod
		s2 = (s2 + s1) % mod
	}
	return s2<<16 | s1
}

func FuzzChecksum(f *testing.F) {
	f.Add([]byte{}, uint32(1))
	f.Add(bytes.Repeat([]byte{0xff}, 3000), uint32(0xfff0fff0))
	f.Fuzz(func(t *testing.T, p []byte, adler uint32) {
		adler = adler>>16%mod<<16 | adler&0xffff%mod // a sum Update can return
		if got, want := Update(adler, p), serial(adler, p); got != want {
			t.Fatalf("Update(%#08x, %d bytes) = %#08x, want %#08x", adler, len(p), got, want)
		}
	})
}

// zlibStream compresses p with Go's own zlib writer.
func zlibStream(p []byte, level int) []byte {
	var b bytes.Buffer
	w, _ := zlib.NewWriterLevel(&b, level)
	w.Write(p)
	w.Close()
	return b.Bytes()
}

func TestDecoder(t *testing.T) {
	text := bytes.Repeat([]byte("a grain of a streamOptimized disk "), 2000)
	rng := rand.New(rand.NewPCG(7, 8))
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	var d Decoder // one decoder for every stream, as the VMDK reader uses it
	for _, data := range [][]byte{text, random, nil, text[:1]} {
		for _, level := range []int{0, 1, 9} {
			stream := zlibStream(data, level)
			for _, room := range []int{len(data), len(data) + 100} {
				dst := make([]byte, room)
				n, err := d.Decode(dst, append(stream, "trailing"...))
				if err != nil || !bytes.Equal(dst[:n], data) {
					t.Errorf("%d bytes at level %d into %d: got %d bytes, err %v", len(data), level, room, n, err)
				}
			}
			if len(data) > 0 {
				if _, err := d.Decode(make([]byte, len(data)-1), stream); err != ErrTooLong {
					t.Errorf("%d bytes into one less: err %v, want ErrTooLong", len(data), err)
				}
			}
		}
	}

	good := zlibStream(text, 6)
	mutate := func(i int, b byte) []byte {
		s := bytes.Clone(good)
		s[i] = b
		return s
	}
	for _, c := range []struct {
		name   string
		stream []byte
		want   error
	}{
		{"empty", nil, ErrHeader},
		{"one byte", good[:1], ErrHeader},
		{"method 7", mutate(0, 0x77), ErrHeader},
		{"window 64 KiB", mutate(0, 0x88), ErrHeader},
		{"header check", mutate(1, good[1]+1), ErrHeader},
		{"preset dictionary", []byte{0x78, 0xbb}, ErrDictionary},
		{"checksum", mutate(len(good)-1, good[len(good)-1]^1), ErrChecksum},
		{"no checksum", good[:len(good)-4], ErrTruncated},
		{"deflate cut short", good[:len(good)/2], io.ErrUnexpectedEOF},
	} {
		_, err := d.Decode(make([]byte, len(text)), c.stream)
		if err != c.want {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
	}
	// After a failure the decoder still decodes.
	if n, err := d.Decode(make([]byte, len(text)), good); err != nil || n != len(text) {
		t.Errorf("after failures: %d bytes, err %v", n, err)
	}
}

// The decoder accepts exactly the streams Go's compress/zlib accepts (up
// to the buffer's size), with the same output.
func FuzzDecode(f *testing.F) {
	f.Add(zlibStream([]byte("hello, grain"), 6), uint16(100))
	f.Add(zlibStream(bytes.Repeat([]byte{0}, 5000), 9), uint16(4999))
	f.Add(zlibStream(nil, 1), uint16(0))
	f.Add([]byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01}, uint16(1))
	f.Fuzz(func(t *testing.T, stream []byte, room uint16) {
		var d Decoder
		dst := make([]byte, room)
		n, err := d.Decode(dst, stream)

		var want []byte
		r, werr := zlib.NewReader(bytes.NewReader(stream))
		if werr == nil {
			want, werr = io.ReadAll(io.LimitReader(r, int64(room)+1))
		}
		switch {
		case werr == nil && len(want) > int(room):
			// Too long, or broken further on than compress/zlib read.
			if err == nil {
				t.Fatalf("compress/zlib gives %d+ bytes for a %d-byte buffer; Decode gives %d bytes", len(want), room, n)
			}
		case werr == nil:
			if err != nil || !bytes.Equal(dst[:n], want) {
				t.Fatalf("compress/zlib gives %d bytes; Decode: %d bytes, err %v", len(want), n, err)
			}
		case err == nil:
			t.Fatalf("compress/zlib fails (%v); Decode gives %d bytes", werr, n)
		}
	})
}
