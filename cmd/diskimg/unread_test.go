package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
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
