package format

import (
	"bytes"
	"testing"
	"unsafe"
)

// TestIsZero sets each byte in turn, at every length up to a few words past
// the first-word shortcut and across a 64 KiB chunk boundary.
func TestIsZero(t *testing.T) {
	lengths := []int{}
	for n := 0; n < 300; n++ {
		lengths = append(lengths, n)
	}
	lengths = append(lengths, 64<<10-1, 64<<10, 64<<10+1, 3<<20)
	for _, n := range lengths {
		b := make([]byte, n)
		if !IsZero(b) {
			t.Fatalf("%d zeros not zero", n)
		}
		for _, i := range []int{0, n / 2, n - 1} {
			if i < 0 || i >= n {
				continue
			}
			b[i] = 1
			if IsZero(b) {
				t.Fatalf("len %d with byte %d set is zero", n, i)
			}
			b[i] = 0
		}
		if n < 300 {
			for i := range b {
				b[i] = 0x80
				if IsZero(b) {
					t.Fatalf("len %d with byte %d set is zero", n, i)
				}
				b[i] = 0
			}
		}
	}
}

func TestZeros(t *testing.T) {
	for _, n := range []int64{0, 1, 4096, ZerosLen} {
		z := Zeros(n)
		if int64(len(z)) != n || !IsZero(z) {
			t.Fatalf("Zeros(%d): %d bytes, zero %v", n, len(z), IsZero(z))
		}
	}
}

func TestWriteZeros(t *testing.T) {
	for _, n := range []int64{0, 1, ZerosLen, 2*ZerosLen + 5} {
		var buf bytes.Buffer
		m, err := WriteZeros(&buf, n)
		if err != nil || m != n || int64(buf.Len()) != n || !IsZero(buf.Bytes()) {
			t.Fatalf("WriteZeros(%d): %d, %v; %d bytes, zero %v", n, m, err, buf.Len(), IsZero(buf.Bytes()))
		}
	}
}

// BenchmarkIsZero measures zero detection on zero buffers (the worst
// case: every byte is looked at); ns/GiB is reported.
func BenchmarkIsZero(b *testing.B) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if !IsZero(buf) {
			b.Fatal("not zero")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)*1024, "ns/GiB")
}

// BenchmarkOrWords is the pure Go word loop IsZero was measured against.
func BenchmarkOrWords(b *testing.B) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		w := unsafe.Slice((*uint64)(unsafe.Pointer(&buf[0])), len(buf)/8)
		for i := 0; i < len(w); i += 8 {
			if w[i]|w[i+1]|w[i+2]|w[i+3]|w[i+4]|w[i+5]|w[i+6]|w[i+7] != 0 {
				b.Fatal("not zero")
			}
		}
	}
}
