package convert

import "golang.org/x/sys/unix"

const writebackSupported = true

// startWriteback starts writeout of the file's dirty pages without waiting
// for it (sync_file_range with SYNC_FILE_RANGE_WRITE over the whole file).
// An error only means no head start: the final fsync still runs.
func startWriteback(fd uintptr) {
	_ = unix.SyncFileRange(int(fd), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
