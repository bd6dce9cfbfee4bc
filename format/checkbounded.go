package format

import "fmt"

// BoundedCorruptf records a corruption as Corruptf does, keeping its line
// only while there are fewer than MaxProblems: a hostile table can be
// wrong in every entry, and the count says how many there were.
func (r *CheckResult) BoundedCorruptf(format string, args ...any) {
	r.bounded(&r.Corruptions, "ERROR ", format, args)
}

// BoundedLeakf records a leak as Leakf does, keeping at most MaxProblems
// lines.
func (r *CheckResult) BoundedLeakf(format string, args ...any) {
	r.bounded(&r.Leaks, "Leaked ", format, args)
}

func (r *CheckResult) bounded(count *int64, prefix, format string, args []any) {
	*count++
	if len(r.Problems) < MaxProblems {
		r.Problems = append(r.Problems, prefix+fmt.Sprintf(format, args...))
	}
}
