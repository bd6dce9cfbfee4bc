package convert

import (
	"bytes"
	"encoding/binary"
)

// zeroRef is what IsZero compares against, a slice at a time.
var zeroRef = make([]byte, 64<<10)

// IsZero reports whether b is all zero bytes. Data blocks usually fail on
// the first word, so that is checked alone first; the bulk compare goes
// through bytes.Equal, whose vectorised word-at-a-time loop beats a Go
// loop ORing eight 64-bit words (BenchmarkIsZero vs BenchmarkOrWords).
func IsZero(b []byte) bool {
	if len(b) >= 8 && binary.NativeEndian.Uint64(b) != 0 {
		return false
	}
	for len(b) > 0 {
		n := min(len(b), len(zeroRef))
		if !bytes.Equal(b[:n], zeroRef[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
