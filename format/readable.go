package format

import (
	"errors"
	"io"
)

// headBytes and tailBytes are where the formats keep their signatures:
// the first sectors (and a VHDX's second header) and the last sector (a
// VHD footer).
const (
	headBytes = 4096
	tailBytes = 512
)

// readable reads the parts of f that probing and Open look at first, so
// a file that fails there is reported as the I/O error it is ("input/
// output error at offset N"), not as an image of another format or "not
// a qcow2 image".
func readable(f File) error {
	size := f.Size()
	buf := make([]byte, headBytes)
	for _, r := range [][2]int64{{0, min(size, headBytes)}, {max(size-tailBytes, 0), size}} {
		n := r[1] - r[0]
		if n <= 0 {
			continue
		}
		if err := ReadFull(f, buf[:n], r[0], "image", "file"); err != nil {
			var re *ReadError
			if errors.As(err, &re) {
				return re
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return &FormatError{Format: "image", Field: "file", Offset: r[0] + n,
					Reason: "ends before its size", Err: io.ErrUnexpectedEOF}
			}
			return err
		}
	}
	return nil
}
