package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func init() {
	retryBase, retryMax = time.Millisecond, 10*time.Millisecond
	stallTimeout = 2 * time.Second
}

// testData returns n bytes of random data with zero runs (holes for the
// spool) every few MiB.
func testData(n int) []byte {
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	for off := 1 << 20; off < n; off += 3 << 20 {
		clear(b[off:min(off+(1<<20), n)])
	}
	return b
}

// rangeServer serves data with Range support (http.ServeContent).
func rangeServer(t *testing.T, data []byte) *httptest.Server {
	mod := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "disk.img", mod, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func readAll(t *testing.T, f *File) []byte {
	t.Helper()
	got := make([]byte, f.Size())
	// Two sequential readers over halves, like the converter's workers.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	half := len(got) / 2
	for i, r := range [][2]int{{0, half}, {half, len(got)}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := r[0]; off < r[1]; off += 128 << 10 {
				if _, err := f.ReadAt(got[off:min(off+128<<10, r[1])], int64(off)); err != nil && err != io.EOF {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestRangedRead(t *testing.T) {
	data := testData(9<<20 + 12345)
	srv := rangeServer(t, data)
	f, err := Open(context.Background(), srv.URL+"/images/disk.img", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.spool != nil || f.Size() != int64(len(data)) {
		t.Fatalf("spool %v, size %d; want ranges, %d", f.spool != nil, f.Size(), len(data))
	}
	if !bytes.Equal(readAll(t, f), data) {
		t.Fatal("sequential read differs")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		off := rng.IntN(len(data))
		n := rng.IntN(3 << 20)
		buf := make([]byte, n)
		got, err := f.ReadAt(buf, int64(off))
		want := min(n, len(data)-off)
		if got != want || (err != nil) != (want < n) || !bytes.Equal(buf[:got], data[off:off+got]) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", n, off, got, err)
		}
	}
	if _, err := f.ReadAt(make([]byte, 1), int64(len(data))); err != io.EOF {
		t.Errorf("read at the end: %v, want EOF", err)
	}
}

func TestNoRangeSpool(t *testing.T) {
	data := testData(5<<20 + 7)
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.Write(data) // ignores Range
	}))
	defer srv.Close()
	dir := t.TempDir()
	f, err := Open(context.Background(), srv.URL+"/disk.img", Options{SpoolDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.spool == nil {
		t.Fatal("a server without ranges was not spooled")
	}
	if !bytes.Equal(readAll(t, f), data) {
		t.Fatal("spooled read differs")
	}
	if n := gets.Load(); n != 2 {
		t.Errorf("%d requests, want 2 (the probe, the copy)", n)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.spool.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= int64(len(data)) {
		t.Errorf("spool allocates %d bytes for %d bytes with holes", st.Blocks*512, len(data))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("spool left %d files in its directory", len(ents))
	}
}

// faultServer serves data by ranges but answers 500 to every third
// request, cuts every fourth response in the middle of its body, and
// stops sending every seventh in the middle, keeping the connection.
func faultServer(t *testing.T, data []byte) (*httptest.Server, *atomic.Int32, *atomic.Int32) {
	var n, stalls atomic.Int32
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// sendHalf sends the headers and half the body of the answer.
		sendHalf := func() {
			rec := httptest.NewRecorder()
			inner.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			body := rec.Body.Bytes()
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
		}
		k := n.Add(1)
		probe := r.Header.Get("Range") == "bytes=0-0"
		switch {
		case k%3 == 0:
			http.Error(w, "injected", http.StatusInternalServerError)
		case k%7 == 0 && !probe:
			sendHalf()
			stalls.Add(1)
			<-r.Context().Done() // a stall: nothing more, until the client gives up
		case k%4 == 0 && !probe:
			sendHalf()
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close() // a reset in the middle of the body
			}
		default:
			inner.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &n, &stalls
}

func TestRetries(t *testing.T) {
	data := testData(12 << 20)
	srv, n, stalls := faultServer(t, data)
	f, err := Open(context.Background(), srv.URL+"/disk.img", Options{stall: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !bytes.Equal(readAll(t, f), data) {
		t.Fatal("read through faults differs")
	}
	if n.Load() < 10 || stalls.Load() == 0 {
		t.Errorf("%d requests, %d stalls: faults not exercised", n.Load(), stalls.Load())
	}
}

func TestChangedSource(t *testing.T) {
	data := testData(6 << 20)
	var version atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", fmt.Sprintf(`"v%d"`, version.Load()))
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	f, err := Open(context.Background(), srv.URL+"/disk.img", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	version.Store(2)
	_, err = f.ReadAt(make([]byte, 4096), 5<<20)
	if !errors.Is(err, ErrChanged) {
		t.Fatalf("read of a changed object: %v, want ErrChanged", err)
	}
}

func TestHTTPErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/denied":
			http.Error(w, "no", http.StatusForbidden)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	for path, want := range map[string]string{"/denied": "access denied", "/missing": "no such file"} {
		_, err := Open(context.Background(), srv.URL+path, Options{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", path, err, want)
		}
	}
}

// TestMemoryBound reads a 1 GiB object twice over, sequentially with two
// readers, and checks the heap stays near the cache bound.
func TestMemoryBound(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 1 GiB")
	}
	const size = 1 << 30
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"big"`)
		http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(patternReader{}, 0, size))
	}))
	defer srv.Close()
	f, err := Open(context.Background(), srv.URL+"/big.img", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 128<<10)
			for off := int64(w) * size / 2; off < int64(w+1)*size/2; off += int64(len(buf)) {
				if _, err := f.ReadAt(buf, off); err != nil {
					t.Error(err)
					return
				}
				if buf[0] != patternByte(off) {
					t.Errorf("byte at %d wrong", off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-done
	if p := peak.Load(); p > DefaultCacheBytes+48<<20 {
		t.Errorf("heap peaked at %d MiB reading 1 GiB, want under %d MiB", p>>20, (DefaultCacheBytes+48<<20)>>20)
	}
	t.Logf("heap peak %d MiB", peak.Load()>>20)
}

type patternReader struct{}

func patternByte(off int64) byte { return byte(off>>17) ^ byte(off) }

func (patternReader) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		p[i] = patternByte(off + int64(i))
	}
	return len(p), nil
}

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		in                string
		start, end, total int64
		ok                bool
	}{
		{"bytes 0-0/10", 0, 0, 10, true},
		{"bytes 5-9/10", 5, 9, 10, true},
		{"bytes 5-9/*", 5, 9, -1, true},
		{"bytes */0", -1, -1, 0, true},
		{"bytes 5-10/10", 0, 0, 0, false},
		{"bytes 9-5/10", 0, 0, 0, false},
		{"bytes -1-5/10", 0, 0, 0, false},
		{"bytes +1-5/10", 0, 0, 0, false},
		{"bytes 1-5", 0, 0, 0, false},
		{"bytes */*", 0, 0, 0, false},
		{"items 1-5/10", 0, 0, 0, false},
		{"bytes 1-99999999999999999999/10", 0, 0, 0, false},
	} {
		s, e, tot, err := parseContentRange(c.in)
		if (err == nil) != c.ok || c.ok && (s != c.start || e != c.end || tot != c.total) {
			t.Errorf("%q: %d %d %d %v", c.in, s, e, tot, err)
		}
	}
}

func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/10", "bytes */0", "bytes 5-9/*", "bytes 1-2/3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, total, err := parseContentRange(s)
		if err != nil {
			return
		}
		if start == -1 {
			if end != -1 || total < 0 {
				t.Fatalf("%q: */%d with %d-%d", s, total, start, end)
			}
			return
		}
		if start < 0 || end < start || (total >= 0 && end >= total) {
			t.Fatalf("%q: accepted %d-%d/%d", s, start, end, total)
		}
	})
}

func TestRelative(t *testing.T) {
	s3 := location{s3: true, bucket: "b", key: "images/vm/disk.qcow2"}
	web, _ := parseLocation("https://h.example/images/vm/disk.qcow2?X-Amz-Signature=abc")
	for _, c := range []struct {
		loc     location
		ref     string
		outside bool
		want    string // "" for refused
	}{
		{s3, "base.qcow2", false, "s3://b/images/vm/base.qcow2"},
		{s3, "sub/base.qcow2", false, "s3://b/images/vm/sub/base.qcow2"},
		{s3, "../base.qcow2", false, ""},
		{s3, "../base.qcow2", true, "s3://b/images/base.qcow2"},
		{s3, "../../../../etc/passwd", true, "s3://b/etc/passwd"},
		{s3, "/etc/passwd", false, ""},
		{s3, "/etc/passwd", true, "s3://b/etc/passwd"},
		{s3, "dir/", false, ""},
		{s3, "a\\b", false, ""},
		{web, "base.qcow2", false, "https://h.example/images/vm/base.qcow2"},
		{web, "../base.qcow2", false, ""},
		{web, "../base.qcow2", true, "https://h.example/images/base.qcow2"},
		{web, "a b%.vmdk", false, "https://h.example/images/vm/a%20b%25.vmdk"},
		{web, "x?y", false, ""},
	} {
		got, err := c.loc.relative(c.ref, c.outside)
		if c.want == "" {
			if err == nil {
				t.Errorf("%q from %s: %s, want refused", c.ref, c.loc.raw, got.raw)
			}
			continue
		}
		if err != nil || got.raw != c.want {
			t.Errorf("%q from %s (outside %v): %q, %v; want %q", c.ref, c.loc.raw, c.outside, got.raw, err, c.want)
		}
	}
}

func TestPartSize(t *testing.T) {
	for _, size := range []int64{0, 1, 8 << 20, 70 << 30, 1 << 40, 5 << 40, 64 << 40} {
		ps := PartSize(size)
		if ps < MinPartSize || ps > maxPartSize || ps%(1<<20) != 0 {
			t.Errorf("PartSize(%d) = %d", size, ps)
		}
		if size <= 5<<40 && (size+ps-1)/ps > MaxParts {
			t.Errorf("PartSize(%d) = %d needs %d parts", size, ps, (size+ps-1)/ps)
		}
	}
}
