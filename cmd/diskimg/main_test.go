package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format/formattest"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// cliMu makes the tests' CLI runs one at a time: urfave/cli writes into
// package-level state (its help flag and command, the flags shared by
// commands) on every run.
var cliMu sync.Mutex

// runCLI runs diskimg with args and returns stdout, stderr and exit code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cliMu.Lock()
	defer cliMu.Unlock()
	var out, errOut bytes.Buffer
	code := run(append([]string{"diskimg"}, args...), &out, &errOut)
	return out.String(), errOut.String(), code
}

// golden compares got with testdata/name, rewriting it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		formattest.WriteFile(t, path, []byte(got))
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"missing file", []string{"info", filepath.Join(dir, "nope")}, 1, "no such file"},
		{"no argument", []string{"info"}, 1, "expected one FILE argument"},
		{"bad output", []string{"info", "--output=xml", "x"}, 1, `"xml" is not human or json`},
		{"unknown format", []string{"info", "-f", "foo", "../../testdata/demo.qcow2"}, 1, `unknown format "foo"`},
		{"directory", []string{"info", dir}, 1, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.msg) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.msg)
			}
			if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("error is not one line: %q", stderr)
			}
		})
	}
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 512: "512 B", 4096: "4 KiB", 200704: "196 KiB",
		1572864000: "1.46 GiB", 1 << 40: "1 TiB", 104865792: "100 MiB",
	} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// compactJSON re-encodes JSON without spacing, for comparing documents.
func compactJSON(t *testing.T, s string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%v: %q", err, s)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// TestVersionAndHelp checks --version and the help command.
func TestVersionAndHelp(t *testing.T) {
	if out, _, code := runCLI(t, "--version"); code != 0 || !strings.HasPrefix(out, "diskimg version ") {
		t.Errorf("--version: exit %d, %q", code, out)
	}
	if out, _, code := runCLI(t, "help", "convert"); code != 0 || !strings.Contains(out, "diskimg convert - ") {
		t.Errorf("help convert: exit %d, %q", code, out)
	}
}

func TestPermute(t *testing.T) {
	cmds := []*cli.Command{convertCommand(), planCommand(), infoCommand()}
	for _, tc := range []struct {
		in, want string // space-separated; want "" for an error
		err      string
	}{
		{"convert -O qcow2 a b --force", "convert -O qcow2 --force -- a b", ""},
		{"convert a -O qcow2 b -p", "convert -O qcow2 -p -- a b", ""},
		{"convert a b -o subformat=fixed -O vpc", "convert -o subformat=fixed -O vpc -- a b", ""},
		{"convert -Oqcow2 -pc a b", "convert -O qcow2 -p -c -- a b", ""},
		{"convert -pO qcow2 a b", "convert -p -O qcow2 -- a b", ""},
		{"convert -O=raw a b", "convert -O=raw -- a b", ""},
		{"convert -O raw - -", "convert -O raw -- - -", ""},
		{"convert a -- -b --force", "convert -- a -b --force", ""},
		{"convert --target-is-zero -n a /dev/x", "convert --target-is-zero -n -- a /dev/x", ""},
		{"plan disk.raw --cloud aws", "plan --cloud aws -- disk.raw", ""},
		{"plan disk.raw --quota tags=3 --quota servers=2", "plan --quota tags=3 --quota servers=2 -- disk.raw", ""},
		{"info d.vmdk --output=json", "info --output=json -- d.vmdk", ""},
		{"info d.vmdk -f", "", "info: option -f needs a value"},
		{"info --bogus d", "", "info: unknown option --bogus"},
		{"convert -pz a b", "", "convert: unknown option -pz"},
		{"--version", "--version", ""},
		{"help convert", "help convert", ""},
		{"nosuch -x", "nosuch -x", ""},
	} {
		got, err := permute(cmds, append([]string{"diskimg"}, strings.Fields(tc.in)...))
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case strings.Join(got[1:], " ") != tc.want:
			t.Errorf("%q -> %q, want %q", tc.in, strings.Join(got[1:], " "), tc.want)
		}
	}
}

