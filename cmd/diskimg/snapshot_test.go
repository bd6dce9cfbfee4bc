package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// snapshotDisk makes a qcow2 image over a backing file with three
// internal snapshots, data written between them by qemu-io (compressed
// and zero clusters too), the last taken after the disk grew; it returns
// the image's directory and name.
func snapshotDisk(t *testing.T, opts string) (dir, name string) {
	t.Helper()
	dir = t.TempDir()
	formattest.Generate(t, dir, "base", "qcow2", 6<<20, formattest.Sparse)
	path := filepath.Join(dir, "disk.qcow2")
	formattest.Create(t, path, "qcow2", "6M", "-o", opts, "-b", "base.qcow2", "-F", "qcow2")
	io := func(cmds ...string) {
		args := []string{"-f", "qcow2"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		if out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io: %v: %s", err, out)
		}
	}
	io("write -P 0x11 0 1M", "write -P 0x12 5M 70000")
	formattest.Qemu(t, "snapshot", "-c", "first", path)
	io("write -P 0x21 512k 1M", "write -z 5M 64k", "write -c -P 0x22 2M 64k")
	formattest.Qemu(t, "snapshot", "-c", "second, with a comma", path)
	io("discard 0 512k", "write -P 0x31 3M 4k")
	formattest.Qemu(t, "resize", "-f", "qcow2", path, "20M")
	io("write -P 0x32 19M 100k")
	formattest.Qemu(t, "snapshot", "-c", "2", path) // a name that is another's id
	io("write -P 0x41 1M 1M")
	return dir, "disk.qcow2"
}

// TestSnapshotInfoMatchesQemu: info lists the snapshots as qemu-img info
// does, in JSON and in its table.
func TestSnapshotInfoMatchesQemu(t *testing.T) {
	formattest.RequireQemu(t)
	dir, name := snapshotDisk(t, "cluster_size=64k")
	inDir(t, dir)
	ours := infoJSON(t, name)
	if theirs := formattest.QemuInfo(t, name); !reflect.DeepEqual(ours, theirs) {
		t.Errorf("info differs:\ndiskimg  %v\nqemu-img %v", ours, theirs)
	}
	out, _, _ := runCLI(t, "info", "--output=json", name)
	if !strings.HasPrefix(out, "{\n    \"snapshots\": [\n        {\n            \"icount\": 0,\n            \"vm-clock-nsec\": 0,\n            \"name\": \"first\",") {
		t.Errorf("snapshots not first, or not in qemu-img's key order:\n%s", out)
	}
	out, _, code := runCLI(t, "info", name)
	want := string(formattest.Qemu(t, "info", name))
	var kept []string
	for _, l := range strings.SplitAfter(out, "\n") {
		if !strings.HasPrefix(l, "allocated size: ") {
			kept = append(kept, l)
		}
	}
	if got := strings.Join(kept, ""); code != 0 || got != want {
		t.Errorf("human info differs:\ndiskimg:\n%s\nqemu-img:\n%s", got, want)
	}
}

// TestConvertSnapshotMatchesQemu: convert -l, in each of qemu-img's
// forms, writes what qemu-img convert -l writes (qemu-img compare), to
// qcow2 and raw; measure -l measures the snapshot.
func TestConvertSnapshotMatchesQemu(t *testing.T) {
	formattest.RequireQemu(t)
	for _, opts := range []string{"cluster_size=64k", "extended_l2=on"} {
		t.Run(opts, func(t *testing.T) {
			dir, name := snapshotDisk(t, opts)
			inDir(t, dir)
			for i, sel := range []string{
				"1", "first", "2", "snapshot.id=2", "snapshot.name=2", "snapshot.name=second,, with a comma",
				"snapshot.id=3,snapshot.name=2", "snapshot.id=1,snapshot.name=first",
			} {
				ref := filepath.Join(dir, "ref.raw")
				formattest.Qemu(t, "convert", "-O", "raw", "-l", sel, name, ref)
				for _, fmtName := range []string{"raw", "qcow2"} {
					out := filepath.Join(dir, "out."+fmtName)
					if _, stderr, code := runCLI(t, "convert", "-q", "-O", fmtName, "-l", sel, name, out); code != 0 {
						t.Fatalf("convert -l %q: exit %d: %s", sel, code, stderr)
					}
					if cmp := formattest.QemuCompareOutput(t, ref, out); !bytes.Contains(cmp, []byte("Images are identical")) {
						t.Errorf("convert -O %s -l %q: qemu-img compare: %s", fmtName, sel, cmp)
					}
					os.Remove(out)
				}
				if i == 0 {
					ours, _, _ := runCLI(t, "measure", "-O", "qcow2", "-l", sel, name)
					theirs := string(formattest.Qemu(t, "measure", "-O", "qcow2", "-l", sel, name))
					if !strings.HasPrefix(theirs, ours) {
						t.Errorf("measure -l %q: diskimg %q, qemu-img %q", sel, ours, theirs)
					}
				}
				os.Remove(ref)
			}
			for _, c := range []struct{ sel, want string }{
				{"4", `no snapshot with id or name "4"`},
				{"snapshot.id=1,snapshot.name=2", `no snapshot with id "1" and name "2"`},
				{"snapshot.tag=1", `invalid parameter "snapshot.tag"`},
				{"snapshot.id", `no snapshot with id "on"`}, // qemu's bare key is "on"
			} {
				out := filepath.Join(dir, "bad.raw")
				if _, stderr, code := runCLI(t, "convert", "-l", c.sel, name, out); code != 1 || !strings.Contains(stderr, c.want) {
					t.Errorf("convert -l %q: exit %d, %q; want exit 1 naming %q", c.sel, code, stderr, c.want)
				}
				if _, err := os.Stat(out); err == nil {
					t.Errorf("convert -l %q wrote %s", c.sel, out)
				}
			}
		})
	}
	// A format without internal snapshots says so.
	dir := t.TempDir()
	path := formattest.Generate(t, dir, "d", "vdi", 1<<20, formattest.Sparse)
	if _, stderr, code := runCLI(t, "convert", "-l", "1", path, filepath.Join(dir, "o.raw")); code != 1 || !strings.Contains(stderr, "internal snapshots of vdi images are not supported") {
		t.Errorf("convert -l of a vdi: exit %d, %q", code, stderr)
	}
}

// inDir runs the rest of the test in dir, so both tools see the same
// relative names.
func inDir(t *testing.T, dir string) {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chdir(wd) })
}
