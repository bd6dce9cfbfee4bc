package formattest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Write is data at a guest offset: what a test-made image holds, laid
// over its parent's raw oracle (Overlay).
type Write struct {
	Off  int64
	Data []byte
}

// WithOracle makes an image of format fmtName and size bytes at path with
// qemu-img (extra create arguments args), runs the qemu-io commands cmds
// on it and on a sparse raw file of the same size, path+".raw", and
// returns that file: the image's raw oracle.
func WithOracle(t testing.TB, path, fmtName string, size int64, args []string, cmds ...string) string {
	t.Helper()
	Create(t, path, fmtName, fmt.Sprint(size), args...)
	raw := path + ".raw"
	WriteFile(t, raw, nil)
	if err := os.Truncate(raw, size); err != nil {
		t.Fatal(err)
	}
	QemuIO(t, fmtName, path, cmds...)
	QemuIO(t, "raw", raw, cmds...)
	return raw
}

// Overlay makes the raw oracle of a differencing image of size bytes over
// a parent whose oracle is parentRaw: a sparse copy at raw, with the
// ranges zeros cleared and the writes laid over it.
func Overlay(t testing.TB, parentRaw, raw string, size int64, zeros [][2]int64, writes []Write) {
	t.Helper()
	if out, err := exec.Command("cp", "--sparse=always", parentRaw, raw).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	f, err := os.OpenFile(raw, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Size() < size {
		f.Truncate(size)
	}
	for _, z := range zeros {
		if _, err := f.WriteAt(make([]byte, z[1]), z[0]); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.Data, w.Off); err != nil {
			t.Fatal(err)
		}
	}
}