// TestOptionsAfterOperands runs the examples as a user types them.
func TestOptionsAfterOperands(t *testing.T) {
	dir := formattest.QemuDir(t)
	raw := filepath.Join(dir, "disk.raw")
	formattest.MakeRaw(t, raw, 21<<20, formattest.Sparse)
	vmdk := filepath.Join(dir, "d.vmdk")
	formattest.Convert(t, raw, vmdk, "vmdk")
	q := filepath.Join(dir, "q.qcow2")
	os.WriteFile(q, []byte("replace me"), 0o644)

	if _, stderr, code := runCLI(t, "convert", "-O", "qcow2", vmdk, q, "--force"); code != 0 {
		t.Fatalf("convert ... --force: exit %d: %s", code, stderr)
	}
	if out := formattest.QemuCompareOutput(t, raw, q); !strings.Contains(string(out), "identical") {
		t.Errorf("convert with --force last: %s", out)
	}
	if out, stderr, code := runCLI(t, "plan", raw, "--cloud", "aws"); code != 0 && code != exitRefused || !strings.Contains(out, "cloud: aws") {
		t.Errorf("plan FILE --cloud aws: exit %d: %s%s", code, out, stderr)
	}
	out, stderr, code := runCLI(t, "info", vmdk, "--output=json")
	if code != 0 || !strings.Contains(out, `"format": "vmdk"`) {
		t.Errorf("info FILE --output=json: exit %d: %s%s", code, out, stderr)
	}
	// "--" ends the options: a file whose name starts with a dash.
	dash := filepath.Join(dir, "-x.raw")
	if _, stderr, code := runCLI(t, "convert", "-O", "raw", "--", raw, dash); code != 0 {
		t.Fatalf("convert -- SRC -x.raw: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(dash); err != nil {
		t.Error(err)
	}
	// -O defaults to raw, as qemu-img's.
	def := filepath.Join(dir, "default-out")
	if _, stderr, code := runCLI(t, "convert", vmdk, def); code != 0 {
		t.Fatalf("convert without -O: exit %d: %s", code, stderr)
	}
	if got, want := formattest.QemuInfo(t, def)["format"], "raw"; got != want {
		t.Errorf("convert without -O wrote %v, want %s", got, want)
	}
}

// TestUsageErrors: an unknown option is one line on stderr naming it, exit
// 1, nothing on stdout; no command prints the usage and exits 1.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"info", "--bogus", "x"},
		{"convert", "x", "y", "--nope"},
		{"compare", "-z", "a", "b"},
		{"--bogus"},
		{"nosuch"},
		{"convert", "-m", "many", "a", "b"},
		{"plan", "x"},
	} {
		out, stderr, code := runCLI(t, args...)
		if code != 1 || out != "" || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || stderr == "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 and one line on stderr", args, code, out, stderr)
		}
	}
	for _, tc := range []struct{ args, want string }{
		{"info --bogus x", "unknown option --bogus"},
		{"compare -z a b", "unknown option -z"},
		{"nosuch", `unknown command "nosuch"`},
		{"plan x", "--cloud NAME is required"},
	} {
		if _, stderr, _ := runCLI(t, strings.Fields(tc.args)...); !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: stderr %q, want %q", tc.args, stderr, tc.want)
		}
	}
	out, stderr, code := runCLI(t)
	if code != 1 || out != "" || !strings.Contains(stderr, "USAGE:") {
		t.Errorf("no arguments: exit %d, stdout %q, stderr %q; want the usage on stderr and exit 1", code, out, stderr)
	}
}

// TestHelpText: one default each for -m and -p, every readable format
// under -f (from the registry), and preallocation in -o help.
func TestHelpText(t *testing.T) {
	out, _, code := runCLI(t, "help", "convert")
	if code != 0 {
		t.Fatalf("help convert: exit %d", code)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && (f[0] == "-m" || f[0] == "-p") && strings.Count(line, "default") != 1 {
			t.Errorf("%s: %q shows %d defaults", f[0], line, strings.Count(line, "default"))
		}
	}
	formats := readableFormats()
	if len(formats) != 11 {
		t.Errorf("%d readable formats registered, want 11: %v", len(formats), formats)
	}
	for _, f := range formats {
		if !strings.Contains(out, f+",") && !strings.Contains(out, f+")") {
			t.Errorf("-f help does not list %s: %q", f, out)
		}
	}
}

