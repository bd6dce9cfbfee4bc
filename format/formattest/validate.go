package formattest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/diskimg/diskimg/format"
)

// Validation bounds: a window of validateWindow bytes is read at the start
// and the end of each of the first validateExtents extents, so a 1 TiB
// image validates in moments.
const (
	validateWindow  = 4096
	validateExtents = 4096
	validateReaders = 4
)

// Validate checks the Image contract with no oracle: the extents tile
// [0, Size) in order; where an extent's Offset is valid, the bytes at
// Offset of its File equal what ReadAt returns (bytes past the end of the
// file count as zeros); Zero and Unallocated ranges read as zeros; and
// ReadAt from several goroutines at once returns what it returns from
// one. An encrypted image's bytes are not compared.
func Validate(img format.Image) error {
	type sample struct {
		off  int64
		want []byte
	}
	var samples []sample
	size, n, end := img.Size(), 0, int64(0)
	encrypted := img.Info().Encrypted
	// Walk checks that each extent starts where the last ended and stays
	// inside the disk.
	err := format.Walk(img, 0, func(e format.Extent) error {
		end = e.End()
		if e.Offset >= 0 && e.File == nil {
			return fmt.Errorf("extent [%d,+%d) has host offset %d but no File", e.Start, e.Length, e.Offset)
		}
		if n++; n > validateExtents || encrypted {
			return nil
		}
		for _, off := range []int64{e.Start, max(e.Start, e.End()-validateWindow)} {
			got := make([]byte, min(validateWindow, e.End()-off))
			if k, err := img.ReadAt(got, off); k != len(got) {
				return fmt.Errorf("ReadAt(%d, %d) = %d, %v", off, len(got), k, err)
			}
			switch {
			case e.Status != format.Data:
				if !bytes.Equal(got, make([]byte, len(got))) {
					return fmt.Errorf("%s extent [%d,+%d) reads data at %d", e.Status, e.Start, e.Length, off)
				}
			case e.Offset >= 0:
				host := make([]byte, len(got))
				if k, err := e.File.ReadAt(host, e.Offset+off-e.Start); k < len(host) && err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("reading host offset %d: %v", e.Offset+off-e.Start, err)
				}
				if !bytes.Equal(got, host) {
					return fmt.Errorf("extent [%d,+%d) at host offset %d: ReadAt(%d) differs from the file's bytes", e.Start, e.Length, e.Offset, off)
				}
			}
			if len(samples) < 16 {
				samples = append(samples, sample{off, got})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if end != size {
		return fmt.Errorf("extents end at %d, the disk at %d", end, size)
	}
	var wg sync.WaitGroup
	errs := make([]error, validateReaders)
	for r := range validateReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range samples {
				s := samples[(i+r)%len(samples)]
				got := make([]byte, len(s.want))
				if k, err := img.ReadAt(got, s.off); k != len(got) || !bytes.Equal(got, s.want) {
					errs[r] = fmt.Errorf("concurrent ReadAt(%d) = %d, %v: not what a single reader got", s.off, k, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
