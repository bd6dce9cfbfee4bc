package formattest

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// ReadFile returns the contents of the file at path; an error fails the
// test.
func ReadFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// WriteFile writes data to the file at path (mode 0644); an error fails
// the test.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// WriteFiles writes files (path relative to root, slash-separated →
// content) under root, making their directories: a tree for a test, or
// the seeds a regenerating test writes.
func WriteFiles(t testing.TB, root string, files map[string][]byte) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		WriteFile(t, p, body)
	}
}

// ListDir returns the names in dir, sorted, to prove what a run left behind.
func ListDir(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// FileSizes returns a file's length and the bytes its filesystem
// allocates for it.
func FileSizes(t testing.TB, path string) (length, alloc int64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size(), fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// Allocated returns the bytes the filesystem allocates for a file.
func Allocated(t testing.TB, path string) int64 {
	t.Helper()
	_, alloc := FileSizes(t, path)
	return alloc
}

// WantFileSum asserts that sum, a conversion's streamed checksum, is the
// SHA-256 of the file at path.
func WantFileSum(t testing.TB, path string, sum []byte) {
	t.Helper()
	data := ReadFile(t, path)
	if got := sha256.Sum256(data); !bytes.Equal(got[:], sum) {
		t.Errorf("%s: streamed checksum %x, the file's %x", filepath.Base(path), sum, got)
	}
}
