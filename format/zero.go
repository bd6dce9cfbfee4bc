package format

import (
	"bytes"
	"encoding/binary"
	"io"
	"sync"
)

// ZerosLen is the longest slice Zeros returns.
const ZerosLen = 1 << 20

// zeroBytes is allocated on first use, not at start-up: a megabyte of heap
// before main brings the first garbage collection forward, which is most
// of the cost of converting an empty image.
var zeroBytes = sync.OnceValue(func() []byte { return make([]byte, ZerosLen) })

// Zeros returns n zero bytes, n <= ZerosLen, shared by every caller: they
// must not be modified.
func Zeros(n int64) []byte { return zeroBytes()[:n] }

// WriteZeros writes n zero bytes to w and returns how many it wrote.
func WriteZeros(w io.Writer, n int64) (int64, error) {
	var done int64
	for done < n {
		k, err := w.Write(Zeros(min(n-done, ZerosLen)))
		done += int64(k)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// IsZero reports whether b is all zero bytes. Data blocks usually fail on
// the first word, so that is checked alone first; the bulk compare goes
// through bytes.Equal, whose vectorised word-at-a-time loop beats a Go
// loop ORing eight 64-bit words (BenchmarkIsZero vs BenchmarkOrWords).
func IsZero(b []byte) bool {
	if len(b) >= 8 && binary.NativeEndian.Uint64(b) != 0 {
		return false
	}
	const chunk = 64 << 10
	zero := Zeros(chunk)
	for len(b) > 0 {
		n := min(len(b), chunk)
		if !bytes.Equal(b[:n], zero[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
