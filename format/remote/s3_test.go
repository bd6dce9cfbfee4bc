package remote_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/diskimg/diskimg/format/remote"
	"github.com/diskimg/diskimg/format/remote/remotetest"
)

func TestMain(m *testing.M) { os.Exit(remotetest.Run(m)) }

func randomData(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// upload writes data to name in uneven writes and commits.
func upload(t *testing.T, o remote.Options, name string, data []byte, hint int64) []byte {
	t.Helper()
	ctx := context.Background()
	u, err := remote.Create(ctx, name, o, hint, false)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Abort()
	for off := 0; off < len(data); {
		n := min(len(data)-off, 1+off%(3<<20))
		if _, err := u.Write(data[off : off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	sum, err := u.Commit()
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func readBack(t *testing.T, o remote.Options, name string) ([]byte, *remote.File) {
	t.Helper()
	f, err := remote.Open(context.Background(), name, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	got := make([]byte, f.Size())
	if _, err := f.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return got, f
}

func TestS3RoundTrip(t *testing.T) {
	srv := remotetest.Shared(t)
	p := remotetest.Prefix(t)
	o := srv.Options()
	for i, size := range []int{0, 1000, remote.MinPartSize, remote.MinPartSize + 1, 2*remote.MinPartSize + 12345} {
		data := randomData(size, uint64(i))
		name := p + "roundtrip/dir/obj-" + string(rune('a'+i))
		sum := upload(t, o, name, data, int64(size))
		want := sha256.Sum256(data)
		if !bytes.Equal(sum, want[:]) {
			t.Errorf("size %d: Commit returned SHA-256 %x, want %x", size, sum, want)
		}
		got, f := readBack(t, o, name)
		if !bytes.Equal(got, data) {
			t.Errorf("size %d: object differs from what was written (%d bytes back)", size, len(got))
		}
		if f.SHA256() != hex.EncodeToString(want[:]) {
			t.Errorf("size %d: stored sha256 %q, want %x", size, f.SHA256(), want)
		}
	}
	// No overwrite without force.
	if _, err := remote.Create(context.Background(), p+"roundtrip/dir/obj-a", o, 1, false); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("existing object: %v, want refused", err)
	}
}

func TestS3WrongCredentials(t *testing.T) {
	srv := remotetest.Shared(t)
	p := remotetest.Prefix(t)
	o := srv.Options()
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
	_, err := remote.Open(context.Background(), "s3://"+remotetest.Bucket+"/ready", o)
	if err == nil || !strings.Contains(err.Error(), "access denied") || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Errorf("open with a wrong secret: %v", err)
	}
	_, err = remote.Create(context.Background(), p+"new", o, 1, false)
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("create with a wrong secret: %v", err)
	}
}

// TestS3Abort: parts in flight when the upload is aborted leave no open
// multipart upload.
func TestS3Abort(t *testing.T) {
	srv := remotetest.Shared(t)
	p := remotetest.Prefix(t)
	o := srv.Options()
	ctx := context.Background()
	u, err := remote.Create(ctx, p+"aborts/x/disk.qcow2", o, 1<<30, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Write(randomData(3*int(u.PartSize())+5, 1)); err != nil {
		t.Fatal(err)
	}
	open, err := remote.OpenUploads(ctx, p+"aborts/x/", o)
	if err != nil || len(open) != 1 {
		t.Fatalf("before abort: uploads %v, %v; want one", open, err)
	}
	if err := u.Abort(); err != nil {
		t.Fatal(err)
	}
	if open, err := remote.OpenUploads(ctx, p+"aborts/x/", o); err != nil || len(open) != 0 {
		t.Errorf("after abort: uploads %v, %v; want none", open, err)
	}
	if _, err := remote.Open(ctx, p+"aborts/x/disk.qcow2", o); err == nil {
		t.Error("an aborted upload left an object")
	}
}

// faultProxy forwards to the S3 server, answering 500 to some requests
// and cutting others in the middle of their body (an upload part's
// request, a download's response).
func faultProxy(t *testing.T, endpoint string) (string, *atomic.Int32) {
	target, _ := url.Parse(endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0) // the cancelled requests of cut answers
	director := rp.Director
	rp.Director = func(r *http.Request) {
		host := r.Host
		director(r)
		r.Host = host // the signature covers the Host header
	}
	var n, faults atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		isPart := r.Method == http.MethodPut && r.URL.Query().Get("partNumber") != ""
		isRange := r.Method == http.MethodGet && r.Header.Get("Range") != ""
		if !isPart && !isRange {
			rp.ServeHTTP(w, r)
			return
		}
		switch n.Add(1) % 5 {
		case 1:
			faults.Add(1)
			http.Error(w, "<Error><Code>InternalError</Code><Message>injected</Message></Error>", http.StatusInternalServerError)
		case 3:
			faults.Add(1)
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			if isPart {
				io.CopyN(io.Discard, r.Body, r.ContentLength/2) // half the part, then a reset
			} else {
				// Forward the headers and half the body, then cut.
				rec := httptest.NewRecorder()
				rp.ServeHTTP(rec, r)
				body := rec.Body.Bytes()
				rec.Header().Set("Content-Length", strconv.Itoa(len(body)))
				fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\n", rec.Code, http.StatusText(rec.Code))
				rec.Header().Write(conn)
				fmt.Fprintf(conn, "\r\n")
				conn.Write(body[:len(body)/2])
			}
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			conn.Close()
		default:
			rp.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &faults
}

func TestS3Faults(t *testing.T) {
	srv := remotetest.Shared(t)
	p := remotetest.Prefix(t)
	proxy, faults := faultProxy(t, srv.Endpoint)
	o := srv.Options()
	o.Endpoint = proxy
	data := randomData(5*remote.MinPartSize+777, 3)
	sum := upload(t, o, p+"faults/disk.raw", data, int64(len(data)))
	if want := sha256.Sum256(data); !bytes.Equal(sum, want[:]) {
		t.Fatalf("SHA-256 %x, want %x", sum, want)
	}
	got, _ := readBack(t, o, p+"faults/disk.raw")
	if !bytes.Equal(got, data) {
		t.Fatal("object read through faults differs")
	}
	if faults.Load() < 4 {
		t.Errorf("only %d faults injected", faults.Load())
	}
	// Nothing stays open.
	if open, err := remote.OpenUploads(context.Background(), p+"faults/", srv.Options()); err != nil || len(open) != 0 {
		t.Errorf("uploads left open: %v, %v", open, err)
	}
}

func TestS3Missing(t *testing.T) {
	srv := remotetest.Shared(t)
	p := remotetest.Prefix(t)
	_, err := remote.Open(context.Background(), p+"nothing-here", srv.Options())
	if err == nil || !strings.Contains(err.Error(), "no such object") {
		t.Errorf("missing object: %v", err)
	}
}

// TestS3Profile: credentials from a profile of the shared files.
func TestS3Profile(t *testing.T) {
	srv := remotetest.Shared(t)
	dir := t.TempDir()
	creds := "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[bench]\naws_access_key_id = " +
		remotetest.AccessKey + "\naws_secret_access_key = " + remotetest.SecretKey + "\n"
	os.WriteFile(filepath.Join(dir, "credentials"), []byte(creds), 0o600)
	os.WriteFile(filepath.Join(dir, "config"), []byte("[profile bench]\nregion = us-east-1\n"), 0o600)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	ready := "s3://" + remotetest.Bucket + "/ready"
	o := srv.Options()
	o.Profile = "bench"
	f, err := remote.Open(context.Background(), ready, o)
	if err != nil {
		t.Fatalf("profile bench: %v", err)
	}
	f.Close()
	if _, err := remote.Open(context.Background(), ready, srv.Options()); err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("default profile (wrong keys): %v", err)
	}
}

// TestS3UploadMemory: the heap stays within the part buffers while a
// 256 MiB output streams up.
func TestS3UploadMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("uploads 256 MiB")
	}
	srv := remotetest.Shared(t)
	p := remotetest.Prefix(t)
	const size = 256 << 20
	u, err := remote.Create(context.Background(), p+"big.raw", srv.Options(), size, false)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Abort()
	// The growth over what earlier tests left live.
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak uint64
	buf := randomData(1<<20, 9)
	for off := 0; off < size; off += len(buf) {
		if _, err := u.Write(buf); err != nil {
			t.Fatal(err)
		}
		if off%(16<<20) == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse-min(base, ms.HeapInuse))
		}
	}
	if _, err := u.Commit(); err != nil {
		t.Fatal(err)
	}
	// Five 8 MiB part buffers, and what the SDK and the test hold.
	if limit := uint64(5*u.PartSize() + 40<<20); peak > limit {
		t.Errorf("heap grew by %d MiB uploading 256 MiB, want under %d MiB", peak>>20, limit>>20)
	}
	t.Logf("part size %d MiB, heap growth at most %d MiB", u.PartSize()>>20, peak>>20)
}
