package limits

import (
	"strings"
	"testing"
)

func TestPlanSuggestsSparsify(t *testing.T) {
	p := huawei(t)
	for _, tc := range []struct {
		name     string
		img      Image
		req      Request
		path     string // without --sparsify
		suggest  string // the path with it, "" when not suggested
		uploadGB int64
	}{
		// 150 GiB of data goes fast; without its 60 GiB of free space, normal.
		{"fast to normal", Image{Filename: "vm.raw", Format: "raw", VirtualSize: 200 * GiB, FileSize: 200 * GiB, AllocatedSize: 150 * GiB, SparsifyFree: 60 * GiB},
			Request{}, "fast", "normal", 90},
		// 1.2 TiB of data fits no path; 0.9 TiB goes fast.
		{"refused to fast", Image{Filename: "data.qcow2", Format: "qcow2", VirtualSize: 2000 * GiB, FileSize: 1300 * GiB, AllocatedSize: 1300 * GiB, SparsifyFree: 400 * GiB},
			Request{Disk: "data"}, Refused, "fast", 900},
		// Already normal: nothing to suggest.
		{"no change", Image{Filename: "vm.raw", Format: "raw", VirtualSize: 200 * GiB, FileSize: 200 * GiB, AllocatedSize: 20 * GiB, SparsifyFree: 10 * GiB},
			Request{}, "normal", "", 0},
		// Still fast after sparsifying: nothing to suggest.
		{"still fast", Image{Filename: "vm.raw", Format: "raw", VirtualSize: 400 * GiB, FileSize: 400 * GiB, AllocatedSize: 300 * GiB, SparsifyFree: 10 * GiB},
			Request{}, "fast", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Plan(tc.img, p, tc.req)
			if d.Path != tc.path {
				t.Fatalf("path %s, want %s (%+v)", d.Path, tc.path, d.Findings)
			}
			var f *Finding
			for i := range d.Findings {
				if d.Findings[i].Rule == "huawei-ims.sparsify" {
					f = &d.Findings[i]
				}
			}
			if tc.suggest == "" {
				if f != nil || d.SparsifyCommands != nil {
					t.Fatalf("unexpected suggestion %+v %v", f, d.SparsifyCommands)
				}
				return
			}
			if f == nil || len(d.SparsifyCommands) != 1 || !strings.Contains(d.SparsifyCommands[0], "diskimg convert --sparsify -f "+tc.img.Format) ||
				!strings.Contains(f.Message, "("+tc.suggest+" import)") || !strings.Contains(f.Message, d.SparsifyCommands[0]) {
				t.Fatalf("suggestion %+v %v", f, d.SparsifyCommands)
			}
			// With --sparsify the plan takes that path and converts.
			req := tc.req
			req.Sparsify = true
			s := Plan(tc.img, p, req)
			if s.Path != tc.suggest || s.Conversion == nil || !s.Conversion.Sparsify || s.UploadSize > tc.uploadGB*GiB+GiB || s.UploadSize < tc.uploadGB*GiB {
				t.Fatalf("with --sparsify: %s %+v, upload %d", s.Path, s.Conversion, s.UploadSize)
			}
		})
	}
}

// TestPlanSparsifyConverts: an image that could go as it is is converted
// when the request sparsifies it.
func TestPlanSparsifyConverts(t *testing.T) {
	img := Image{Filename: "vm.qcow2", Format: "qcow2", VirtualSize: 20 * GiB, FileSize: 8 * GiB, AllocatedSize: 8 * GiB, SparsifyFree: 5 * GiB}
	if d := Plan(img, huawei(t), Request{}); d.Conversion != nil {
		t.Fatalf("converted without --sparsify: %+v", d.Conversion)
	}
	d := Plan(img, huawei(t), Request{Sparsify: true})
	if d.Conversion == nil || !d.Conversion.Sparsify || d.UploadFormat != "qcow2" || d.Commands[0] != "diskimg convert --sparsify -f qcow2 -O qcow2 vm.qcow2 vm-sparse.qcow2" {
		t.Fatalf("%+v %v", d.Conversion, d.Commands)
	}
}
