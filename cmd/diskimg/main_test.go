package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// runCLI runs diskimg with args and returns stdout, stderr and exit code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
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
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
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
