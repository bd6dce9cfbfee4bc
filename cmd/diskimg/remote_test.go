package main

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/remote"
	"github.com/diskimg/diskimg/format/remote/remotetest"
)

// TestMain stops the S3 server the tests share.
func TestMain(m *testing.M) { os.Exit(remotetest.Run(m)) }

const demo = "../../testdata/demo.qcow2"

// serveDir serves dir over HTTP, with ranges unless noRanges.
func serveDir(t *testing.T, dir string, noRanges bool) string {
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if noRanges {
			r.Header.Del("Range")
		}
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestURLSources: every command that opens an image takes a URL and
// reports what it reports for the local file.
func TestURLSources(t *testing.T) {
	dir := t.TempDir()
	data := formattest.ReadFile(t, demo)
	os.WriteFile(filepath.Join(dir, "demo.qcow2"), data, 0o644)
	for _, noRanges := range []bool{false, true} {
		url := serveDir(t, dir, noRanges) + "/demo.qcow2"
		for _, args := range [][]string{
			{"map", "--output=json"},
			{"inspect", "--output=json"},
			{"check", "--output=json"},
			{"plan", "--cloud", "huawei-ims", "--output=json"},
		} {
			want, _, wcode := runCLI(t, append(args, demo)...)
			got, stderr, code := runCLI(t, append(args, url)...)
			got = strings.ReplaceAll(got, url, demo)
			if code != wcode || compactJSON(t, got) != compactJSON(t, want) {
				t.Errorf("%v (ranges %v): exit %d %q\n%s\nwant exit %d\n%s", args, !noRanges, code, stderr, got, wcode, want)
			}
		}
		if out, stderr, code := runCLI(t, "info", url); code != 0 || !strings.Contains(out, "file format: qcow2") {
			t.Errorf("info: exit %d, %q %q", code, out, stderr)
		}
		if out, stderr, code := runCLI(t, "compare", url, demo); code != 0 {
			t.Errorf("compare: exit %d, %q %q", code, out, stderr)
		}
		dst := filepath.Join(t.TempDir(), "out.vhdx")
		if _, stderr, code := runCLI(t, "convert", "-O", "vhdx", url, dst); code != 0 {
			t.Fatalf("convert: exit %d, %q", code, stderr)
		}
		if _, stderr, code := runCLI(t, "compare", dst, demo); code != 0 {
			t.Errorf("converted from a URL differs: %q", stderr)
		}
		if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 1 {
			t.Errorf("convert left %d files (a spool file?)", len(ents))
		}
	}
}

func TestS3Convert(t *testing.T) {
	srv := remotetest.Shared(t)
	p := remotetest.Prefix(t)
	s3 := []string{"--endpoint", srv.Endpoint, "--s3-path-style"}
	cli := func(args ...string) (string, string, int) {
		t.Helper()
		return runCLI(t, append(append(args[:1:1], s3...), args[1:]...)...)
	}
	out, stderr, code := cli("convert", "-O", "vpc", demo, p+"images/vm/demo.vhd")
	if code != 0 || !strings.HasSuffix(out, "  "+p+"images/vm/demo.vhd\n") || len(out) != 64+2+len(p+"images/vm/demo.vhd")+1 {
		t.Fatalf("convert to s3: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if _, stderr, code := cli("compare", p+"images/vm/demo.vhd", demo); code != 0 {
		t.Errorf("uploaded image differs: %q", stderr)
	}
	f, err := remote.Open(context.Background(), p+"images/vm/demo.vhd", srv.Options())
	if err != nil {
		t.Fatal(err)
	}
	if f.SHA256() != out[:64] {
		t.Errorf("metadata sha256 %q, printed %q", f.SHA256(), out[:64])
	}
	f.Close()
	if _, stderr, code := cli("convert", "-O", "vpc", demo, p+"images/vm/demo.vhd"); code != 1 || !strings.Contains(stderr, "already exists") {
		t.Errorf("overwrite without --force: exit %d, %q", code, stderr)
	}
	// From one bucket to another, by ranges, a streamOptimized VMDK
	// (tables at the end).
	if _, stderr, code := cli("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", p+"images/vm/demo.vhd", p+"other/demo.vmdk"); code != 0 {
		t.Fatalf("s3 to s3: %q", stderr)
	}
	if _, stderr, code := cli("compare", p+"other/demo.vmdk", demo); code != 0 {
		t.Errorf("s3 to s3 differs: %q", stderr)
	}
	// Plan, convert, upload and verify in one command.
	out, stderr, code = cli("convert", "--cloud", "huawei-ims", demo, p+"ims/import/")
	if code != 0 || !strings.Contains(out, "verified") {
		t.Fatalf("convert --cloud to s3: exit %d, %q %q", code, out, stderr)
	}
	if _, stderr, code := cli("info", p+"ims/import/demo.qcow2"); code != 0 {
		t.Errorf("info of the cloud upload: %q", stderr)
	}
	out, stderr, code = cli("convert", "--cloud", "huawei-ims", "--upload-format", "zvhd2", demo, p+"ims/fast")
	if code != 0 || !strings.Contains(out, p+"ims/fast/demo.zvhd2: zvhd2") || !strings.Contains(out, "verified") {
		t.Fatalf("convert --cloud --upload-format zvhd2 to s3: exit %d, %q %q", code, out, stderr)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	_, stderr, code = cli("info", p+"images/vm/demo.vhd")
	if code != 1 || !strings.Contains(stderr, "access denied") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("wrong credentials: exit %d, %q", code, stderr)
	}
}

// slowServer serves size bytes of random data at about rate bytes a
// second, with ranges.
func slowServer(t *testing.T, size, rate int) string {
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"slow"`)
		http.ServeContent(slowWriter{w, rate}, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

type slowWriter struct {
	http.ResponseWriter
	rate int
}

func (s slowWriter) Write(p []byte) (int, error) {
	time.Sleep(time.Duration(len(p)) * time.Second / time.Duration(s.rate))
	return s.ResponseWriter.Write(p)
}

// TestS3Interrupt: SIGINT in the middle of an upload aborts it: no
// multipart upload stays open and no object appears.
func TestS3Interrupt(t *testing.T) {
	srv := remotetest.Shared(t)
	p := remotetest.Prefix(t)
	src := slowServer(t, 96<<20, 24<<20) + "/disk.raw"
	cmd := cliCommand("convert", "--endpoint", srv.Endpoint, "--s3-path-style", "-f", "raw", "-O", "qcow2", src, p+"interrupt/disk.qcow2")
	var stderr bytes.Buffer
	cmd.Stderr, cmd.Stdout = &stderr, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for {
		open, err := remote.OpenUploads(ctx, p+"interrupt/", srv.Options())
		if err == nil && len(open) > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no upload started: %v; %s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 || !strings.Contains(stderr.String(), "interrupted") {
		t.Errorf("after SIGINT: %v, %q; want exit 130 (128 + SIGINT), interrupted", err, stderr.String())
	}
	if open, err := remote.OpenUploads(ctx, p+"interrupt/", srv.Options()); err != nil || len(open) != 0 {
		t.Errorf("uploads left open after SIGINT: %v, %v", open, err)
	}
	if _, err := remote.Open(ctx, p+"interrupt/disk.qcow2", srv.Options()); err == nil {
		t.Error("an interrupted upload left an object")
	}
}
