package inspect

import (
	"bytes"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/inspect/inspecttest"
)

// The tool helpers are inspecttest's.
var (
	requireTool  = inspecttest.RequireTool
	requireTools = inspecttest.RequireTools
	run          = inspecttest.Run
	sparseFile   = inspecttest.SparseFile
	place        = inspecttest.Place
)

// blkid returns blkid's low-level probe of a file the test made.
func blkid(t testing.TB, path string) map[string]string {
	t.Helper()
	requireTool(t, "blkid", "util-linux")
	m := map[string]string{}
	for _, l := range strings.Split(run(t, "blkid", "-p", "-o", "export", path), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// inspectFile opens path with the format registry and inspects it.
func inspectFile(t testing.TB, path string) *Report {
	t.Helper()
	img, err := format.Open(path, "", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	r, err := Inspect(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// inspectBytes inspects an in-memory raw disk.
func inspectBytes(t testing.TB, data []byte) *Report {
	t.Helper()
	img, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(&formattest.MemFile{Data: data, Path: "mem.img"}, "raw")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Inspect(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func hasFinding(r *Report, sub string) bool {
	for _, f := range r.Findings {
		if strings.Contains(f.Message, sub) {
			return true
		}
	}
	return false
}

func openMem(data []byte) (format.Image, error) {
	return format.NewOpener(format.Policy{Untrusted: true}).OpenImage(&formattest.MemFile{Data: data, Path: "mem.img"}, "raw")
}

func lookupFormat(name string) (*format.Format, error) { return format.Lookup(name) }

// memDev is data as a device.
func memDev(data []byte) dev { return dev{r: bytes.NewReader(data), size: int64(len(data))} }

// ntfsOf parses the NTFS volume data holds.
func ntfsOf(t testing.TB, data []byte) *ntfsVol {
	t.Helper()
	v, err := parseNTFSBoot(memDev(data), data[:512])
	if err != nil {
		t.Fatal(err)
	}
	return v
}
