package bench

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/remote/remotetest"
)

// TestRunObject runs the object-storage cases on a tiny corpus against
// the test server: every case completes, the one-pass runs write no
// local file, and the report prints.
func TestRunObject(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("qemu-img is required under CI=true")
		}
		t.Skip("qemu-img not installed")
	}
	srv := remotetest.Shared(t)
	bin := buildDiskimg(t)
	rep, err := RunObject(context.Background(), ObjectConfig{Diskimg: bin, Endpoint: srv.Endpoint, PathStyle: true, Runs: 1, Sizes: TinySizes, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Cases) != 4 {
		t.Fatalf("%d cases, want 4", len(rep.Cases))
	}
	for _, c := range rep.Cases {
		if c.OnePass.Seconds <= 0 || c.TwoStep.Seconds <= 0 || c.OnePass.MaxRSS <= 0 {
			t.Errorf("%s: one pass %+v, two steps %+v", c.Corpus, c.OnePass, c.TwoStep)
		}
		if c.MaxLocalFile != 0 {
			t.Errorf("%s: the one-pass run wrote a local file of %d bytes", c.Corpus, c.MaxLocalFile)
		}
		if c.LocalFile == 0 {
			t.Errorf("%s: the two-step run's local file was not seen", c.Corpus)
		}
		if (c.Cloud != "") != (c.TwoStepVerified != nil) || c.TwoStepVerified != nil && c.TwoStepVerified.Seconds <= c.TwoStep.Seconds {
			t.Errorf("%s (cloud %q): two steps %+v, verified %+v", c.Corpus, c.Cloud, c.TwoStep, c.TwoStepVerified)
		}
	}
	var b strings.Builder
	rep.WriteTable(&b)
	if !strings.Contains(b.String(), "sparse (--cloud huawei-ims)") {
		t.Errorf("table:\n%s", b.String())
	}
}
