package formattest

import (
	"bytes"
	"io"
	"os"
	"testing"
)

// Piped runs write with the write end of a pipe and returns what came out
// of the read end; write's error or the copy's fails the test. The pipe is
// closed even when write stops the test with t.Fatal.
func Piped(t testing.TB, write func(w *os.File) error) []byte {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var got bytes.Buffer
	done := make(chan error, 1)
	go func() { _, err := io.Copy(&got, r); done <- err }()
	err = func() error {
		defer w.Close()
		return write(w)
	}()
	cerr := <-done
	if err != nil {
		t.Fatal(err)
	}
	if cerr != nil {
		t.Fatalf("reading the pipe: %v", cerr)
	}
	return got.Bytes()
}
