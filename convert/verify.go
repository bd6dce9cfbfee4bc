package convert

import (
	"context"
	"fmt"
	"strings"

	"github.com/diskimg/diskimg/format"
)

// Verify checks a written output as `qemu-img compare` and `qemu-img
// check` would, and more strictly: f, opened as format fmtName, must read
// exactly as src (only its first src.Size() bytes when head is set: a
// target written in place keeps its bytes past the image), and the
// format's structural check (diskimg check) must find no corruption, no
// leak, no check error and nothing to warn about. Formats without a
// structural check (raw) are compared only. f is closed.
func Verify(ctx context.Context, src format.Image, f format.File, fmtName string, head bool) error {
	// An output names no other file: nothing is opened beside it.
	out, err := format.NewOpener(format.Policy{Untrusted: true, NoBacking: true}).OpenImage(f, fmtName)
	if err != nil {
		format.CloseFile(f)
		return fmt.Errorf("verify: reopening the output: %w", err)
	}
	defer out.Close()
	var view format.Image = out
	if head {
		view = Head(out, src.Size())
	}
	same, off, err := Compare(ctx, src, view)
	switch {
	case err != nil:
		return fmt.Errorf("verify: %w", err)
	case !same:
		return fmt.Errorf("verify: output differs from the source at offset %d", off)
	}
	ch, ok := out.(format.Checker)
	if !ok {
		return nil
	}
	r, err := ch.Check(ctx)
	if err != nil {
		return fmt.Errorf("verify: checking the output's structure: %w", err)
	}
	return checkVerdict(r)
}

// checkVerdict turns a structural check's findings into an error.
func checkVerdict(r *format.CheckResult) error {
	var what []string
	count := func(n int64, one, many string) {
		switch {
		case n == 1:
			what = append(what, "1 "+one)
		case n > 1:
			what = append(what, fmt.Sprintf("%d %s", n, many))
		}
	}
	count(r.Corruptions, "corruption", "corruptions")
	count(r.Leaks, "leak", "leaks")
	count(r.CheckErrors, "check error", "check errors")
	count(int64(len(r.Warnings)), "warning", "warnings")
	if len(what) == 0 {
		return nil
	}
	first := ""
	if len(r.Problems) > 0 {
		first = r.Problems[0]
	} else if len(r.Warnings) > 0 {
		first = r.Warnings[0]
	}
	return fmt.Errorf("verify: the output's structure check found %s (%s)", strings.Join(what, ", "), first)
}
