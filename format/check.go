package format

import (
	"context"
	"fmt"
)

// CheckResult is the verdict of a structural check, with the keys and
// meanings of `qemu-img check --output=json`. Counts qemu-img omits when
// zero are omitted here too.
type CheckResult struct {
	ImageEndOffset     int64  `json:"image-end-offset,omitempty"`
	TotalClusters      int64  `json:"total-clusters,omitempty"`
	CheckErrors        int64  `json:"check-errors"`
	Leaks              int64  `json:"leaks,omitempty"`
	Corruptions        int64  `json:"corruptions,omitempty"`
	AllocatedClusters  int64  `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64  `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64  `json:"compressed-clusters,omitempty"`
	Filename           string `json:"filename"`
	Format             string `json:"format"`
	// Problems describes each corruption, leak or check error found, one
	// line each, naming the structure and its file offset (qemu-img prints
	// these on stderr).
	Problems []string `json:"problems,omitempty"`
	// Warnings are findings that do not change qemu-img's verdict (it
	// reads zeros there and calls the image clean) but that a careful
	// reader wants to know. diskimg only; printed on stderr.
	Warnings []string `json:"warnings,omitempty"`
}

// MaxProblems bounds the problem lines a check keeps: a hostile table can
// be wrong in every entry, and the counts say how many there were.
const MaxProblems = 1000

// Checker is implemented by images whose format can check its own
// structure: tables inside the file, no overlaps, counts that agree.
// A check reads metadata only and never writes.
type Checker interface {
	// Check walks the image's metadata. Problems found go in the result;
	// the error is for I/O failures and cancellation only.
	Check(ctx context.Context) (*CheckResult, error)
}

// Corruptf records a corruption.
func (r *CheckResult) Corruptf(format string, args ...any) {
	r.Corruptions++
	r.Problems = append(r.Problems, "ERROR "+fmt.Sprintf(format, args...))
}

// Leakf records a leaked cluster or block (allocated, used by nothing).
func (r *CheckResult) Leakf(format string, args ...any) {
	r.Leaks++
	r.Problems = append(r.Problems, "Leaked "+fmt.Sprintf(format, args...))
}

// Warnf records a warning, keeping at most max lines.
func (r *CheckResult) Warnf(max int, format string, args ...any) {
	if len(r.Warnings) < max {
		r.Warnings = append(r.Warnings, "Warning: "+fmt.Sprintf(format, args...))
	}
}

// Errorf records a check error: something the check could not verify.
func (r *CheckResult) Errorf(format string, args ...any) {
	r.CheckErrors++
	r.Problems = append(r.Problems, "Check error: "+fmt.Sprintf(format, args...))
}
