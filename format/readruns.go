package format

import "fmt"

// ReadRuns reads p at off from an image of size bytes one run at a time:
// extentTo gives the run at a guest offset, cut at the end of the read,
// and read fills the run's bytes. Drivers whose extent map says where
// each run is stored read through it instead of walking their tables
// twice.
func ReadRuns(p []byte, off, size int64, extentTo func(off, limit int64) (Extent, error), read func(buf []byte, e Extent) error) (int, error) {
	n, clipErr := ClipRead(p, off, size)
	if n == 0 {
		return 0, clipErr
	}
	end := off + int64(n)
	for pos := off; pos < end; {
		e, err := extentTo(pos, end)
		if err == nil && (e.Start != pos || e.Length <= 0 || e.End() > end) {
			err = fmt.Errorf("extent map returned [%d,+%d) at offset %d, limit %d", e.Start, e.Length, pos, end)
		}
		if err == nil {
			err = read(p[pos-off:e.End()-off], e)
		}
		if err != nil {
			return int(pos - off), err
		}
		pos = e.End()
	}
	return n, clipErr
}

// ReadStored returns the read function of ReadRuns for a driver's own
// runs: Data from the host file at its offset, everything else as zeros.
// what names a run's unit in errors ("data cluster").
func ReadStored(format, what string) func(buf []byte, e Extent) error {
	return func(buf []byte, e Extent) error {
		switch {
		case e.Status != Data:
			clear(buf)
			return nil
		case e.Offset < 0 || e.File == nil:
			return fmt.Errorf("%s: data at guest offset %d has no host offset", format, e.Start)
		}
		return ReadFull(e.File, buf, e.Offset, format, fmt.Sprintf("%s of guest offset %d", what, e.Start))
	}
}
