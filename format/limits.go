package format

// MaxTableBytes caps any metadata table a reader loads into memory (L1,
// grain directory, BAT, region table, descriptor text). A header field can
// claim any size; memory must be bounded by the file, not by the field.
const MaxTableBytes = 256 << 20

// MaxVirtualSize caps the virtual disk size a reader accepts (64 TiB is
// the largest any supported format defines; qcow2 allows more, qemu-img
// caps at 2^63 but nothing real is that large).
const MaxVirtualSize = 1 << 56

// MaxChainDepth caps how many backing files a chain may have.
const MaxChainDepth = 64

// CheckTable validates a table of length bytes at file offset off: it must
// lie inside a file of fileSize bytes and not exceed MaxTableBytes.
func CheckTable(format, field string, off, length, fileSize int64) error {
	switch {
	case off < 0 || length < 0:
		return Errorf(format, field, off, "negative offset or length %d", length)
	case length > MaxTableBytes:
		return Errorf(format, field, off, "table of %d bytes exceeds the %d-byte limit", length, MaxTableBytes)
	case off > fileSize || length > fileSize-off:
		return Errorf(format, field, off, "table of %d bytes extends past the end of the file (%d bytes)", length, fileSize)
	}
	return nil
}
