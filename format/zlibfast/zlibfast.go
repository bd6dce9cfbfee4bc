// Package zlibfast writes and reads zlib streams (RFC 1950) with a faster
// Adler-32.
//
// A streamOptimized VMDK holds every grain as a zlib stream. Go's
// hash/adler32 adds one byte at a time in a single dependency chain; on
// incompressible data it took a third of the VMDK writer's CPU, more than
// deflate. Update computes the same sums a 64-bit word at a time, in 16-bit
// lanes. Writer compresses a stream, Decoder inflates one held in memory.
package zlibfast

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"

	"github.com/klauspost/compress/flate"
)

const (
	mod = 65521 // the largest prime below 2^16

	cmfDeflate32K = 0x78 // CM 8 (deflate), CINFO 7 (32 KiB window)
	cmDeflate     = 8    // CMF low nibble: the compression method
	maxCINFO      = 7    // CMF high nibble: log2(window) - 8, at most 32 KiB
	flagDict      = 0x20 // FLG: a preset dictionary follows the header

	// lanes picks bytes 0, 2, 4 and 6 of a little-endian word into four
	// 16-bit lanes.
	lanes = 0x00ff00ff00ff00ff
	// sumLanes multiplied by four lanes puts their sum in the top lane.
	sumLanes = 0x0001000100010001
	// blockWords is how many words the lanes sum before they could
	// overflow (256 * 255 < 2^16).
	blockWords = 256
)

// Checksum returns the Adler-32 checksum of p.
func Checksum(p []byte) uint32 { return Update(1, p) }

// Update returns the Adler-32 checksum of the bytes summed in adler
// followed by p.
func Update(adler uint32, p []byte) uint32 {
	s1, s2 := uint64(adler&0xffff), uint64(adler>>16)
	for len(p) > 0 {
		q := p[:min(len(p), 8*blockWords)]
		p = p[len(q):]
		// Over n words of 8 bytes, where b(j,i) is byte i of word j and
		// S(j) the sum of word j's bytes:
		//   s1 += sum of all S(j)
		//   s2 += 8n*s1 + sum of (8(n-j) - i) * b(j,i)
		//       = 8n*s1 + 8 * sum of (n-j)*S(j) - sum of i * b(j,i)
		// t sums S, u sums t after each word, which is the sum of
		// (n-j)*S(j); even and odd sum each byte position over the words.
		var even, odd, t, u uint64
		n := uint64(len(q) / 16 * 2) // words in the lanes; the last 0-15 bytes go one at a time
		for len(q) >= 16 {
			// Two words a step: u gains t+S(j), then t+S(j)+S(j+1).
			x, y := binary.LittleEndian.Uint64(q), binary.LittleEndian.Uint64(q[8:])
			xe, xo, ye, yo := x&lanes, x>>8&lanes, y&lanes, y>>8&lanes
			even += xe + ye
			odd += xo + yo
			u += 2*t + (2*(xe+xo)+ye+yo)*sumLanes>>48
			t += (xe + xo + ye + yo) * sumLanes >> 48
			q = q[16:]
		}
		lane := func(v uint64, k uint) uint64 { return v >> (16 * k) & 0xffff }
		byPos := 2*lane(even, 1) + 4*lane(even, 2) + 6*lane(even, 3) +
			lane(odd, 0) + 3*lane(odd, 1) + 5*lane(odd, 2) + 7*lane(odd, 3)
		s2 += 8*n*s1 + 8*u - byPos
		s1 += t
		for _, c := range q {
			s1 += uint64(c)
			s2 += s1
		}
		s1 %= mod
		s2 %= mod
	}
	return uint32(s2<<16 | s1)
}

// Writer compresses to a zlib stream: a two-byte header, raw deflate,
// and the Adler-32 of the uncompressed bytes. Reset starts a new stream,
// so one Writer (and its deflate state) serves many.
type Writer struct {
	fw      *flate.Writer
	w       io.Writer
	head    [2]byte // the stream header, from the level
	started bool    // the header is written for the current stream
	adler   uint32
}

