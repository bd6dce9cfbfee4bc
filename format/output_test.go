package format_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// writeSample writes the same sequence through an Output: small and large
// writes, a short skip, a long skip, a rewrite of the start, and a hole at
// the end.
func writeSample(t *testing.T, o *format.Output) {
	t.Helper()
	big := bytes.Repeat([]byte{2}, 128<<10)
	steps := []func() error{
		func() error { return o.Skip(4096) }, // the header, written last
		func() error { _, err := o.Write([]byte("abc")); return err },
		func() error { return o.Skip(100) },
		func() error { _, err := o.Write(big); return err },
		func() error { return o.SkipTo(1 << 20) },
		func() error { _, err := o.Write([]byte("x")); return err },
		func() error { return o.Finish(3 << 20) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if o.Seekable() {
		if err := o.Rewind(); err != nil {
			t.Fatal(err)
		}
		if _, err := o.Write([]byte("HEAD")); err != nil {
			t.Fatal(err)
		}
		if err := o.EndRewrite(); err != nil {
			t.Fatal(err)
		}
	}
}

func sampleBytes(head bool) []byte {
	want := make([]byte, 3<<20)
	if head {
		copy(want, "HEAD")
	}
	copy(want[4096:], "abc")
	copy(want[4096+3+100:], bytes.Repeat([]byte{2}, 128<<10))
	want[1<<20] = 'x'
	return want
}

func TestOutput(t *testing.T) {
	var pipe bytes.Buffer
	o, err := format.NewOutput(&pipe, "test")
	if err != nil {
		t.Fatal(err)
	}
	writeSample(t, o)
	if !bytes.Equal(pipe.Bytes(), sampleBytes(false)) {
		t.Error("pipe: wrong bytes")
	}
	if err := o.Rewind(); err != format.ErrNotSeekable {
		t.Errorf("Rewind on a pipe: %v", err)
	}

	path := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o, err = format.NewOutput(f, "test")
	if err != nil {
		t.Fatal(err)
	}
	writeSample(t, o)
	got := formattest.ReadFile(t, path)
	if !bytes.Equal(got, sampleBytes(true)) {
		t.Error("file: wrong bytes")
	}
	// The long skip and the end are holes: far less than 3 MiB is stored.
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Errorf("file stores %d bytes, want holes", st.Blocks*512)
	}

	// A destination not at its start is refused.
	if _, err := format.NewOutput(f, "test"); err == nil || !strings.Contains(err.Error(), "not at its start") {
		t.Errorf("NewOutput at offset %d: %v", o.Pos(), err)
	}
}
