package formattest

import (
	"testing"

	"github.com/diskimg/diskimg/format"
)

// WriterFormat returns the registered writer of format name.
func WriterFormat(t testing.TB, name string) *format.WriterFormat {
	t.Helper()
	w, err := format.LookupWriter(name)
	if err != nil {
		t.Fatal(err)
	}
	return w
}