// NewWriter returns a Writer at a flate compression level.
func NewWriter(w io.Writer, level int) (*Writer, error) {
	fw, err := flate.NewWriter(w, level)
	if err != nil {
		return nil, err
	}
	// FLEVEL is advice to a decompressor; zlib's mapping of levels.
	var flevel byte
	switch {
	case level == flate.DefaultCompression || level == 6:
		flevel = 2
	case level >= 7:
		flevel = 3
	case level >= 2:
		flevel = 1
	}
	z := &Writer{fw: fw, w: w, head: [2]byte{cmfDeflate32K, flevel << 6}, adler: 1}
	z.head[1] += byte(31 - (uint(z.head[0])<<8+uint(z.head[1]))%31) // FCHECK
	return z, nil
}

// Reset discards the current stream and starts a new one to w.
func (z *Writer) Reset(w io.Writer) {
	z.fw.Reset(w)
	z.w, z.adler, z.started = w, 1, false
}

// start writes the header before the stream's first bytes.
func (z *Writer) start() error {
	if z.started {
		return nil
	}
	z.started = true
	_, err := z.w.Write(z.head[:])
	return err
}

// Write compresses p.
func (z *Writer) Write(p []byte) (int, error) {
	if err := z.start(); err != nil {
		return 0, err
	}
	n, err := z.fw.Write(p)
	z.adler = Update(z.adler, p[:n])
	return n, err
}

// Close ends the stream: the last deflate block and the checksum. It does
// not close the underlying writer.
func (z *Writer) Close() error {
	if err := z.start(); err != nil {
		return err
	}
	if err := z.fw.Close(); err != nil {
		return err
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], z.adler)
	_, err := z.w.Write(sum[:])
	return err
}

// Errors of Decoder.Decode, besides the deflate library's for bad deflate
// data.
var (
	ErrHeader     = errors.New("zlib: invalid header")
	ErrDictionary = errors.New("zlib: stream needs a preset dictionary")
	ErrChecksum   = errors.New("zlib: invalid checksum")
	ErrTooLong    = errors.New("zlib: stream inflates to more than the buffer holds")
	ErrTruncated  = errors.New("zlib: stream ends before its checksum")
)

// Decoder inflates zlib streams held in memory, checking each one's
// header and Adler-32 as Go's compress/zlib does. It keeps its inflate
// state from stream to stream; it is not safe for concurrent use.
type Decoder struct {
	src bytes.Reader // a ByteReader, so inflate reads no byte past the stream
	fr  io.ReadCloser
}

// Decode inflates the zlib stream at the start of src into dst and
// returns how many bytes it produced. A stream that ends before filling
// dst is not an error; one that would overflow it is ErrTooLong. Bytes
// after the checksum are ignored.
func (d *Decoder) Decode(dst, src []byte) (int, error) {
	if len(src) < 2 {
		return 0, ErrHeader
	}
	cmf, flg := src[0], src[1]
	if cmf&0x0f != cmDeflate || cmf>>4 > maxCINFO || (uint(cmf)<<8|uint(flg))%31 != 0 {
		return 0, ErrHeader
	}
	if flg&flagDict != 0 {
		return 0, ErrDictionary
	}
	d.src.Reset(src[2:])
	if d.fr == nil {
		d.fr = flate.NewReader(&d.src)
	} else if err := d.fr.(flate.Resetter).Reset(&d.src, nil); err != nil {
		return 0, err
	}
	n, ended := 0, false
	for n < len(dst) && !ended {
		m, err := d.fr.Read(dst[n:])
		n += m
		switch {
		case err == io.EOF: // the final block ended cleanly
			ended = true
		case err != nil:
			return n, err
		}
	}
	if !ended {
		// dst is full: the stream must end here.
		var one [1]byte
		m, err := io.ReadFull(d.fr, one[:])
		switch {
		case m > 0:
			return n, ErrTooLong
		case err != io.EOF:
			return n, err
		}
	}
	var sum [4]byte
	if _, err := io.ReadFull(&d.src, sum[:]); err != nil {
		return n, ErrTruncated
	}
	if binary.BigEndian.Uint32(sum[:]) != Checksum(dst[:n]) {
		return n, ErrChecksum
	}
	return n, nil
}
