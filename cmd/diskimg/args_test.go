package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format/formattest"
)

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
	formattest.RequireQemu(t)
	dir := t.TempDir()
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