// TestUnreadFormatsRefused: every command refuses a file in a format
// diskimg recognises but does not read, with exit 1 and a message naming
// the format; check --untrusted names it in its findings; convert writes
// nothing.
func TestUnreadFormatsRefused(t *testing.T) {
	dir := t.TempDir()
	files := map[string][]byte{}
	bochs := make([]byte, 4096)
	copy(bochs, "Bochs Virtual HD Image\x00")
	copy(bochs[32:], "Redolog\x00")
	copy(bochs[48:], "Growing\x00")
	binary.LittleEndian.PutUint32(bochs[64:], 0x00020000)
	files["bochs"] = bochs
	cloop := make([]byte, 4096)
	copy(cloop, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n")
	files["cloop"] = cloop
	luks := make([]byte, 1<<20)
	copy(luks, "LUKS\xba\xbe\x00\x02")
	files["luks"] = luks
	dmg := make([]byte, 8192)
	copy(dmg[8192-512:], "koly\x00\x00\x00\x04\x00\x00\x02\x00")
	files["dmg"] = dmg
	for name, data := range files {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".img")
			formattest.WriteFile(t, path, data)
			want := name + " images are not supported"
			dst := filepath.Join(dir, name+".out")
			for _, args := range [][]string{
				{"info", path}, {"info", "--output=json", path}, {"map", path}, {"inspect", path},
				{"check", path}, {"plan", "--cloud", "huawei-ims", path}, {"measure", "-O", "qcow2", path},
				{"convert", "-O", "qcow2", path, dst}, {"compare", path, path},
			} {
				out, stderr, code := runCLI(t, args...)
				wantCode := 1
				if args[0] == "compare" {
					wantCode = 2 // compare's "error"
				}
				if code != wantCode || !strings.Contains(stderr, want) {
					t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d naming %q", args, code, out, stderr, wantCode, want)
				}
			}
			if _, err := os.Stat(dst); err == nil {
				t.Errorf("convert wrote %s", dst)
			}
			out, stderr, code := runCLI(t, "check", "--untrusted", path)
			if code != 1 || !strings.Contains(stderr, want) || !strings.Contains(out, "the file is a "+name+" image, a format diskimg does not read") || strings.Contains(out, "No safety findings") {
				t.Errorf("check --untrusted: exit %d, stdout %q, stderr %q", code, out, stderr)
			}
			// Forced as raw it is read, and the findings still say what it is.
			out, _, code = runCLI(t, "check", "--untrusted", "-f", "raw", path)
			if !strings.Contains(out, name) {
				t.Errorf("check --untrusted -f raw: exit %d, %q names no %s", code, out, name)
			}
		})
	}
}

// TestParentFlag runs the commands on a differencing VDI, which names its
// parent by UUID only: without --parent they fail naming the UUID, info
// shows it; with --parent they read the chain, and a wrong parent fails.
func TestParentFlag(t *testing.T) {
	base := formattest.ReadFile(t, "../../testdata/vdi/data.vdi")
	dir := t.TempDir()
	child := bytes.Clone(base)
	binary.LittleEndian.PutUint32(child[0x4c:], 4)           // differencing
	copy(child[0x188:0x198], "child's own uuid")             // uuidCreate
	copy(child[0x1a8:0x1b8], base[0x188:0x198])              // uuidLinkage: the parent's uuidCreate
	binary.LittleEndian.PutUint32(child[0x200:], 0xffffffff) // block 0: the parent's
	other := bytes.Clone(base)
	copy(other[0x188:0x198], "another disk....")
	formattest.WriteFiles(t, dir, map[string][]byte{"base.vdi": base, "child.vdi": child, "other.vdi": other})
	p := func(name string) string { return filepath.Join(dir, name) }
	const uuid = "{75fc7ebf-2672-4d0a-b17a-952f9b63700b}" // data.vdi's, as VirtualBox shows it
	if _, stderr, code := runCLI(t, "map", p("child.vdi")); code != 1 || !strings.Contains(stderr, uuid) || !strings.Contains(stderr, "--parent") {
		t.Errorf("map without --parent: exit %d, %q", code, stderr)
	}
	out, stderr, code := runCLI(t, "info", p("child.vdi"))
	if code != 0 || !strings.Contains(out, "parent uuid: "+uuid) {
		t.Errorf("info without --parent: exit %d, %q, %q", code, out, stderr)
	}
	out, stderr, code = runCLI(t, "info", "--parent", p("base.vdi"), p("child.vdi"))
	if code != 0 || !strings.Contains(out, "backing file: "+p("base.vdi")) || !strings.Contains(out, "allocated size: 1.5 KiB") {
		t.Errorf("info --parent: exit %d, %q, %q", code, out, stderr)
	}
	if out, stderr, code := runCLI(t, "compare", "--parent", p("base.vdi"), p("child.vdi"), p("base.vdi")); code != 0 {
		t.Errorf("compare --parent: exit %d, %q, %q", code, out, stderr)
	}
	out, stderr, code = runCLI(t, "plan", "--cloud", "openstack", "--parent", p("base.vdi"), p("child.vdi"))
	if !strings.Contains(out, "--parent "+p("base.vdi")) {
		t.Errorf("plan --parent: exit %d: its commands do not repeat --parent:\n%s%s", code, out, stderr)
	}
	if _, stderr, code := runCLI(t, "convert", "--parent", p("other.vdi"), p("child.vdi"), p("out.raw")); code != 1 || !strings.Contains(stderr, "has UUID") {
		t.Errorf("convert with the wrong parent: exit %d, %q", code, stderr)
	}
}
