package remote_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	_ "github.com/diskimg/diskimg/format/all"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/remote"
)

// openURL opens the image at a URL as the command line does.
func openURL(t *testing.T, name string, p format.Policy) (format.Image, error) {
	t.Helper()
	f, err := remote.Open(context.Background(), name, remote.Options{})
	if err != nil {
		return nil, err
	}
	img, err := format.NewOpener(p).OpenImage(f, "")
	if err != nil {
		f.Close()
	}
	return img, err
}

// TestBackingOverHTTP: a backing file resolves next to the image on the
// same server, never as a local path, and only as the policy allows.
func TestBackingOverHTTP(t *testing.T) {
	dir := t.TempDir()
	web := filepath.Join(dir, "web", "vm")
	os.MkdirAll(web, 0o755)
	formattest.Generate(t, web, "base", "qcow2", 8<<20, formattest.Sparse)
	formattest.Create(t, filepath.Join(web, "top.qcow2"), "qcow2", "8M", "-b", "base.qcow2", "-F", "qcow2")
	formattest.Create(t, filepath.Join(web, "up.qcow2"), "qcow2", "8M", "-b", "../base.qcow2", "-F", "qcow2", "-u")
	formattest.Create(t, filepath.Join(web, "abs.qcow2"), "qcow2", "8M", "-b", filepath.Join(web, "base.qcow2"), "-F", "qcow2")
	data, _ := os.ReadFile(filepath.Join(web, "base.qcow2"))
	os.WriteFile(filepath.Join(dir, "web", "base.qcow2"), data, 0o644)
	srv := httptest.NewServer(http.FileServer(http.Dir(filepath.Join(dir, "web"))))
	defer srv.Close()
	// A server whose backing file redirects to another server.
	fs := http.FileServer(http.Dir(filepath.Join(dir, "web")))
	bounce := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/vm/base.qcow2" {
			http.Redirect(w, r, srv.URL+r.URL.Path, http.StatusFound)
			return
		}
		fs.ServeHTTP(w, r)
	}))
	defer bounce.Close()
	if img, err := openURL(t, bounce.URL+"/vm/top.qcow2", format.Policy{AllowOutside: true}); err == nil || !strings.Contains(err.Error(), "off the image's server") {
		if err == nil {
			img.Close()
		}
		t.Errorf("backing file redirected to another server: %v", err)
	}

	local := formattest.Open(t, filepath.Join(web, "top.qcow2"), "")
	img, err := openURL(t, srv.URL+"/vm/top.qcow2", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := img.Info().FullBackingFile; got != srv.URL+"/vm/base.qcow2" {
		t.Errorf("full backing name %q", got)
	}
	same, off, err := convert.Compare(context.Background(), local, img)
	if err != nil || !same {
		t.Fatalf("image over HTTP differs from the local one at %d (%v)", off, err)
	}

	for _, c := range []struct {
		name string
		p    format.Policy
		want string // error text; "" opens
	}{
		{"top.qcow2", format.Policy{Untrusted: true}, "untrusted"},
		{"up.qcow2", format.Policy{}, "allow-backing-outside"},
		{"up.qcow2", format.Policy{AllowOutside: true}, ""}, // /base.qcow2 on the same server
		// An absolute local path stays on the server, however it is allowed.
		{"abs.qcow2", format.Policy{}, "allow-backing-outside"},
		{"abs.qcow2", format.Policy{AllowOutside: true}, "404"},
	} {
		img, err := openURL(t, srv.URL+"/vm/"+c.name, c.p)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s %+v: %v", c.name, c.p, err)
			} else {
				img.Close()
			}
			continue
		}
		if err == nil {
			img.Close()
			t.Errorf("%s %+v: opened, want %q", c.name, c.p, c.want)
		} else if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %+v: %v, want %q", c.name, c.p, err, c.want)
		}
	}
}
