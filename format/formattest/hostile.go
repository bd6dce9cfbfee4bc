package formattest

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
)

// Stage says where a hostile image must fail.
type Stage int

const (
	AtOpen       Stage = iota // Open refuses it
	OnRead                    // Open succeeds; the extent map or a read fails
	AtOpenOrRead              // either is fine
)

// Hostile is one patched copy of a seed image and the error it must give:
// Name, the Seed file in the seed directory, the Patch that returns the
// patched bytes, the text the error must contain (Want), and the Stage
// that must fail. A test declares `type hostile formattest.Hostile` so
// its case tables may list the fields in order, unkeyed.
type Hostile struct {
	Name  string
	Seed  string
	Patch func(d []byte) []byte
	Want  string
	Stage Stage
}

// OpenMem opens data as fmtName under the untrusted policy, as a file in
// a temporary directory that holds nothing else.
func OpenMem(t testing.TB, fmtName string, data []byte) (format.Image, error) {
	f := &MemFile{Data: data, Path: filepath.Join(t.TempDir(), "x."+fmtName)}
	return format.NewOpener(format.Policy{Untrusted: true}).OpenImage(f, fmtName)
}

// ReadAll walks img's extent map and reads every guest byte of its Data
// extents (in 1 MiB pieces, so a huge sparse image costs its data only),
// and a sector of every other extent.
func ReadAll(img format.Image) error {
	buf := make([]byte, 1<<20)
	return format.Walk(img, 0, func(e format.Extent) error {
		end := e.End()
		if e.Status != format.Data {
			end = min(end, e.Start+512)
		}
		for off := e.Start; off < end; off += int64(len(buf)) {
			n := min(int64(len(buf)), end-off)
			if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
		}
		return nil
	})
}

// RunHostile opens each patched seed from seedDir as fmtName and asserts
// it fails at its stage with an error containing Want, a
// *format.FormatError unless the magic itself is wrong.
func RunHostile[H ~struct {
	Name  string
	Seed  string
	Patch func(d []byte) []byte
	Want  string
	Stage Stage
}](t *testing.T, fmtName, seedDir string, cases []H) {
	RunHostileOn(t, fmtName, func(name string) []byte { return ReadSeed(t, seedDir, name) }, cases)
}

// RunHostileOn is RunHostile with the seed images a test made: seed
// returns the bytes of the one a case names (a copy is patched).
func RunHostileOn[H ~struct {
	Name  string
	Seed  string
	Patch func(d []byte) []byte
	Want  string
	Stage Stage
}](t *testing.T, fmtName string, seed func(name string) []byte, cases []H) {
	for _, h := range cases {
		c := Hostile(h)
		t.Run(c.Name, func(t *testing.T) {
			img, err := OpenMem(t, fmtName, c.Patch(bytes.Clone(seed(c.Seed))))
			if err == nil {
				defer img.Close()
				if c.Stage == AtOpen {
					t.Fatalf("Open succeeded, want an error containing %q", c.Want)
				}
				err = ReadAll(img)
			} else if c.Stage == OnRead {
				t.Fatalf("Open: %v; want it to succeed and the read to fail", err)
			}
			if err == nil || !strings.Contains(err.Error(), c.Want) {
				t.Fatalf("error %v, want one containing %q", err, c.Want)
			}
			if !strings.Contains(c.Want, "wrong image type") {
				var fe *format.FormatError
				if !errors.As(err, &fe) {
					t.Errorf("error %v is not a *format.FormatError", err)
				}
			}
		})
	}
}
