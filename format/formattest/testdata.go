package formattest

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// Archives of files from other projects live in testdata/external as
// tar.zst (see its README for each file's origin and licence): the
// reference vectors share much of their data, which compresses to a
// tenth in one archive. They are read once per test process.
var archives sync.Map // path -> *archive

type archive struct {
	once  sync.Once
	files map[string][]byte
	err   error
}

// ArchiveFile returns the bytes of the file name in the tar.zst archive
// at path: a copy, which the caller may change.
func ArchiveFile(t testing.TB, path, name string) []byte {
	t.Helper()
	v, _ := archives.LoadOrStore(path, &archive{})
	a := v.(*archive)
	a.once.Do(func() { a.files, a.err = readArchive(path) })
	if a.err != nil {
		t.Fatalf("test data %s: %v", path, a.err)
	}
	b, ok := a.files[name]
	if !ok {
		t.Fatalf("test data %s holds no %s", path, name)
	}
	return bytes.Clone(b)
}

// Extract writes the named files of the archive at path into a new
// temporary directory (removed when the test ends) and returns it; files
// that refer to each other (an overlay and its backing file) must be
// extracted together.
func Extract(t testing.TB, path string, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range names {
		WriteFile(t, filepath.Join(dir, name), ArchiveFile(t, path, name))
	}
	return dir
}

func readArchive(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if files[h.Name], err = io.ReadAll(tr); err != nil {
			return nil, err
		}
	}
}
