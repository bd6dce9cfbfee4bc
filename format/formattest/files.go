package formattest

import (
	"os"
	"testing"
)

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
