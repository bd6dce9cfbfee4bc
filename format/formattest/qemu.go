// Package formattest is the conformance suite every format reader passes:
// images made by qemu-img in many variants must give the same info, the
// same bytes and the same data map through diskimg as through qemu-img.
package formattest

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
)

// RequireQemu skips t when qemu-img is not installed; under CI=true it
// fails instead, so a CI machine without qemu-img cannot pass silently.
func RequireQemu(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("qemu-img is required under CI=true (install qemu-utils)")
	}
	t.Skip("qemu-img not installed (install qemu-utils)")
}

// QemuDir is RequireQemu, then t's temporary directory: the opening of a
// test that makes its images with qemu-img.
func QemuDir(t testing.TB) string {
	t.Helper()
	RequireQemu(t)
	return t.TempDir()
}

// Qemu runs qemu-img with args and returns its standard output; a failure
// fails the test. Only call it on images the test made itself: qemu-img
// follows backing files and URLs.
func Qemu(t testing.TB, args ...string) []byte {
	t.Helper()
	RequireQemu(t)
	for try := 1; ; try++ {
		cmd := exec.Command("qemu-img", args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err == nil {
			return out
		}
		// qemu times its LUKS key derivation by the thread's CPU clock,
		// which on a virtual machine may not move during the first probe
		// run; qemu then gives up. Another attempt measures again.
		if try < 10 && strings.Contains(stderr.String(), "Unable to get accurate CPU usage") {
			continue
		}
		t.Fatalf("qemu-img %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
}

// Writer returns the registered output format name.
func Writer(t testing.TB, name string) *format.WriterFormat {
	t.Helper()
	w, err := format.LookupWriter(name)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// WriteBlocks feeds blocks to w in order as the conversion engine does,
// Data blocks through Encode first, and closes w.
func WriteBlocks(t testing.TB, w format.Writer, blocks []format.Block) {
	t.Helper()
	for i := range blocks {
		if blocks[i].Status == format.Data {
			if err := w.Encode(&blocks[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Write(&blocks[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// QemuRC runs qemu-img on files the test made and returns its exit code
// and combined output; only a failure to run it fails the test.
func QemuRC(t testing.TB, args ...string) (int, string) {
	t.Helper()
	RequireQemu(t)
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("qemu-img %v: %v", args, err)
	return -1, ""
}

// QemuIO runs the qemu-io commands cmds on the image at path (format
// fmtName), which the test made; a command that fails fails the test.
func QemuIO(t testing.TB, fmtName, path string, cmds ...string) {
	t.Helper()
	RequireQemu(t)
	args := []string{"-f", fmtName}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("error")) || bytes.Contains(out, []byte("failed")) {
		t.Fatalf("qemu-io %v: %v: %s", cmds, err, out)
	}
}

// QemuInfo returns `qemu-img info --output=json` of path, decoded.
func QemuInfo(t testing.TB, path string, args ...string) map[string]any {
	t.Helper()
	out := Qemu(t, append(append([]string{"info", "--output=json"}, args...), path)...)
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("qemu-img info output: %v", err)
	}
	return m
}

// MapEntry is one entry of `qemu-img map --output=json`.
type MapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset,omitempty"`
}

// QemuMap returns `qemu-img map --output=json` of path.
func QemuMap(t testing.TB, path string, args ...string) []MapEntry {
	t.Helper()
	out := Qemu(t, append(append([]string{"map", "--output=json"}, args...), path)...)
	var m []MapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("qemu-img map output: %v", err)
	}
	return m
}

// MapRun is a run of a map as qemu-img map --output=json shows it,
// without host offsets: neighbours with the same layer and flags merged.
type MapRun struct {
	Start, Length       int64
	Depth               int
	Present, Zero, Data bool
}

// AppendMapRun appends r to list, merged into its last run when they
// share the layer and flags.
func AppendMapRun(list []MapRun, r MapRun) []MapRun {
	if n := len(list); n > 0 {
		p := &list[n-1]
		if p.Depth == r.Depth && p.Present == r.Present && p.Zero == r.Zero && p.Data == r.Data {
			p.Length += r.Length
			return list
		}
	}
	return append(list, r)
}

// MapRuns returns img's map as qemu-img map would show it.
func MapRuns(t testing.TB, img format.Image) []MapRun {
	t.Helper()
	var out []MapRun
	err := format.Walk(img, 0, func(e format.Extent) error {
		zero, data := e.MapFlags()
		out = AppendMapRun(out, MapRun{e.Start, e.Length, e.Depth, e.Status != format.Unallocated, zero, data})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// QemuMapRuns returns qemu-img map's runs of path, merged as MapRuns.
func QemuMapRuns(t testing.TB, path string, args ...string) []MapRun {
	t.Helper()
	var out []MapRun
	for _, e := range QemuMap(t, path, args...) {
		out = AppendMapRun(out, MapRun{e.Start, e.Length, e.Depth, e.Present, e.Zero, e.Data})
	}
	return out
}

// QemuCompareOutput returns what `qemu-img compare` prints for two images
// (it exits 1 when they differ, which is not a failure here).
func QemuCompareOutput(t testing.TB, a, b string) []byte {
	t.Helper()
	RequireQemu(t)
	out, err := exec.Command("qemu-img", "compare", a, b).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Fatalf("qemu-img compare: %v", err)
		}
	}
	return out
}

// Open opens the image at path with the default policy (fmtName "" to
// probe), validates it (Validate) and closes it when the test ends; a
// failure fails the test.
func Open(t testing.TB, path, fmtName string) format.Image {
	t.Helper()
	return OpenPolicy(t, path, fmtName, format.Policy{})
}

// OpenPolicy is Open under the policy p.
func OpenPolicy(t testing.TB, path, fmtName string, p format.Policy) format.Image {
	t.Helper()
	img, err := format.Open(path, fmtName, p)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { img.Close() })
	if err := Validate(img); err != nil {
		t.Errorf("%s: %v", path, err)
	}
	return img
}
