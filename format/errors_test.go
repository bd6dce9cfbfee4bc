package format

import (
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
)

// failingReader returns n bytes, then err.
type failingReader struct {
	n   int
	err error
}

func (r failingReader) ReadAt(p []byte, off int64) (int, error) {
	n := min(r.n, len(p))
	clear(p[:n])
	return n, r.err
}

// TestReadFullErrors: a file that ends early says so; a read that fails
// says how and where, and keeps the cause for errors.Is.
func TestReadFullErrors(t *testing.T) {
	buf := make([]byte, 4096)
	err := ReadFull(failingReader{n: 512, err: syscall.EIO}, buf, 65536, "qcow2", "L2 table")
	if err == nil || !strings.Contains(err.Error(), "input/output error at offset 66048") || !errors.Is(err, syscall.EIO) {
		t.Errorf("I/O error: %v", err)
	}
	if strings.Contains(err.Error(), "file ends") {
		t.Errorf("an I/O error reads as a short file: %v", err)
	}
	err = ReadFull(failingReader{n: 100, err: io.EOF}, buf, 0, "vhd", "footer")
	if err == nil || !strings.Contains(err.Error(), "file ends after 100") || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short file: %v", err)
	}
	if err := ReadFull(failingReader{n: 4096}, buf, 0, "vhd", "footer"); err != nil {
		t.Errorf("full read: %v", err)
	}
}
